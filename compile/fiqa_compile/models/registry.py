"""A registry of model configs by name (timm-style): ``create_model("vit_fiqa_s")``.

Each architecture module registers its named configs on import; the registry imports the
architecture modules lazily so that ``list_models()`` always sees every model.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

# name -> (config instance, builder taking the config)
_MODELS: dict[str, tuple[Any, Callable[[Any], Any]]] = {}
_ARCH_MODULES = ("fiqa_compile.models.vit_fiqa", "fiqa_compile.models.dsl_fiqa", "fiqa_compile.models.students")


def register_model(name: str, config: Any, builder: Callable[[Any], Any]) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = (config, builder)


def _load_all() -> None:
    for mod in _ARCH_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module: surface it
                raise


def list_models(prefix: str = "") -> list[str]:
    """Registered names, sorted; ``prefix`` keeps one family ("student_", "vit_fiqa", "dsl_fiqa")."""
    _load_all()
    return sorted(m for m in _MODELS if m.startswith(prefix))


def get_config(name: str, **overrides: Any) -> Any:
    _load_all()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {sorted(_MODELS)}")
    cfg = _MODELS[name][0]
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def create_model(name: str, **overrides: Any):
    """Build a model by registered name; keyword overrides replace config fields."""
    cfg = get_config(name, **overrides)
    return _MODELS[name][1](cfg)
