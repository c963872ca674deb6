"""A build, planned once, before any executor renders: `plan_build`.

The plan holds what every executor (local pool, torchrun/accelerate ranks, Ray actors) needs and
none of them decides for itself:

- the source: a dataset folder made by ``augment ingest`` (every shard and row position known in
  advance, its manifest read once) or a raw source streamed and preprocessed on the fly;
- the engine settings after `Engine.prepare` (which may train models, cached), checked by
  constructing the engine once, and its description for the manifest;
- the shard plan: row ``p`` of a split always goes to shard ``p // rows_per_shard``, whatever is
  skipped or who renders it, so shard boundaries and bytes are those of a one-process build;
- the content check (``--qc-model``), its model checked against the source (`qc.open_check`);
- the fingerprint: what the staged shards' bytes depend on, so that a rerun resumes only a build
  with the same settings (`staging.OutputFolder`);
- ``--workers`` when it is not given (`default_workers`): bytes do not depend on it, time does.

Ingesting a raw source into ``cache_dir`` (for engines that train on it, and for executors that
hand out row positions) is the step before planning: `build.run_build` does it explicitly.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from styleswap.contract import Manifest
from styleswap.generator import dataset
from styleswap.generator.config import BuildConfig
from styleswap.generator.engines.base import Engine, engine_class
from styleswap.generator.qc import CheckSettings, open_check
from styleswap.generator.render import RenderJob, usable_cores
from styleswap.generator.sources.base import SourceSlice

Key = tuple[str, int]  # (split, shard index)


@dataclass(frozen=True)
class ShardSpec:
    """One output shard: rows ``[index * rows_per_shard, ... + rows)`` of its split."""

    split: str
    index: int
    rows: int

    @property
    def key(self) -> Key:
        return (self.split, self.index)


@dataclass
class BuildPlan:
    cfg: BuildConfig
    engine_cls: type[Engine]
    #: the engine's settings after `Engine.prepare` (paths of the models it trained)
    settings: dict[str, Any]
    #: the engine's own description (``manifest.json``'s engine settings)
    engine_info: dict[str, Any]
    #: slices per render call (an engine batch's worth of copies)
    chunk: int
    #: the manifest's ``source``; for a raw source, each case's statistics fill in while it streams
    source_info: dict[str, Any]
    #: the source dataset's manifest, or None for a raw source
    source: Manifest | None
    #: every output shard, when the source is a dataset folder (None: known once streamed)
    shards: list[ShardSpec] | None
    fingerprint: dict[str, Any]
    _stream: Any = None  # the raw source's stream (`sources.ingest.SourceStream`)
    #: the content check, or None
    qc: CheckSettings | None = None

    def job(self) -> RenderJob:
        return RenderJob(self.cfg.engine, self.settings, self.cfg.copies, self.cfg.seed, self.chunk, qc=self.qc)

    def slices(self, select: Callable[[str, int], bool] | None = None, decode: bool = True) -> Iterator[SourceSlice]:
        """The source slices in order; ``select(split, position)`` keeps only some (a dataset
        source skips the others without decoding them). ``decode=False``: a dataset source's
        images may stay PNG bytes (`SourceSlice.decoded`), for render workers to decode."""
        if self.source is not None:
            return dataset.iter_source_slices(Path(self.cfg.source), self.source, select, decode)
        return _selected(self._stream.slices(), select)

    def todo(self, done: dict[Key, Any]) -> list[ShardSpec]:
        """The planned shards without a receipt in ``done``."""
        return [s for s in self.shards or [] if s.key not in done]


def plan_build(cfg: BuildConfig) -> BuildPlan:
    """Plan ``cfg``: read the source (its manifest once), prepare and check the engine."""
    cls = engine_class(cfg.engine)
    source = dataset.read_manifest(Path(cfg.source)) if dataset.is_dataset_folder(cfg.source) else None
    stream = None
    if source is not None:
        info = {"layout": "styleswap-dataset", "path": str(cfg.source), "labels": source.labels,
                "upstream": source.source, "image_size": list(source.image_size) if source.image_size else None,
                "volume_stats": source.volume_stats}
    else:
        if cls.needs_dataset:
            raise RuntimeError(f"engine {cfg.engine!r} trains on its source: ingest it first (build.ingest_source)")
        from styleswap.generator.sources.ingest import open_source

        stream = open_source(cfg.source, labels=cfg.labels, size=cfg.size, keep_empty=cfg.keep_empty,
                             modality=cfg.modality, seed=cfg.seed, intensity_rule=cfg.intensity, split=cfg.split)
        info = stream.info
    qc = None
    if cfg.qc_model is not None:  # before the engine prepares (trains) anything
        size = info.get("image_size") if source is not None else [cfg.size, cfg.size]  # a raw source is resized
        qc = open_check(cfg.qc_model, cfg.qc_min_dice, cfg.qc_tries, info.get("labels") or {}, size,
                        info.get("volume_stats"))
    settings = cls.prepare(dict(cfg.engine_settings), Path(cfg.source) if cls.needs_dataset else None,
                           Path(cfg.cache_dir))
    engine = cls(**settings)  # checks the settings here, before a worker starts or a file is written
    engine_info = engine.describe()
    shards = plan_shards(source, cfg.rows_per_shard) if source is not None else None
    if cfg.workers is None:
        cfg = replace(cfg, workers=default_workers(cls, shards, cfg.copies))
    return BuildPlan(cfg=cfg, engine_cls=cls, settings=settings, engine_info=engine_info,
                     chunk=max(1, engine.batch_size // max(1, cfg.copies)), source_info=info, source=source,
                     shards=shards, fingerprint=fingerprint(cfg, engine_info, info, qc), _stream=stream, qc=qc)


#: Fewer copies than this are made faster by one process: a worker's start-up (about a second of
#: torch import) costs more than it saves. Measured with bench/run.py on 2 idle cores, gin x4:
#: 50 slices 3.0 s with one worker, 3.3 s with two; 473 slices 5.7 s vs 4.6 s; 1960 slices 16.8 vs 11.6 s.
MIN_COPIES_FOR_WORKERS = 1000
#: More render processes than this mostly wait on the one writer (and each imports torch).
MAX_DEFAULT_WORKERS = 8


def default_workers(engine: type[Engine], shards: list[ShardSpec] | None, copies: int) -> int:
    """``--workers`` when not given: a process per core (up to `MAX_DEFAULT_WORKERS`) for an engine
    whose copies are cheap CPU work (`Engine.renders_on_cpu`) with at least `MIN_COPIES_FOR_WORKERS`
    copies to make from a dataset folder; otherwise one (big models, a GPU, a few copies, or a raw
    source, which this process preprocesses as it streams)."""
    if not engine.renders_on_cpu or shards is None or sum(s.rows for s in shards) * copies < MIN_COPIES_FOR_WORKERS:
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores()))


def plan_shards(manifest: Manifest, rows_per_shard: int) -> list[ShardSpec]:
    """Every output shard, in the order a single writer makes them."""
    return [ShardSpec(split, i, min(rows_per_shard, n - start))
            for split, n in manifest.split_rows().items()
            for i, start in enumerate(range(0, n, rows_per_shard))]


def fingerprint(cfg: BuildConfig, engine_info: dict[str, Any], source_info: dict[str, Any],
                qc: CheckSettings | None = None) -> dict[str, Any]:
    """What the staged shards' bytes depend on (as JSON): a staged build resumes only under the same.

    Not the workers (bytes do not depend on them), nor what only the card, preview or manifest use.
    The content check counts by its model's weights (sha256) and settings, not by the model's path.
    """
    skip = {"out", "workers", "overwrite", "preview", "license", "description", "cache_dir", *BuildConfig.QC_KEYS}
    recipe = {k: v for k, v in asdict(cfg).items() if k not in skip}
    fp = {"recipe": recipe, "engine": engine_info, "source": source_info, "versions": dataset.package_versions()}
    if qc is not None:
        fp["qc"] = {k: v for k, v in qc.describe("").items() if k != "model"}
    return json.loads(json.dumps(jsonable(fp), default=str))


def ingest_spec(cfg: BuildConfig) -> tuple[Path, BuildConfig]:
    """Where a raw source is ingested for ``cfg`` (a cache folder keyed by the preprocessing
    settings) and the build that ingests it."""
    import hashlib

    spec = {k: getattr(cfg, k) for k in ("source", "labels", "size", "keep_empty", "modality", "seed", "intensity", "split")}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cfg.cache_dir) / f"source-{key}"
    ingest = BuildConfig(**{**asdict(cfg), "out": str(folder), "engine": "none", "copies": 0, "engine_settings": {},
                            "preview": False, "overwrite": False, "format": "parquet", "qc_model": None})
    return folder, ingest


class ShardRouter:
    """Which shard ``(split, index)`` each source row goes to; keeps only the rows of shards ``wanted``.

    Row ``p`` of a split goes to shard ``p // rows_per_shard`` whatever is skipped. The keys of the
    kept rows queue up in ``keys``, in order: the rendered rows come back in the same order.
    """

    def __init__(self, rows_per_shard: int, wanted: Callable[[Key], bool]) -> None:
        self.rows_per_shard, self.wanted = rows_per_shard, wanted
        self.keys: deque[Key] = deque()

    def select(self, split: str, position: int) -> bool:
        key = (split, position // self.rows_per_shard)
        if self.wanted(key):
            self.keys.append(key)
            return True
        return False


def _selected(slices: Iterable[SourceSlice], select: Callable[[str, int], bool] | None) -> Iterator[SourceSlice]:
    position: dict[str, int] = {}
    for s in slices:
        pos = position.get(s.split, 0)
        position[s.split] = pos + 1
        if select is None or select(s.split, pos):
            yield s


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
