"""`augment build` and `augment ingest`: source slices -> engine -> shards + manifest.json.

The pipeline has three stages that overlap:

    main thread:  read/preprocess source slices -> chunks ............ write rows in order
    render:                           render copies of a chunk ... PNG-encode it
                                      (--workers 1: a render thread, then an encode thread;
                                       --workers N: N spawned processes that do both)

Results come back in submission order and a single writer writes them, so shard boundaries and
bytes do not depend on ``--workers``; every copy's seed comes from (build seed, sample_id, copy
index) only. At most ``2 * workers + 2`` chunks are in flight, so memory does not grow with the
number of slices.

A build is resumable: row ``p`` of a split always goes to shard ``p // rows_per_shard``, each shard
is written, fsynced and renamed in ``OUT/.partial`` and then gets a receipt; a rerun of the same
command (same `fingerprint`) renders only the shards without one. The source is still read in full
(its order defines the shards), only rendering is skipped. manifest.json, written last, commits.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shlex
import sys
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.generator import card, dataset, shards
from styleswap.generator.engines.base import CopyRequest, Engine, engine_class, get_engine
from styleswap.generator.seeds import derive_seed
from styleswap.generator.safe_paths import check_output_folder
from styleswap.generator.sources.base import SourceSlice
from styleswap.safe_state import kill_point


@dataclass
class BuildConfig:
    """Every setting of a build; a recipe YAML holds the same keys (see manifests/)."""

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
    split: str | None = None  # e.g. "val=0.2": whole cases to the validation split (see sources.ingest.split_cases)
    # dataset card
    license: str | None = None
    description: str | None = None
    preview: bool = True
    overwrite: bool = False
    # where engines that train models (controlnet) keep them, keyed by data and settings
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


# --- the source side ---------------------------------------------------------------------------


def open_slices(cfg: BuildConfig) -> tuple[dict[str, Any], Iterator[SourceSlice]]:
    """The source's description (for the manifest) and a stream of its slices."""
    src = cfg.source
    if isinstance(src, str) and Path(src).is_dir() and (Path(src) / contract.MANIFEST_NAME).exists():
        m = dataset.read_manifest(Path(src))
        info = {"layout": "styleswap-dataset", "path": str(src), "labels": m["labels"],
                "upstream": m.get("source", {}), "image_size": m.get("image_size"),
                "volume_stats": m.get("volume_stats")}
        return info, dataset.iter_source_slices(Path(src))
    from styleswap.generator.sources.ingest import open_source

    stream = open_source(
        src, labels=cfg.labels, size=cfg.size, keep_empty=cfg.keep_empty, modality=cfg.modality, seed=cfg.seed,
        intensity_rule=cfg.intensity, split=cfg.split,
    )
    return stream.info, stream.slices()


def ingested_source(cfg: BuildConfig) -> Path:
    """The source as a dataset folder: itself if it is one, else ingested once into the cache."""
    src = cfg.source
    if isinstance(src, str) and (Path(src) / contract.MANIFEST_NAME).exists():
        return Path(src)
    spec = {k: getattr(cfg, k) for k in ("source", "labels", "size", "keep_empty", "modality", "seed", "intensity", "split")}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cfg.cache_dir) / f"source-{key}"
    if not (folder / contract.MANIFEST_NAME).exists():
        run_build(replace(cfg, out=str(folder), engine="none", copies=0, engine_settings={}, preview=False,
                          overwrite=False, format="parquet"), command="(source ingested for the build)",
                  distributed=False)  # in a distributed build only rank 0 gets here
    return folder


def chunked(items: Iterable[SourceSlice], n: int) -> Iterator[list[SourceSlice]]:
    chunk: list[SourceSlice] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- the render side (runs in a worker thread or process) --------------------------------------

_ENGINE: Engine | None = None
_JOB: dict[str, Any] = {}


