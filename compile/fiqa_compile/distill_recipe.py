"""Distillation recipes: the whole training configuration of a ``fiqa-distill`` run in one file (JSON or TOML).

A recipe holds every field of :class:`~fiqa_compile.distill.DistillConfig` (loss weights, hints, averaging,
augmentation, the utility target) and what the crops and targets are made from (``versions`` of each photo, the
two teachers), with a one-line ``description`` of what the run is and why. A key left out takes its default.
Unknown keys, values of the wrong type and values out of range are refused, naming the key and the file, before
any work. The cycles of the embedded student are the recipes in :data:`RECIPES_DIR` (its README.md lists them and
every key).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from fiqa_compile.distill import DistillConfig

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
SUFFIXES = (".json", ".toml")
# A run's settings, not its recipe's: how long this run may take (fiqa-distill --max-minutes).
RUN_ONLY = {"max_minutes": "--max-minutes"}


class RecipeError(ValueError):
    """A recipe that cannot be read, or holds a key, type or value it may not."""


@dataclass(frozen=True)
class Recipe:
    """A read recipe: the training configuration and what the run's crops and targets come from."""

    config: DistillConfig
    description: str = ""
    versions: int = 2                      # --faces: degraded versions of each photo beside the clean one
    utility_teacher: Path | None = None    # teacher directory; None: the embedded ViT-FIQA mini
    perceptual_teacher: Path | None = None  # None: the embedded DSL-FIQA tiny
    path: Path | None = None               # the file it was read from (None: the defaults)
    content: dict = dataclasses.field(default_factory=dict)  # the keys as the file holds them

    def record(self) -> dict:
        """What a run's student.json keeps of its recipe: enough to write the file again."""
        if self.path is None:
            return {"path": None, "content": {}}
        return {"path": str(self.path), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
                "description": self.description, "content": self.content}


# the recipe's own keys beside DistillConfig's fields, with their types
_RUN_KEYS = {"description": str, "versions": int, "utility_teacher": str | None, "perceptual_teacher": str | None}


def recipe_keys() -> dict[str, object]:
    """Every key a recipe may hold and its type (DistillConfig's fields, less the run-only ones, and the run keys)."""
    hints = typing.get_type_hints(DistillConfig)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(DistillConfig) if f.name not in RUN_ONLY}
    return {**_RUN_KEYS, **fields}


def shipped_recipes() -> list[Path]:
    """The committed recipes (the embedded student's cycles, in order)."""
    return sorted(p for p in RECIPES_DIR.iterdir() if p.suffix in SUFFIXES)


def find_recipe(name: str | Path) -> Path:
    """A recipe file: ``name`` as a path, else the shipped recipe of that name (``11_swap2`` or ``11_swap2.json``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / path.name, RECIPES_DIR / f"{path.name}.json"):
        if path.parent == Path(".") and candidate.is_file():
            return candidate
    shipped = ", ".join(p.stem for p in shipped_recipes())
    raise RecipeError(f"--recipe {name}: no such file, nor a shipped recipe ({shipped})")


def _type_name(kind) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args:  # X | None
        return f"{names[args[0]]} or null (TOML: leave the key out)"
    return names[kind]


def _checked(key: str, value, kind, path: Path):
    """``value`` as ``kind``, or a RecipeError naming ``key`` and ``path``."""
    args = typing.get_args(kind)
    if args and value is None and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), kind)
    ok = (isinstance(value, bool) if base is bool
          else isinstance(value, int) and not isinstance(value, bool) if base is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          if base is float
          else isinstance(value, base))
    if not ok:
        raise RecipeError(f"recipe {path}: {key} = {value!r} must be {_type_name(kind)}")
    return float(value) if base is float else value


def _parse(path: Path) -> dict:
    if path.suffix not in SUFFIXES:
        raise RecipeError(f"recipe {path}: a recipe is a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
        content = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise RecipeError(f"recipe {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(content, dict):
        raise RecipeError(f"recipe {path}: it must hold one object of keys, not a {type(content).__name__}")
    return content


def load_recipe(name: str | Path | None) -> Recipe:
    """The recipe in ``name`` (see :func:`find_recipe`), checked key by key; ``None``: the defaults."""
    if name is None:
        return Recipe(DistillConfig())
    path = find_recipe(name)
    content = _parse(path)
    keys = recipe_keys()
    values = {}
    for key, value in content.items():
        if key in RUN_ONLY:
            raise RecipeError(f"recipe {path}: {key} is a setting of a run, not of a recipe: pass {RUN_ONLY[key]}")
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f"; the keys are {', '.join(sorted(keys))}"
            raise RecipeError(f"recipe {path}: unknown key {key!r}{hint}")
        values[key] = _checked(key, value, keys[key], path)
    run = {k: values.pop(k) for k in list(values) if k in _RUN_KEYS}
    description = run.get("description", "")
    if "\n" in description:
        raise RecipeError(f"recipe {path}: description must be one line")
    versions = run.get("versions", 2)
    if versions < 0:
        raise RecipeError(f"recipe {path}: versions = {versions} must be 0 or more")
    try:
        config = DistillConfig(**values)
    except ValueError as e:
        raise RecipeError(f"recipe {path}: {e}") from e
    # a relative teacher path is read from the recipe's folder, wherever the command runs
    teachers = {k: None if run.get(k) is None else path.parent / run[k] for k in ("utility_teacher",
                                                                                   "perceptual_teacher")}
    return Recipe(config, description, versions, path=path, content=content, **teachers)


def with_overrides(recipe: Recipe, **overrides) -> Recipe:
    """``recipe`` with the config fields in ``overrides`` that are not None replaced (the command line's)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return recipe
    try:
        config = dataclasses.replace(recipe.config, **given)
    except ValueError as e:
        raise RecipeError(f"{e} (with the command line's {', '.join(sorted(given))})") from e
    return dataclasses.replace(recipe, config=config)
