"""`augment build --executor ray`: the same build, rendered by Ray Data actors (optional extra).

    pip install 'styleswap[ray]'
    augment build recipe.yaml --executor ray --ray-address auto --workers 8

The driver (this process) does what a one-worker build does, except rendering:

- a raw source is ingested once into ``cache_dir`` (an ingested dataset folder is used as it is),
  so that every row has a known position; the actors read their rows from that folder, so on a
  cluster it must be on storage every node sees at the same path (as ``--out`` for torchrun);
- the work is a small Ray Dataset of position ranges ``[start, stop)``, aligned to the chunks a
  one-worker build renders (``engine.batch_size // copies`` slices), so every engine batch holds
  the same requests as there;
- ``map_batches`` runs them on a pool of ``--workers`` actors (Ray Data schedules, retries and
  applies backpressure); each actor loads the engine once and renders and PNG-encodes its ranges
  with the same `build.render_chunk` as a local worker;
- the driver streams the results back in order (``preserve_order``; checked row by row) and writes
  them with the same `shards.ShardWriter` and `build.finish_build`, so shards, their sha256 and
  manifest shard entries are byte-identical to ``--workers 1``.

Rows travel as Arrow columns (PNG bytes, or ``.npy`` bytes read with ``allow_pickle=False``), not
as pickles. Actors with a GPU engine (``controlnet``) ask Ray for one GPU each when the cluster
has GPUs.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from styleswap.errors import StyleSwapError
from styleswap.generator import dataset, shards
from styleswap.generator.build import (
    BuildConfig,
    _init_worker,
    _Stats,
    finish_build,
    ingested_source,
    open_slices,
    prepare_engine,
    render_chunk,
)
from styleswap.generator.distributed import plan_shards
from styleswap.generator.safe_paths import check_output_folder
from styleswap.generator.sources.base import SourceSlice

INSTALL_HINT = "--executor ray needs Ray: pip install 'styleswap[ray]'"
#: About this many copies (rows x copies) per Ray task: large enough that per-task overhead is
#: negligible, small enough that a few tasks per actor keep the pool balanced.
COPIES_PER_TASK = 64


def require_ray() -> Any:
    """The ``ray`` module, or a one-line `StyleSwapError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError:
        raise StyleSwapError(INSTALL_HINT) from None
    return ray


# --- the plan ----------------------------------------------------------------------------------


def plan_tasks(total: int, per_chunk: int, copies: int, workers: int) -> list[tuple[int, int]]:
    """Position ranges ``[start, stop)`` covering ``range(total)``; every start is a multiple of
    ``per_chunk`` (the chunk of a one-worker build), with a few ranges per worker on small data."""
    per_task = per_chunk * max(1, COPIES_PER_TASK // max(1, per_chunk * max(1, copies)))
    balanced = per_chunk * max(1, -(-total // (per_chunk * workers * 4)))  # >= ~4 ranges per worker
    step = min(per_task, balanced)
    return [(a, min(a + step, total)) for a in range(0, total, step)]


# --- the actors --------------------------------------------------------------------------------


def read_positions(folder: Path, manifest: dict[str, Any], start: int, stop: int) -> list[SourceSlice]:
    """Rows ``[start, stop)`` of a dataset folder (positions over its shards in manifest order),
    as `dataset.iter_source_slices` would yield them, reading only the shards (and Parquet row
    groups) that hold them."""
    out: list[SourceSlice] = []
    first = 0
    for entry in manifest["shards"]:
        n = int(entry["num_rows"])
        lo, hi = max(start, first), min(stop, first + n)
        if lo < hi:
            out.extend(dataset.source_slice(r, entry["split"])
                       for r in _shard_rows(dataset.shard_path(folder, entry), lo - first, hi - first))
        first += n
        if first >= stop:
            break
    if len(out) != stop - start:
        raise StyleSwapError(f"{folder}: expected rows {start}..{stop - 1}, the shards hold {len(out)} of them")
    return out


def _shard_rows(path: Path, lo: int, hi: int) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        groups, base, pos = [], None, 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos < hi and pos + n > lo:
                groups.append(g)
                base = pos if base is None else base
            pos += n
        if not groups:
            return []
        return pf.read_row_groups(groups, columns=dataset.SOURCE_COLUMNS).slice(lo - base, hi - lo).to_pylist()
    return list(itertools.islice(shards.iter_shard_rows(path, dataset.SOURCE_COLUMNS, decode=False), lo, hi))


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _row_schema():
    import pyarrow as pa

    return pa.schema([
        ("position", pa.int64()), ("sample_id", pa.string()), ("case_id", pa.string()),
        ("slice_index", pa.int32()), ("modality", pa.string()), ("split", pa.string()),
        ("engine", pa.string()), ("spacing", pa.list_(pa.float64())), ("prompts", pa.list_(pa.string())),
        ("seeds", pa.list_(pa.int64())), ("image", pa.binary()), ("mask", pa.binary()),
        ("augmented", pa.list_(pa.binary())), ("png_image", pa.binary()), ("png_mask", pa.binary()),
    ])


def rows_to_table(rows: list[shards.Row], first_position: int):
    """Rows as an Arrow table. Images and masks travel as ``.npy`` (the driver keeps statistics);
    copies as PNG when rows were encoded for Parquet (``augmented`` then holds PNG bytes), else
    as ``.npy``."""
    import pyarrow as pa

    cols: dict[str, list] = {name: [] for name in _row_schema().names}
    for i, r in enumerate(rows):
        enc = r.encoded
        cols["position"].append(first_position + i)
        for k in ("sample_id", "case_id", "modality", "split", "engine"):
            cols[k].append(getattr(r, k))
        cols["slice_index"].append(int(r.slice_index))
        cols["spacing"].append([float(s) for s in r.spacing])
        cols["prompts"].append(list(r.prompts))
        cols["seeds"].append([int(s) for s in r.seeds])
        cols["image"].append(_npy(r.image))
        cols["mask"].append(_npy(r.mask))
        cols["augmented"].append(list(enc["augmented"]) if enc else [_npy(a) for a in r.augmented])
        cols["png_image"].append(enc["image"] if enc else None)
        cols["png_mask"].append(enc["mask"] if enc else None)
    return pa.Table.from_pydict(cols, schema=_row_schema())


def row_from_record(rec: dict[str, Any]) -> shards.Row:
    """The inverse of `rows_to_table` for one record. A Parquet row carries its copies only as
    PNG (``encoded``); its ``augmented`` list is left empty (writers use ``encoded``)."""
    encoded = rec["png_image"] is not None
    row = shards.Row(
        sample_id=rec["sample_id"], case_id=rec["case_id"], slice_index=int(rec["slice_index"]),
        modality=rec["modality"], image=_from_npy(rec["image"]), mask=_from_npy(rec["mask"]),
        augmented=[] if encoded else [_from_npy(b) for b in rec["augmented"]],
        prompts=list(rec["prompts"]), seeds=[int(s) for s in rec["seeds"]], engine=rec["engine"],
        spacing=tuple(float(s) for s in rec["spacing"]), split=rec["split"],
    )
    if encoded:
        row.encoded = {"image": rec["png_image"], "mask": rec["png_mask"], "augmented": list(rec["augmented"])}
    return row


class RenderActor:
    """A Ray Data actor: loads the engine once, then renders position ranges of the source."""

    def __init__(self, source: str, engine: str, settings: dict[str, Any], job: dict[str, Any],
                 per_chunk: int, threads: int | None, cwd: str) -> None:
        if os.path.isdir(cwd):
            os.chdir(cwd)  # engine settings may hold paths relative to the driver's folder
        self.source = Path(source)
        self.manifest = dataset.read_manifest(self.source)
        self.per_chunk = per_chunk
        _init_worker(engine, settings, job, threads)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        tables = []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            slices = read_positions(self.source, self.manifest, start, stop)
            rows: list[shards.Row] = []
            for i in range(0, len(slices), self.per_chunk):  # the chunks of a one-worker build
                rows += render_chunk(slices[i : i + self.per_chunk])
            tables.append(rows_to_table(rows, start))
        return pa.concat_tables(tables) if tables else _row_schema().empty_table()


# --- the driver --------------------------------------------------------------------------------


def run_build_ray(cfg: BuildConfig, command: str | None = None, progress: bool = True,
                  address: str | None = None, gpus_per_worker: float | None = None) -> dict[str, Any]:
    """Build ``cfg`` with ``cfg.workers`` Ray Data actors; returns the manifest written to ``cfg.out``.

    ``address``: a Ray cluster (``"auto"``, ``"ray://host:10001"``, ...); None starts a local
    instance with ``cfg.workers`` CPUs. If Ray is already initialized in this process, that
    connection is used and left open. ``gpus_per_worker``: None asks for one GPU per actor for the
    ``controlnet`` engine when the cluster has GPUs, none otherwise.
    """
    ray = require_ray()
    cfg.validate()
    check_output_folder(cfg.out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StyleSwapError("--executor ray starts its own workers: run it once, not under torchrun/accelerate")
    source = ingested_source(cfg).resolve()
    cfg = replace(cfg, source=str(source))
    cfg, engine, settings = prepare_engine(cfg)
    info, _ = open_slices(cfg)
    manifest = dataset.read_manifest(source)
    total = sum(int(e["num_rows"]) for e in manifest["shards"])
    per_chunk = max(1, engine.batch_size // max(1, cfg.copies))  # as `build.render_rows`
    tasks = plan_tasks(total, per_chunk, cfg.copies, cfg.workers)
    job = {"copies": cfg.copies, "seed": cfg.seed, "encode": cfg.format == "parquet", "engine": cfg.engine}

    with dataset.output_folder(Path(cfg.out), overwrite=cfg.overwrite) as staging:  # refuses early
        started = _connect(ray, address, cfg.workers)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True  # results in input order: the single writer's order
        ctx.enable_progress_bars = False  # ours counts rows as they are written
        data_log = logging.getLogger("ray.data")
        saved_level = data_log.level
        data_log.setLevel(logging.ERROR)  # its plan/progress chatter; failures still raise here
        try:
            if gpus_per_worker is None:
                has_gpu = ray.cluster_resources().get("GPU", 0) > 0
                gpus_per_worker = 1.0 if has_gpu and cfg.engine == "controlnet" and settings.get("device") != "cpu" else 0.0
            # torch threads: a local instance shares this machine's cores between the actors; on a
            # cluster each actor holds one CPU (Ray sets OMP_NUM_THREADS to match).
            threads = max(1, (os.cpu_count() or 1) // cfg.workers) if started and not address else 1
            work = ray.data.from_items([{"start": a, "stop": b} for a, b in tasks], override_num_blocks=len(tasks))
            rendered = work.map_batches(
                RenderActor, batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                num_gpus=gpus_per_worker or None, **_forwarded_env(),
                fn_constructor_kwargs={"source": str(source), "engine": cfg.engine, "settings": settings,
                                       "job": job, "per_chunk": per_chunk, "threads": threads, "cwd": os.getcwd()},
            )
            writers, stats = _write(cfg, rendered, staging, total, progress)
        except Exception as e:
            cause = _styleswap_cause(e)
            if cause is not None and cause is not e:
                raise cause from None
            raise
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
            data_log.setLevel(saved_level)
            if started:
                ray.shutdown()
        expected = plan_shards(manifest, cfg.rows_per_shard)
        written = [(w.split, i, rows) for w in writers for i, (_, rows) in enumerate(w.done)]
        if sorted(written) != sorted(expected):
            raise RuntimeError(f"ray build wrote shards {written}, the single-writer plan is {expected}")
        return finish_build(cfg, writers, stats, info, engine, command)


def _forwarded_env() -> dict[str, Any]:
    """This process's switches that local render workers inherit (``STYLESWAP_*`` such as
    ``--allow-pickle``, ``HF_HUB_OFFLINE``), passed to the actors, which may run elsewhere."""
    env = {k: v for k, v in os.environ.items() if k.startswith("STYLESWAP_") or k == "HF_HUB_OFFLINE"}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _connect(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to ``address`` or start a local instance; False if Ray was already initialized."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, **kw)
    return True


def _write(cfg: BuildConfig, rendered, staging: Path, total: int, progress: bool):
    from tqdm.auto import tqdm

    writers: dict[str, shards.ShardWriter] = {}
    stats = _Stats()
    position = 0
    bar = tqdm(total=total, desc=f"{cfg.engine} x{cfg.copies} (ray)", unit="slice",
               disable=None if progress else True, file=sys.stderr, leave=True)
    try:
        for table in rendered.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            for rec in table.to_pylist():
                if rec["position"] != position:
                    raise RuntimeError(f"ray returned row {rec['position']} where row {position} was due")
                position += 1
                row = row_from_record(rec)
                w = writers.get(row.split)
                if w is None:
                    w = writers[row.split] = shards.ShardWriter(staging, row.split, cfg.format, cfg.rows_per_shard)
                w.add(row)
                stats.add(row)
            bar.update(table.num_rows)
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    if position != total:
        raise RuntimeError(f"ray returned {position} rows, the source has {total}")
    for w in writers.values():
        w.close()
    return list(writers.values()), stats


def _styleswap_cause(e: BaseException) -> StyleSwapError | None:
    """A `StyleSwapError` raised in an actor, out of the wrappers Ray puts around it."""
    found, seen, first = None, set(), e
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StyleSwapError):
            found = e  # the deepest one is the original (Ray's wrappers subclass it too)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    if found is None and first is not None:
        # A failed actor constructor reaches the driver as text only (ActorDiedError.error_msg).
        hits = re.findall(r"styleswap\.errors\.\w+: (.+)", str(first))
        found = StyleSwapError(hits[-1].strip()) if hits else None
    return found
