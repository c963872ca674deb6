"""Rendering in this process: `--workers` render threads or spawned processes (`render.render_locally`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from styleswap.generator.executors.base import Executor
from styleswap.generator.plan import BuildPlan, Key, ShardRouter
from styleswap.generator.render import render_locally
from styleswap.generator.staging import ShardSink


class LocalExecutor(Executor):
    name = "local"

    def render(self, plan: BuildPlan, done: dict[Key, Any], staging: Path, progress: bool) -> None:
        render_shards(plan, lambda key: key not in done, staging, plan.cfg.workers, progress)


def render_shards(plan: BuildPlan, wanted: Callable[[Key], bool], staging: Path, workers: int,
                  progress: bool = True) -> None:
    """Render the rows of the shards ``wanted`` (the source is still read in order, since its
    order defines the shards) and write them into their staged shards, each with a receipt.
    With worker processes, the source's PNGs are decoded there, not by this one reader."""
    cfg = plan.cfg
    router = ShardRouter(cfg.rows_per_shard, wanted)
    sink = ShardSink(staging, cfg.format, cfg.rows_per_shard)
    for row in render_locally(plan.job(), plan.slices(router.select, decode=workers == 1), workers, cfg.format, progress):
        sink.add(router.keys.popleft(), row)
    sink.close()