def _init_worker(engine_name: str, settings: dict[str, Any], job: dict[str, Any], threads: int | None) -> None:
    global _ENGINE, _JOB
    _ENGINE = get_engine(engine_name, **settings)
    if threads and "torch" in sys.modules:  # only engines that use torch pay for importing it
        import torch

        torch.set_num_threads(threads)
    _ENGINE.load()
    _JOB = job


def render_chunk(slices: list[SourceSlice]) -> list[shards.Row]:
    """All copies of a chunk of slices, rendered in engine-sized batches, encoded if Parquet."""
    engine, job = _ENGINE, _JOB
    copies, seed = job["copies"], job["seed"]
    requests = []
    for s in slices:
        image = contract.to_unit_float(s.image)  # once per slice, shared by its K requests
        requests += [
            CopyRequest(sample_id=s.sample_id, copy_index=c, seed=derive_seed(seed, s.sample_id, c),
                        image=image, mask=s.mask, modality=s.modality)
            for c in range(copies)
        ]
    results = []
    for i in range(0, len(requests), max(1, engine.batch_size)):
        results.extend(engine.render(requests[i : i + engine.batch_size]))
    if len(results) != len(requests):
        raise RuntimeError(f"engine {engine.name} returned {len(results)} copies for {len(requests)} requests")
    rows = []
    for j, s in enumerate(slices):
        mine = results[j * copies : (j + 1) * copies]
        reqs = requests[j * copies : (j + 1) * copies]
        row = shards.Row(
            sample_id=s.sample_id, case_id=s.case_id, slice_index=int(s.slice_index), modality=s.modality,
            image=s.image, mask=s.mask,
            augmented=[contract.from_unit_float(c.image, s.image.dtype) for c in mine],
            prompts=[c.prompt for c in mine], seeds=[r.seed for r in reqs],
            engine=job["engine"], spacing=tuple(float(x) for x in s.spacing), split=s.split,
        )
        if job["encode"]:
            row.encode()
        rows.append(row)
    return rows


def encode_rows(rows: list[shards.Row]) -> list[shards.Row]:
    for row in rows:
        row.encode()
    return rows


