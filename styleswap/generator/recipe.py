"""YAML build recipes (manifests/*.yaml) and command-line flags -> one checked `BuildConfig`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from styleswap import contract
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
    unknown = sorted(set(map(str, data)) - KEYS)
    if unknown:
        raise StyleSwapError(f"{path}: unknown keys {', '.join(unknown)} (valid keys: {', '.join(sorted(KEYS))})")
    return data


def make_config(recipe: dict[str, Any], overrides: dict[str, Any], recipe_path: str | Path | None = None) -> BuildConfig:
    """Recipe values, then command-line flags that were given (not None) on top, checked.

    With ``recipe_path`` (the recipe came from a file) its write paths must stay inside the working
    folder unless a flag overrides them (`safe_paths.check_recipe_paths`), and errors name the file
    and key; a setting from a flag is named as the flag."""
    if recipe_path is not None:
        check_recipe_paths(recipe, recipe_path, overrides)
    flags = {k: v for k, v in overrides.items() if v is not None}
    merged = {**recipe, **flags}

    def name(key: str) -> str:
        if key in flags:
            return f"--{key.replace('_', '-')}"
        return f"{recipe_path}: {key}" if recipe_path is not None and key in recipe else key

    cfg = BuildConfig(**merged)
    cfg.validate(name)
    if "size" in merged:
        check_source_size(cfg, name("size"))
    return cfg


def check_source_size(cfg: BuildConfig, flag: str) -> None:
    """A size given with an ingested source must be the size of its slices: a build does not resize
    (preprocessing happened at ingest), so another size would be silently ignored."""
    src = Path(cfg.source) if isinstance(cfg.source, str) else None
    if src is None or not (src / contract.MANIFEST_NAME).is_file():
        return
    size = contract.Manifest.read(src).image_size
    if size is not None and tuple(size) != (cfg.size, cfg.size):
        px = f"{size[0]} px" if size[0] == size[1] else f"{size[0]} x {size[1]} px"
        raise StyleSwapError(f"{src}: the dataset's slices are {px}, not the {cfg.size} px of {flag}; "
                             f"re-ingest the raw data with --size {cfg.size} (augment ingest), or leave the size out")
