"""`augment build` across processes and machines: one process per GPU, torch.distributed underneath.

Every rank runs the same command (``accelerate launch`` or ``torchrun`` start them and set
``RANK``/``WORLD_SIZE``; ``--num_machines``/``--machine_rank`` or ``--nnodes`` span machines
that share the output folder). The work is split by *output shard*:

- the source must have a known row order and count, so a raw source is ingested once, by rank 0,
  into ``cache_dir`` (an ingested dataset folder is used as it is);
- shard ``i`` of a split holds rows ``[i*R, (i+1)*R)`` of that split, exactly as a one-process
  build cuts them, and rank ``r`` renders the shards ``r, r+W, r+2W, ...`` of the list of all shards;
- each rank writes its shards into the shared staging folder under their global index, and once
  every rank is done, rank 0 renames them to ``-of-N`` names and writes ``manifest.json``.

Seeds come from (build seed, sample_id, copy index), so the result is byte-identical to a
one-process build. Ranks coordinate through a gloo process group (CPU), whatever device renders.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.generator import dataset, shards
from styleswap.generator.build import (
    BuildConfig,
    _Stats,
    finish_build,
    ingested_source,
    open_slices,
    prepare_engine,
    render_rows,
)


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

    folder_ctx = dataset.output_folder(out, overwrite=cfg.overwrite)
    group.on_main(lambda: folder_ctx.__enter__() if rank == 0 else None)
    try:
        plan = plan_shards(dataset.read_manifest(source), cfg.rows_per_shard)
        mine = [p for i, p in enumerate(plan) if i % world == rank]
        wanted = {(split, i) for split, i, _ in mine}
        info, _ = open_slices(cfg)
        slices = dataset.iter_source_slices(source, select=lambda split, pos: (split, pos // cfg.rows_per_shard) in wanted)
        error = None
        try:
            stats = _render_my_shards(cfg, engine, settings, slices, mine, staging, progress and rank == 0)
            (staging / f"stats-rank{rank:05d}.json").write_text(json.dumps(stats.to_json()))
        except BaseException as e:
            error = e
        group.all_ok(error)
        manifest = None
        if rank == 0:
            manifest = _finish_on_main(cfg, plan, staging, world, info, engine, command)
    except BaseException as e:
        if rank == 0:
            folder_ctx.__exit__(type(e), e, e.__traceback__)
        raise
    if rank == 0:
        folder_ctx.__exit__(None, None, None)
    group.dist.barrier()  # the manifest exists for every rank when run_build returns
    return manifest or dataset.read_manifest(out)


def _render_my_shards(cfg, engine, settings, slices, mine, staging: Path, progress: bool) -> _Stats:
    stats = _Stats()
    queue = list(mine)  # this rank's shards in source order; rows arrive in the same order
    writer, left = None, 0
    for row in render_rows(cfg, engine, settings, slices, progress):
        if left == 0:
            split, index, left = queue.pop(0)
            writer = shards.ShardWriter(staging, split, cfg.format, cfg.rows_per_shard, first_index=index)
        if row.split != writer.split:
            raise RuntimeError(f"row {row.sample_id} of split {row.split} arrived for a {writer.split} shard")
        writer.add(row)  # closes itself after rows_per_shard rows
        stats.add(row)
        left -= 1
        if left == 0:
            writer.close()
    if writer is not None:
        writer.close()
    if queue or left:
        raise RuntimeError(f"source ended early: {len(queue)} shard(s) of this rank not rendered")
    return stats


def _finish_on_main(cfg, plan, staging: Path, world: int, info, engine, command) -> dict[str, Any]:
    writers = []
    ext = contract.SHARD_SUFFIX[cfg.format]
    for split in dict.fromkeys(s for s, _, _ in plan):
        w = shards.ShardWriter(staging, split, cfg.format, cfg.rows_per_shard)
        for s, index, rows in plan:
            if s != split:
                continue
            path = staging / f"{split}-{index:05d}{ext}"
            if not path.is_file() or shards.count_rows(path) != rows:
                raise StyleSwapError(f"{path.name}: a rank did not finish this shard ({rows} rows expected)")
            w.done.append((path, rows))
        writers.append(w)
    stats = _Stats()
    for r in range(world):
        stats.merge_json(json.loads((staging / f"stats-rank{r:05d}.json").read_text()))
    return finish_build(cfg, writers, stats, info, engine, command)
