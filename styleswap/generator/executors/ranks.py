"""`augment build` across processes and machines: one process per GPU, torch.distributed underneath.

Every rank runs the same command (``accelerate launch`` or ``torchrun`` start them and set
``RANK``/``WORLD_SIZE``; ``--num_machines``/``--machine_rank`` or ``--nnodes`` span machines
that share the output folder). The work is split by *output shard*: the source must have a known
row order and count, so a raw source is ingested once, by rank 0, into ``cache_dir``; rank ``r``
renders shards ``r, r+W, r+2W, ...`` of the planned shards not yet finished, each into the shared
staging folder under its global index; rank 0 claims the folder and commits. A rerun resumes like
a one-process build, whatever the number of ranks before.

Ranks coordinate through a gloo process group (CPU), whatever device renders.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from styleswap.errors import StyleSwapError
from styleswap.generator.config import BuildConfig
from styleswap.generator.executors.base import Executor
from styleswap.generator.executors.local import render_shards
from styleswap.generator.plan import BuildPlan, Key

T = TypeVar("T")


class RankExecutor(Executor):
    name = "ranks"
    needs_positions = True

    def __init__(self) -> None:
        self.dist: Any = None
        self.rank, self.world = 0, 1

    @contextmanager
    def session(self) -> Iterator["RankExecutor"]:
        import torch
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("gloo")
        self.dist, self.rank, self.world = dist, dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", self.rank)) % torch.cuda.device_count())
        try:
            yield self
            dist.barrier()  # the manifest exists for every rank when run_build returns
        finally:
            if owned:
                # A gloo group left to interpreter shutdown can abort the process ("terminate called
                # without an active exception") after a successful build.
                dist.destroy_process_group()

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return self.rank == 0

    def adapt(self, cfg: BuildConfig) -> BuildConfig:
        return replace(cfg, workers=1)  # each rank renders in-process; parallelism comes from the ranks

    def all_ok(self, error: BaseException | None = None) -> None:
        """Raise on every rank if any rank failed (naming the first failure)."""
        errors: list[str | None] = [None] * self.world
        self.dist.all_gather_object(errors, None if error is None else f"rank {self.rank}: {error}")
        failed = [e for e in errors if e]
        if error is not None:
            raise error
        if failed:
            raise StyleSwapError(failed[0])

    def on_main(self, fn: Callable[[], T]) -> T:
        result = self._on_rank0(fn)
        return result if self.is_main else fn()

    def main_only(self, fn: Callable[[], T]) -> T:
        shared = [self._on_rank0(fn)]
        self.dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def _on_rank0(self, fn: Callable[[], T]) -> T | None:
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # shared with the other ranks
                error = e
        self.all_ok(error)
        return result

    def render(self, plan: BuildPlan, done: dict[Key, Any], staging: Path, progress: bool) -> None:
        mine = {s.key for s in plan.todo(done)[self.rank :: self.world]}
        error = None
        try:
            render_shards(plan, mine.__contains__, staging, workers=1, progress=progress and self.is_main)
        except BaseException as e:
            error = e
        self.all_ok(error)