def ordered_map(fn: Callable, items: Iterable, executor: Executor, window: int) -> Iterator:
    """``map`` that keeps at most ``window`` tasks in flight and yields results in input order."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def make_executor(cfg: BuildConfig, engine_name: str, settings: dict[str, Any], job: dict[str, Any]) -> Executor:
    if cfg.workers == 1:
        # One render thread: torch and numpy release the GIL, so reading and writing in the main
        # thread (and PNG encoding in its own thread) overlap with rendering. Torch gets all cores
        # but one: OpenMP threads that spin against the encoder on a busy core cost 3x (GIN x4 on
        # 1960 slices, 2 cores: 31 s with 2 torch threads, 11 s with 1).
        threads = max(1, (os.cpu_count() or 1) - 1)
        return ThreadPoolExecutor(1, initializer=_init_worker, initargs=(engine_name, settings, job, threads))
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    # spawn, not fork: the parent may already run OpenMP threads (torch), which fork would break.
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(engine_name, settings, job, threads)
    )


# --- the whole build ---------------------------------------------------------------------------


def run_build(cfg: BuildConfig, command: str | None = None, progress: bool = True,
              distributed: bool | None = None) -> dict[str, Any]:
    """Build a dataset folder from ``cfg``; returns the manifest written to ``cfg.out``.

    Launched as several processes (``accelerate launch`` or ``torchrun``: ``WORLD_SIZE`` > 1),
    each rank renders its share of the shards and rank 0 writes the manifest (`run_distributed`).
    An interrupted build (killed, disk full) resumes when the same command runs again.
    """
    cfg.validate()
    check_output_folder(cfg.out)  # before any work: a raw source is ingested into the cache first
    if distributed is None:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        if distributed:
            from styleswap.generator.distributed import run_distributed

            return run_distributed(cfg, command, progress)
        return _run_local(cfg, command, progress)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StyleSwapError(f"{cfg.out}: no space left on the device; free some space and run the same "
                             "command again to resume (finished shards are kept)") from None


def _run_local(cfg: BuildConfig, command: str | None, progress: bool) -> dict[str, Any]:
    cfg, engine, settings = prepare_engine(cfg)
    info, slices = open_slices(cfg)
    plan = None
    if info.get("layout") == "styleswap-dataset":  # an ingested source: every shard is known in advance
        plan = plan_shards(dataset.read_manifest(Path(cfg.source)), cfg.rows_per_shard)
    with dataset.output_folder(Path(cfg.out), cfg.overwrite, fingerprint(cfg, engine, info)) as staging:
        done = dataset.finished_shards(staging)
        if done:
            total = f" of {len(plan)}" if plan else ""
            print(f"resuming {cfg.out}: {len(done)}{total} shards already done")
        router = ShardRouter(cfg.rows_per_shard, lambda key: key not in done)
        render_shards(cfg, engine, settings, router.filter(slices), router, staging, progress)
        writers, stats = staged_writers(staging, cfg, plan)
        return finish_build(cfg, writers, stats, info, engine, command)


def fingerprint(cfg: BuildConfig, engine: Engine, info: dict[str, Any]) -> dict[str, Any]:
    """What the staged shards' bytes depend on (as JSON): a staged build resumes only under the same.

    Not the workers (bytes do not depend on them), nor what only the card, preview or manifest use.
    """
    skip = {"out", "workers", "overwrite", "preview", "license", "description", "cache_dir"}
    recipe = {k: v for k, v in asdict(cfg).items() if k not in skip}
    fp = {"recipe": recipe, "engine": engine.describe(), "source": info, "versions": dataset.package_versions()}
    return json.loads(json.dumps(_jsonable(fp), default=str))


def plan_shards(manifest: dict[str, Any], rows_per_shard: int) -> list[tuple[str, int, int]]:
    """``(split, shard index, rows)`` of every output shard, in the order a single writer makes them."""
    totals: dict[str, int] = {}
    for entry in manifest["shards"]:
        totals[entry["split"]] = totals.get(entry["split"], 0) + int(entry["num_rows"])
    plan = []
    for split, n in totals.items():
        for i, start in enumerate(range(0, n, rows_per_shard)):
            plan.append((split, i, min(rows_per_shard, n - start)))
    return plan


class ShardRouter:
    """Which shard ``(split, index)`` each source row goes to; keeps only the rows of shards ``wanted``.

    Row ``p`` of a split goes to shard ``p // rows_per_shard`` whatever is skipped, so shard
    boundaries and contents are those of an uninterrupted one-process build. The keys of the kept
    rows queue up in ``keys``, in order: the rendered rows come back in the same order.
    """

    def __init__(self, rows_per_shard: int, wanted: Callable[[tuple[str, int]], bool]) -> None:
        self.rows_per_shard, self.wanted = rows_per_shard, wanted
        self.keys: deque[tuple[str, int]] = deque()
        self._position: dict[str, int] = {}

    def select(self, split: str, position: int) -> bool:
        key = (split, position // self.rows_per_shard)
        if self.wanted(key):
            self.keys.append(key)
            return True
        return False

    def filter(self, slices: Iterable[SourceSlice]) -> Iterator[SourceSlice]:
        for s in slices:
            pos = self._position.get(s.split, 0)
            self._position[s.split] = pos + 1
            if self.select(s.split, pos):
                yield s


def render_shards(cfg: BuildConfig, engine: Engine, settings: dict[str, Any], slices: Iterable[SourceSlice],
                  router: ShardRouter, staging: Path, progress: bool = True) -> None:
    """Render ``slices`` (selected by ``router``) into their staged shards, each with a receipt once closed."""
    writing: dict[str, tuple[int, shards.ShardWriter, _Stats]] = {}  # per split: its shard being written

    def close(split: str) -> None:
        _, writer, stats = writing.pop(split)
        (path, rows), = writer.close()
        kill_point("receipt")
        dataset.write_receipt(path, rows, stats.to_json())

    for row in render_rows(cfg, engine, settings, slices, progress):
        split, index = router.keys.popleft()
        if split in writing and writing[split][0] != index:
            close(split)
        if split not in writing:
            writing[split] = (index, shards.ShardWriter(staging, split, cfg.format, cfg.rows_per_shard, index), _Stats())
        _, writer, stats = writing[split]
        writer.add(row)  # closes the file itself after rows_per_shard rows
        stats.add(row)
        if writer.done:
            close(split)
    for split in list(writing):  # the last shard of each split
        close(split)


def staged_writers(staging: Path, cfg: BuildConfig, plan: list[tuple[str, int, int]] | None = None
                   ) -> tuple[list[shards.ShardWriter], "_Stats"]:
    """The finished staged shards as writers for `finish_build`, and their rows' stats.

    Checks they are every shard of ``plan``, or without one, shards ``0..n-1`` of each split.
    """
    done = dataset.finished_shards(staging)
    if plan is None:
        plan = [(split, index, r["num_rows"]) for (split, index), r in sorted(done.items())]
    writers: dict[str, shards.ShardWriter] = {}
    stats = _Stats()
    for split, index, rows in plan:
        w = writers.setdefault(split, shards.ShardWriter(staging, split, cfg.format, cfg.rows_per_shard))
        r = done.get((split, index))
        if r is None or r["num_rows"] != rows or index != len(w.done):
            raise StyleSwapError(f"{staging}: shard {index} of {split} is missing or incomplete ({rows} rows "
                                 "expected); delete that folder to build from scratch")
        w.done.append((staging / r["name"], rows))
        stats.merge_json(r["stats"])
    return list(writers.values()), stats


def prepare_engine(cfg: BuildConfig) -> tuple[BuildConfig, Engine, dict[str, Any]]:
    """Let the engine train what it needs, then construct it (which validates its settings)."""
    cls = engine_class(cfg.engine)
    if cls.needs_dataset:
        cfg = replace(cfg, source=str(ingested_source(cfg)))
    settings = cls.prepare(dict(cfg.engine_settings), Path(cfg.source) if cls.needs_dataset else None,
                           Path(cfg.cache_dir))
    return cfg, cls(**settings), settings


def render_rows(cfg: BuildConfig, engine: Engine, settings: dict[str, Any], slices: Iterable[SourceSlice],
                progress: bool = True) -> Iterator[shards.Row]:
    """Rows with their copies, in source order, rendered by the executor(s) of ``cfg.workers``."""
    # Parquet rows are PNG-encoded where they are rendered when that is a process of its own;
    # with one worker a separate encode thread does it (PIL releases the GIL while compressing).
    encode_here = cfg.format == "parquet" and cfg.workers > 1
    job = {"copies": cfg.copies, "seed": cfg.seed, "encode": encode_here, "engine": cfg.engine}
    per_chunk = max(1, engine.batch_size // max(1, cfg.copies))
    executor = make_executor(cfg, cfg.engine, settings, job)
    encoder = ThreadPoolExecutor(1) if cfg.format == "parquet" and not encode_here else None
    # disable=None: a bar on a terminal, none in logs and pipes; cleared on failure so that an
    # error stays the one line on stderr.
    bar = tqdm(desc=f"{cfg.engine} x{cfg.copies}", unit="slice", disable=None if progress else True,
               file=sys.stderr, leave=True)
    try:
        window = 2 * cfg.workers + 2
        stream = ordered_map(render_chunk, chunked(slices, per_chunk), executor, window)
        if encoder is not None:
            stream = ordered_map(encode_rows, stream, encoder, window)
        for rows in stream:
            yield from rows
            bar.update(len(rows))
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
        executor.shutdown(wait=True, cancel_futures=True)
        if encoder is not None:
            encoder.shutdown(wait=True, cancel_futures=True)


def finish_build(cfg: BuildConfig, writers: list[shards.ShardWriter], stats: "_Stats", info: dict[str, Any],
                 engine: Engine, command: str | None) -> dict[str, Any]:
    """Move staged shards to their final names, then preview, card, and manifest.json last."""
    out = Path(cfg.out)
    if stats.rows == 0:
        raise StyleSwapError(f"{_source_name(cfg.source)}: the source yielded no slices (check --keep-empty and the labels)")
    # what is there is a dataset being replaced (--overwrite) or what a killed finish left
    # (`dataset.output_folder` refused anything else)
    dataset.clear_previous(out)
    ordered = sorted(writers, key=lambda w: _split_order(w.split))
    entries = shards.finalize_shards(out, ordered)
    labels = info.get("labels", contract.DEFAULT_LABELS)
    manifest = {
        "tool": dataset.TOOL,
        "format_version": contract.FORMAT_VERSION,
        "command": command or "",
        "recipe": _jsonable(asdict(cfg)),
        "source": info,
        "labels": labels,
        "engine": {"name": cfg.engine, "settings": engine.describe()},
        "copies": cfg.copies,
        "seed": cfg.seed,
        "format": cfg.format,
        "rows_per_shard": cfg.rows_per_shard,
        "image_size": list(stats.shape) if stats.shape else None,
        "splits": {w.split: {"num_rows": sum(e["num_rows"] for e in entries if e["split"] == w.split),
                             "num_shards": sum(1 for e in entries if e["split"] == w.split)} for w in ordered},
        "counts": stats.summary(labels),
        "volume_stats": _volume_stats(info),
        "versions": dataset.package_versions(),
        "shards": entries,
    }
    if cfg.preview:
        from styleswap.generator.preview_dataset import write_preview

        write_preview(out, manifest, out / "preview.png")
    card.write_card(out, manifest, license=cfg.license, description=cfg.description)
    kill_point("manifest")
    dataset.write_json_atomic(out / contract.MANIFEST_NAME, manifest)  # the commit point
    return manifest


class _Stats:
    def __init__(self) -> None:
        self.rows = 0
        self.cases: set[str] = set()
        self.label_slices: dict[int, int] = {}
        self.shape: tuple[int, int] | None = None

    def add(self, row: shards.Row) -> None:
        import numpy as np

        self.rows += 1
        self.cases.add(row.case_id)
        self.shape = self.shape or tuple(row.image.shape)
        for v in np.unique(row.mask):
            if v:
                self.label_slices[int(v)] = self.label_slices.get(int(v), 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "cases": sorted(self.cases), "label_slices": self.label_slices,
                "shape": list(self.shape) if self.shape else None}

    def merge_json(self, d: dict[str, Any]) -> None:
        self.rows += d["rows"]
        self.cases.update(d["cases"])
        for k, n in d["label_slices"].items():
            self.label_slices[int(k)] = self.label_slices.get(int(k), 0) + n
        self.shape = self.shape or (tuple(d["shape"]) if d["shape"] else None)

    def summary(self, labels: dict[str, int]) -> dict[str, Any]:
        names = {v: k for k, v in labels.items()}
        return {
            "slices": self.rows,
            "cases": len(self.cases),
            "slices_with_label": {names.get(k, str(k)): n for k, n in sorted(self.label_slices.items())},
        }


def _volume_stats(info: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """Each case's normalized-volume mean and std (for the per-volume z-score of `train seg
    --input-norm zscore`): from the ingest just streamed, or carried over from an ingested source."""
    if info.get("layout") == "styleswap-dataset":
        return info.get("volume_stats")
    per_case = (info.get("normalization") or {}).get("per_case") or {}
    stats = {c: {"mean": d["mean"], "std": d["std"]} for c, d in per_case.items() if "mean" in d}
    return stats or None


def _split_order(split: str) -> tuple[int, str]:
    return ({"train": 0, "validation": 1, "test": 2}.get(split, 3), split)


def _source_name(src: str | list[str]) -> str:
    return src if isinstance(src, str) else " ".join(src)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
