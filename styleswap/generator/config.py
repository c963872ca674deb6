"""Build settings: `BuildConfig`, the fields a recipe (YAML, see manifests/), the ``augment`` flags
and Python callers fill."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from styleswap import contract
from styleswap.errors import StyleSwapError


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
    workers: int = 1
    # preprocessing (used when the source is raw volumes or PNGs, not an ingested dataset)
    labels: str | dict[str, int] | None = None
    size: int = 192
    keep_empty: float = 0.1
    modality: str | None = None
    intensity: str = "percentile"
    # dataset card
    license: str | None = None
    description: str | None = None
    preview: bool = True
    overwrite: bool = False
    # where engines that train models (controlnet) keep them, and raw sources are ingested to
    cache_dir: str = "models/cache"

    def validate(self) -> None:
        if self.copies < 0:
            raise StyleSwapError(f"copies must be >= 0, got {self.copies}")
        if self.workers < 1:
            raise StyleSwapError(f"workers must be >= 1, got {self.workers}")
        if self.format not in contract.FORMATS:
            raise StyleSwapError(f"format must be one of {', '.join(contract.FORMATS)}, got {self.format!r}")
        if self.rows_per_shard < 1:
            raise StyleSwapError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
        if not 0.0 <= float(self.keep_empty) <= 1.0:
            raise StyleSwapError(f"keep_empty must be within [0, 1], got {self.keep_empty}")
        if self.size < 8:
            raise StyleSwapError(f"size must be at least 8 pixels, got {self.size}")
        if self.intensity not in ("percentile", "standard"):
            raise StyleSwapError(f"intensity must be percentile or standard, got {self.intensity!r}")
        if self.engine == "none" and self.copies:
            raise StyleSwapError("engine 'none' writes originals only: set copies to 0")
