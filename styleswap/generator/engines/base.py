"""The engine interface: the extension point every style intervention plugs into.

An engine is constructed from its settings, ``load()``-ed once per process (that is where a
diffusion engine loads its models), then asked to ``render`` batches of copy requests. The build
pipeline groups requests across slices and copies into batches of ``engine.batch_size``.

Contract for implementers:
- ``render`` returns one `Copy` per request, in order, each the shape of its request's image.
- A copy depends only on its request (image, mask, seed, ...), never on the other requests in the
  batch or on the batch size: seed a fresh generator per request from ``request.seed``.
- Content is preserved: the engine changes appearance; the mask stays the source mask.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from styleswap.errors import StyleSwapError


@dataclass(frozen=True)
class CopyRequest:
    sample_id: str
    copy_index: int
    seed: int
    image: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W) label ids
    modality: str = "CT"


@dataclass
class Copy:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    prompt: str  # the prompt, or a short description of the intervention


class Engine(ABC):
    """Base class of style-intervention engines."""

    name: ClassVar[str]
    #: How many requests the pipeline hands to one ``render`` call.
    batch_size: int = 16
    # What the engine needs, declared here so that executors ask instead of checking names:
    #: it computes with torch (render workers set torch's thread count; other builds never import it);
    uses_torch: ClassVar[bool] = False
    #: `prepare` trains models on the source, so it needs the source as a dataset folder (the build
    #: ingests a raw source first) and the models are files every render worker loads.
    needs_dataset: ClassVar[bool] = False
    #: its copies are cheap CPU work, so a build with enough of them renders in one process per core
    #: by default (`plan.default_workers`); engines with big models or a GPU keep to one
    renders_on_cpu: ClassVar[bool] = False

    @classmethod
    def gpus_per_worker(cls, settings: dict[str, Any]) -> float:
        """GPUs a render worker asks a cluster scheduler (Ray) for, when the cluster has GPUs."""
        return 0.0

    @classmethod
    def prepare(cls, settings: dict[str, Any], source_dir: Path | None, cache_dir: Path) -> dict[str, Any]:
        """Once per build, in the main process, before any engine is constructed.

        Engines that need trained models train what is missing here (cached under ``cache_dir``)
        and return the settings that point at them. The default changes nothing.
        """
        return settings

    def __init__(self, **settings: Any) -> None:
        if settings:
            raise StyleSwapError(f"engine {self.name!r} got unknown settings: {', '.join(sorted(settings))}")

    def load(self) -> None:
        """Load models or other per-process state. Called once before the first ``render``."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings recorded in manifest.json and the dataset card."""
        return {}

    @abstractmethod
    def render(self, requests: Sequence[CopyRequest]) -> list[Copy]:
        """Render one copy per request (see the module docstring for the rules)."""


class NoneEngine(Engine):
    """Originals only: no copies are rendered (use with ``copies: 0``)."""

    name = "none"

    def render(self, requests: Sequence[CopyRequest]) -> list[Copy]:
        return [Copy(image=r.image.copy(), prompt="original") for r in requests]


# name -> "module:Class"; imported on first use so that cheap engines never import diffusers.
ENGINES: dict[str, str] = {
    "none": "styleswap.generator.engines.base:NoneEngine",
    "gin": "styleswap.generator.engines.gin:GINEngine",
    "bezier": "styleswap.generator.engines.bezier:BezierEngine",
    "controlnet": "styleswap.generator.diffusion.engine:ControlNetEngine",
}


def register(name: str, target: str) -> None:
    """Register an engine class given as ``"module:Class"``."""
    ENGINES[name] = target


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise StyleSwapError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_engine(name: str, **settings: Any) -> Engine:
    """An engine instance (not yet loaded) from its registry name and settings."""
    return engine_class(name)(**settings)
