"""Build settings: `BuildConfig`, checked against its own typed schema before anything runs.

A recipe (YAML, see manifests/), the ``augment`` flags and Python callers fill the same fields. A
value of the wrong type (``copies: four``, ``copies: 2.7``, ``size: "64"``, ``keep_empty: yes``) or
out of range is refused with one line that names where it came from (the recipe file and key, or
the flag), the value and what was expected; nothing is coerced silently.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Union

from styleswap import contract
from styleswap.errors import StyleSwapError

#: Intensity rules of ingest (`sources.intensity`).
INTENSITY_RULES = ("percentile", "standard")
#: Modalities a source may declare; other spellings of MR count as MRI (`sources.layouts`).
MODALITIES = ("CT", "MRI")


@dataclass
class BuildConfig:
    """Every setting of a build; a recipe YAML holds the same keys (see manifests/).

    The field order is the order ``manifest.json`` records them in (its ``recipe``)."""

    source: str | list[str] = "phantom"
    out: str = "out/dataset"
    engine: str = "gin"
    engine_settings: dict[str, Any] = field(default_factory=dict)
    copies: int = 4
    seed: int = 0
    format: str = "parquet"
    rows_per_shard: int = 256
    workers: int | None = None  # None: `plan.default_workers` decides (the manifest records its choice)
    # preprocessing (used when the source is raw volumes or PNGs, not an ingested dataset)
    labels: str | dict[str, int] | None = None
    size: int = 192
    keep_empty: float = 0.1
    modality: str | None = None
    intensity: str = "percentile"
    split: str | None = None  # e.g. "val=0.2": whole cases to the validation split (see sources.ingest.split_cases)
    # dataset card
    license: str | None = None
    description: str | None = None
    preview: bool = True
    overwrite: bool = False
    # where engines that train models (controlnet) keep them, and raw sources are ingested to
    cache_dir: str = "models/cache"
    # the content check (`generator.qc`): a model folder from `train seg`, the Dice a copy must
    # reach, and how many tries (seeds) a copy gets
    qc_model: str | None = None
    qc_min_dice: float = 0.8
    qc_tries: int = 3

    #: Recorded (and fingerprinted) only when the content check runs, so that a build without it
    #: records exactly what it did before the check existed.
    QC_KEYS = ("qc_model", "qc_min_dice", "qc_tries")

    def __post_init__(self) -> None:
        for key in ("source", "out", "cache_dir", "qc_model"):  # a Path from Python callers is a path string
            if isinstance(getattr(self, key), os.PathLike):
                setattr(self, key, os.fspath(getattr(self, key)))

    def validate(self, name: Callable[[str], str] = str) -> None:
        """Refuse a value of the wrong type or out of range; ``name(key)`` says where a setting
        came from in the message (``recipe.yaml: copies``, ``--copies``)."""
        hints = typing.get_type_hints(BuildConfig)
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise StyleSwapError(f"{name(f.name)} must be {_describe(hints[f.name])}, got {value!r}")
        from styleswap.generator.engines.base import ENGINES

        def refuse(key: str, problem: str) -> None:
            raise StyleSwapError(f"{name(key)} {problem}")

        if self.engine not in ENGINES:
            refuse("engine", f"names an unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.copies < 0:
            refuse("copies", f"must be >= 0, got {self.copies}")
        if self.engine == "none" and self.copies:
            raise StyleSwapError(f"{name('engine')}: engine 'none' writes originals only: set copies to 0")
        if self.engine != "none" and not self.copies:
            refuse("copies", f"is 0, so engine {self.engine!r} would render nothing; for originals only use "
                             "engine none (augment ingest)")
        if self.workers is not None and self.workers < 1:
            refuse("workers", f"must be >= 1, got {self.workers}")
        if self.format not in contract.FORMATS:
            refuse("format", f"must be one of {', '.join(contract.FORMATS)}, got {self.format!r}")
        if self.rows_per_shard < 1:
            refuse("rows_per_shard", f"must be >= 1, got {self.rows_per_shard}")
        if not 0.0 <= self.keep_empty <= 1.0:
            refuse("keep_empty", f"must be within [0, 1], got {self.keep_empty}")
        if self.size < 8:
            refuse("size", f"must be at least 8 pixels, got {self.size}")
        if not 0.0 <= self.qc_min_dice <= 1.0:
            refuse("qc_min_dice", f"must be within [0, 1], got {self.qc_min_dice}")
        if self.qc_tries < 1:
            refuse("qc_tries", f"must be >= 1, got {self.qc_tries}")
        if self.qc_model is not None and not self.copies:
            refuse("qc_model", "checks rendered copies, and this build renders none (copies 0)")
        if self.intensity not in INTENSITY_RULES:
            refuse("intensity", f"must be one of {', '.join(INTENSITY_RULES)}, got {self.intensity!r}")
        if self.modality is not None:
            from styleswap.generator.sources.layouts import normalize_modality

            if normalize_modality(self.modality) not in MODALITIES:
                refuse("modality", f"must be one of {', '.join(MODALITIES)} (MR, T1, T2, FLAIR, ... count as MRI), "
                                   f"got {self.modality!r}")


    def recorded(self) -> dict[str, Any]:
        """Every setting, as ``manifest.json`` records them (the content check's only when it runs)."""
        out = asdict(self)
        if self.qc_model is None:
            for key in self.QC_KEYS:
                out.pop(key)
        return out


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # a bool is an int to Python, never to a recipe
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    raise TypeError(f"no schema rule for {hint!r}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is dict:
        return "a mapping of KEY: VALUE" if args[1] is Any else "a mapping of NAME: ID"
    if origin is list:
        return "a list of strings" if args[0] is str else f"a list ({hint})"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))
