"""`augment build --executor ray`: the shards of a planned build rendered by Ray Data actors.

    pip install 'styleswap[ray]'
    augment build recipe.yaml --executor ray --ray-address auto --workers 8

- The source is a dataset folder (a raw source is ingested into ``cache_dir`` first), so every
  row has a known position; the actors read their rows from that folder, so on a cluster it must be
  on storage every node sees at the same path (as ``--out`` for torchrun).
- The work is a small Ray Dataset of row ranges ``(split, start, stop)`` of the shards to render
  (those without a receipt: a killed Ray build resumes like any other), each inside one shard and
  aligned to the chunks a one-worker build renders.
- ``map_batches`` runs them on a pool of ``--workers`` actors (Ray Data schedules, retries and
  applies backpressure); each actor loads the engine once (`render.Renderer`) and renders and
  PNG-encodes its ranges.
- This process streams the results back in order (``preserve_order``; checked row by row) and
  writes them with the same `staging.ShardSink` as every executor, receipts included.

Rows travel as Arrow columns (PNG bytes, or ``.npy`` bytes read with ``allow_pickle=False``), not
as pickles. Actors ask for the GPUs the engine declares (`Engine.gpus_per_worker`) when the cluster
has GPUs.
"""

from __future__ import annotations

import io
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
from styleswap.generator.executors.base import Executor
from styleswap.generator.plan import BuildPlan, Key, ShardSpec
from styleswap.generator.render import RenderJob, Renderer, usable_cores
from styleswap.generator.staging import ShardSink

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


def plan_tasks(todo: list[ShardSpec], rows_per_shard: int, chunk: int, copies: int, workers: int
               ) -> list[tuple[str, int, int]]:
    """Row ranges ``(split, start, stop)`` covering the shards ``todo``, in their order; each range
    lies inside one shard and starts at a multiple of ``chunk`` from the shard's first row."""
    total = sum(s.rows for s in todo)
    per_task = chunk * max(1, COPIES_PER_TASK // max(1, chunk * max(1, copies)))
    balanced = chunk * max(1, -(-total // (chunk * workers * 4)))  # >= ~4 ranges per worker
    step = min(per_task, balanced)
    tasks = []
    for s in todo:
        first = s.index * rows_per_shard
        tasks += [(s.split, a, min(a + step, first + s.rows)) for a in range(first, first + s.rows, step)]
    return tasks


# --- the actors --------------------------------------------------------------------------------


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
        ("qc_dice", pa.list_(pa.float32())),
    ])


def rows_to_table(rows: list[shards.Row], first_position: int):
    """Rows as an Arrow table; ``position`` is each row's position in its split. Images and masks
    travel as ``.npy`` (the writer keeps statistics); copies as PNG when rows were encoded for
    Parquet (``augmented`` then holds PNG bytes), else as ``.npy``."""
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
        cols["qc_dice"].append(r.qc_dice)  # None (null) without the content check
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
        spacing=tuple(float(s) for s in rec["spacing"]), split=rec["split"], qc_dice=rec["qc_dice"],
    )
    if encoded:
        row.encoded = {"image": rec["png_image"], "mask": rec["png_mask"], "augmented": list(rec["augmented"])}
    return row


class RenderActor:
    """A Ray Data actor: loads the engine once, then renders row ranges of the source."""

    def __init__(self, source: str, job: RenderJob, cwd: str) -> None:
        if os.path.isdir(cwd):
            os.chdir(cwd)  # engine settings may hold paths relative to the driver's folder
        self.source = Path(source)
        self.manifest = dataset.read_manifest(self.source)
        self.renderer = Renderer(job)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        tables = []
        for split, start, stop in zip(batch["split"].tolist(), batch["start"].tolist(), batch["stop"].tolist()):
            slices = dataset.read_source_slices(self.source, self.manifest, split, start, stop)
            rows: list[shards.Row] = []
            step = self.renderer.job.chunk
            for i in range(0, len(slices), step):  # the chunks of a one-worker build
                rows += self.renderer.render(slices[i : i + step])
            tables.append(rows_to_table(rows, start))
        return pa.concat_tables(tables) if tables else _row_schema().empty_table()


# --- the driver --------------------------------------------------------------------------------


