"""Model architectures (one file each), their configs and a registry by name."""
from fiqa_compile.models.registry import create_model, get_config, list_models, register_model

__all__ = ["create_model", "get_config", "list_models", "register_model", "load_vit_fiqa_checkpoint",
           "load_dsl_fiqa_checkpoint"]

# The paper checkpoints' loaders, importable from here without importing every architecture (and torch) up front.
_LAZY = {"load_vit_fiqa_checkpoint": "fiqa_compile.models.vit_fiqa",
         "load_dsl_fiqa_checkpoint": "fiqa_compile.models.dsl_fiqa"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
