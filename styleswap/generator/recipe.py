"""YAML build recipes (manifests/*.yaml): the same keys as `BuildConfig`, nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from styleswap.errors import StyleSwapError
from styleswap.generator.config import BuildConfig
from styleswap.generator.safe_paths import check_recipe_paths

KEYS = {f.name for f in dataclasses.fields(BuildConfig)}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe's settings as a dict, refused with a one-line error if anything is off."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise StyleSwapError(f"{path}: cannot read recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise StyleSwapError(f"{path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise StyleSwapError(f"{path}: a recipe must be a YAML mapping of settings")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise StyleSwapError(f"{path}: unknown keys {', '.join(unknown)} (valid keys: {', '.join(sorted(KEYS))})")
    return data


def make_config(recipe: dict[str, Any], overrides: dict[str, Any], recipe_path: str | Path | None = None) -> BuildConfig:
    """Recipe values, then command-line flags that were given (not None) on top.

    With ``recipe_path`` (the recipe came from a file) its write paths must stay inside the working
    folder unless a flag overrides them (`safe_paths.check_recipe_paths`)."""
    if recipe_path is not None:
        check_recipe_paths(recipe, recipe_path, overrides)
    merged = dict(recipe)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return BuildConfig(**merged)
    except TypeError as e:
        raise StyleSwapError(f"bad build settings: {e}") from None