class RayExecutor(Executor):
    """``workers`` Ray Data actors render; this process writes (see the module docstring).

    ``address``: a Ray cluster (``"auto"``, ``"ray://host:10001"``, ...); None starts a local
    instance with ``--workers`` CPUs. If Ray is already initialized in this process, that
    connection is used and left open. ``gpus_per_worker``: None asks for what the engine declares
    when the cluster has GPUs.
    """

    name = "ray"
    needs_positions = True

    def __init__(self, address: str | None = None, gpus_per_worker: float | None = None) -> None:
        self.ray = require_ray()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise StyleSwapError("--executor ray starts its own workers: run it once, not under torchrun/accelerate")
        self.address, self.gpus_per_worker = address, gpus_per_worker

    def render(self, plan: BuildPlan, done: dict[Key, Any], staging: Path, progress: bool) -> None:
        ray, cfg = self.ray, plan.cfg
        todo = plan.todo(done)
        if not todo:
            return
        tasks = plan_tasks(todo, cfg.rows_per_shard, plan.chunk, cfg.copies, cfg.workers)
        started = _connect(ray, self.address, cfg.workers)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True  # results in input order: the single writer's order
        ctx.enable_progress_bars = False  # ours counts rows as they are written
        data_log = logging.getLogger("ray.data")
        saved_level = data_log.level
        data_log.setLevel(logging.ERROR)  # its plan/progress chatter; failures still raise here
        try:
            gpus = self.gpus_per_worker
            if gpus is None:
                has_gpu = ray.cluster_resources().get("GPU", 0) > 0
                gpus = plan.engine_cls.gpus_per_worker(plan.settings) if has_gpu else 0.0
            # torch threads: a local instance shares this machine's cores between the actors; on a
            # cluster each actor holds one CPU (Ray sets OMP_NUM_THREADS to match).
            threads = max(1, usable_cores() // cfg.workers) if started and not self.address else 1
            job = replace(plan.job(), encode=cfg.format == "parquet", threads=threads)
            work = ray.data.from_items([{"split": s, "start": a, "stop": b} for s, a, b in tasks],
                                       override_num_blocks=len(tasks))
            rendered = work.map_batches(
                RenderActor, batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=cfg.workers), num_gpus=gpus or None, **_forwarded_env(),
                fn_constructor_kwargs={"source": str(Path(cfg.source).resolve()), "job": job, "cwd": os.getcwd()},
            )
            _write(plan, rendered, tasks, staging, progress)
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


def _forwarded_env() -> dict[str, Any]:
    """This process's switches that local render workers inherit (``STYLESWAP_*`` such as
    ``--allow-pickle``, ``HF_HUB_OFFLINE``), passed to the actors, which may run elsewhere."""
    env = {k: v for k, v in os.environ.items() if k.startswith("STYLESWAP_") or k == "HF_HUB_OFFLINE"}
    env.pop("STYLESWAP_TEST_KILL_AT", None)  # crash tests kill the driver, not the actors
    env.pop("STYLESWAP_TEST_HOLD_AT", None)
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


def _write(plan: BuildPlan, rendered, tasks: list[tuple[str, int, int]], staging: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    cfg = plan.cfg
    due = ((split, p) for split, a, b in tasks for p in range(a, b))  # every row, in the order written
    total = sum(b - a for _, a, b in tasks)
    sink = ShardSink(staging, cfg.format, cfg.rows_per_shard)
    bar = tqdm(total=total, desc=f"{cfg.engine} x{cfg.copies} (ray)", unit="slice",
               disable=None if progress else True, file=sys.stderr, leave=True)
    written = 0
    try:
        for table in rendered.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            for rec in table.to_pylist():
                split, position = next(due, (None, None))
                if (rec["split"], rec["position"]) != (split, position):
                    raise RuntimeError(f"ray returned row {rec['position']} of {rec['split']} where row "
                                       f"{position} of {split} was due")
                sink.add((split, position // cfg.rows_per_shard), row_from_record(rec))
                written += 1
            bar.update(table.num_rows)
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    if written != total:
        raise RuntimeError(f"ray returned {written} rows, the shards to render hold {total}")
    sink.close()


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
