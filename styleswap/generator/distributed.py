"""`augment build` across processes and machines: one process per GPU, torch.distributed underneath.

Every rank runs the same command (``accelerate launch`` or ``torchrun`` start them and set
``RANK``/``WORLD_SIZE``; ``--num_machines``/``--machine_rank`` or ``--nnodes`` span machines
that share the output folder). The work is split by *output shard*:

- the source must have a known row order and count, so a raw source is ingested once, by rank 0,
  into ``cache_dir`` (an ingested dataset folder is used as it is);
- shard ``i`` of a split holds rows ``[i*R, (i+1)*R)`` of that split, exactly as a one-process
  build cuts them, and rank ``r`` renders the shards ``r, r+W, r+2W, ...`` of the list of all shards;
- each rank writes its shards into the shared staging folder under their global index, and once
  every rank is done, rank 0 renames them to ``-of-N`` names and writes ``manifest.json``;
- a rerun resumes like a one-process build (same staging folder and receipts): the shards not yet
  finished are dealt out again, round robin, whatever the number of ranks before.

Seeds come from (build seed, sample_id, copy index), so the result is byte-identical to a
one-process build. Ranks coordinate through a gloo process group (CPU), whatever device renders.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from styleswap.errors import StyleSwapError
from styleswap.generator import dataset
from styleswap.generator.build import (
    BuildConfig,
    ShardRouter,
    finish_build,
    fingerprint,
    ingested_source,
    open_slices,
    plan_shards,
    prepare_engine,
    render_shards,
    staged_writers,
)


class _Group:
    """The few collectives a build needs, with every rank's failure made everyone's failure."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.owned = not dist.is_initialized()
        if self.owned:
            dist.init_process_group("gloo")
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def all_ok(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank failed (naming the first failure)."""
        errors: list[str | None] = [None] * self.world
        self.dist.all_gather_object(errors, None if error is None else f"rank {self.rank}: {error}")
        failed = [e for e in errors if e]
        if error is not None:
            raise error
        if failed:
            raise StyleSwapError(failed[0])

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 first (it may train or ingest), then on the others (cache hits)."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except BaseException as e:  # shared with the other ranks below
                error = e
        self.all_ok(error)
        if self.rank != 0:
            result = fn()
        return result


def run_distributed(cfg: BuildConfig, command: str | None, progress: bool) -> dict[str, Any]:
    group = _Group()
    try:
        return _run(group, cfg, command, progress)
    finally:
        if group.owned:
            # A gloo group left to interpreter shutdown can abort the process ("terminate called
            # without an active exception") after a successful build.
            group.dist.destroy_process_group()


def _run(group: _Group, cfg: BuildConfig, command: str | None, progress: bool) -> dict[str, Any]:
    import torch

    rank, world = group.rank, group.world
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    # Each rank renders in-process; parallelism comes from the ranks.
    cfg = replace(cfg, workers=1)
    source = group.on_main(lambda: ingested_source(cfg))
    cfg = replace(cfg, source=str(source))
    cfg, engine, settings = group.on_main(lambda: prepare_engine(cfg))
    out = Path(cfg.out)
    staging = out / dataset.STAGING_DIR
    info, _ = open_slices(cfg)

    folder_ctx = dataset.output_folder(out, cfg.overwrite, fingerprint(cfg, engine, info))
    group.on_main(lambda: folder_ctx.__enter__() if rank == 0 else None)
    try:
        plan = plan_shards(dataset.read_manifest(source), cfg.rows_per_shard)
        done = dataset.finished_shards(staging)
        group.all_ok(None)  # every rank has read the same receipts before any rank writes one
        todo = [(split, i) for split, i, _ in plan if (split, i) not in done]
        if done and rank == 0:
            print(f"resuming {out}: {len(done)} of {len(plan)} shards already done")
        mine = set(todo[rank::world])
        router = ShardRouter(cfg.rows_per_shard, mine.__contains__)
        slices = dataset.iter_source_slices(source, select=router.select)
        error = None
        try:
            render_shards(cfg, engine, settings, slices, router, staging, progress and rank == 0)
        except BaseException as e:
            error = e
        group.all_ok(error)
        manifest = None
        if rank == 0:
            writers, stats = staged_writers(staging, cfg, plan)
            manifest = finish_build(cfg, writers, stats, info, engine, command)
    except BaseException as e:
        if rank == 0:
            folder_ctx.__exit__(type(e), e, e.__traceback__)
        raise
    if rank == 0:
        folder_ctx.__exit__(None, None, None)
    group.dist.barrier()  # the manifest exists for every rank when run_build returns
    return manifest or dataset.read_manifest(out)
