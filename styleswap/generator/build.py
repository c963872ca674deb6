"""`augment build` and `augment ingest`: source slices -> engine -> shards + manifest.json.

Every build, whoever renders it, goes the same way (`run_build`):

1. **ingest**: a raw source that must have known row positions (an engine that trains on it, an
   executor that hands out positions) is ingested once into ``cache_dir``; otherwise it streams;
2. **plan** (`plan.plan_build`): source, engine settings (models trained if missing), shard plan,
   fingerprint;
3. **claim** (`staging.OutputFolder`): lock the output folder, refuse what is not ours, resume a
   staged build with the same fingerprint, or recognise one that already committed;
4. **render**: the executor (`executors`) renders the shards that have no receipt yet;
5. **commit** (`commit.commit`): final shard names, preview, card, ``manifest.json`` last.

An interrupted build (killed, disk full) resumes when the same command runs again, with any
executor: row ``p`` of a split always goes to shard ``p // rows_per_shard``, and each finished
shard is fsynced and gets a receipt in ``OUT/.partial``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from typing import TYPE_CHECKING

from styleswap import contract
from styleswap.contract import Manifest
from styleswap.errors import StyleSwapError
from styleswap.generator import dataset
from styleswap.generator.commit import command_line, commit
from styleswap.generator.config import BuildConfig
from styleswap.generator.engines.base import engine_class
from styleswap.generator.executors.base import Executor
from styleswap.generator.executors.local import LocalExecutor
from styleswap.generator.plan import BuildPlan, ingest_spec, plan_build
from styleswap.generator.qc import needs_ingested_source
from styleswap.generator.safe_paths import check_output_folder
from styleswap.generator.staging import OutputFolder, finished_shards

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BuildConfig", "command_line", "ingest_source", "run_build"]


def run_build(cfg: BuildConfig, command: str | None = None, progress: bool = True,
              executor: Executor | None = None) -> Manifest:
    """Build a dataset folder from ``cfg``; returns the manifest written to ``cfg.out``.

    ``executor``: who renders (default: this process, or the ranks of ``torchrun`` / ``accelerate
    launch`` when ``WORLD_SIZE`` > 1). An interrupted build resumes when the same command runs again.
    """
    cfg.validate()
    check_output_folder(cfg.out)  # before any work: a raw source may be ingested into the cache first
    ex = executor or default_executor()
    try:
        with ex.session():
            cfg = ex.adapt(cfg)
            # a check whose model reads z-scored input needs every case's statistics before rendering
            if engine_class(cfg.engine).needs_dataset or ex.needs_positions or needs_ingested_source(cfg.qc_model):
                cfg = ex.on_main(lambda: ingest_source(cfg))
            plan = ex.on_main(lambda: plan_build(cfg))
            return _execute(plan, ex, command, progress)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StyleSwapError(f"{cfg.out}: no space left on the device; free some space and run the same "
                             "command again to resume (finished shards are kept)") from None


def default_executor() -> Executor:
    """The ranks of ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1), else this process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from styleswap.generator.executors.ranks import RankExecutor

        return RankExecutor()
    return LocalExecutor()


def ingest_source(cfg: BuildConfig) -> BuildConfig:
    """``cfg`` with its source as a dataset folder: itself if it is one, else the raw source
    ingested once (``augment ingest`` into ``cache_dir``, keyed by the preprocessing settings)."""
    if dataset.is_dataset_folder(cfg.source):
        return cfg
    folder, ingest = ingest_spec(cfg)
    if not (folder / contract.MANIFEST_NAME).exists():
        run_build(ingest, command="(source ingested for the build)", executor=LocalExecutor())
    return replace(cfg, source=str(folder))


def _execute(plan: BuildPlan, ex: Executor, command: str | None, progress: bool) -> Manifest:
    """Claim the output folder, render what is not done, commit."""
    cfg = plan.cfg
    folder = OutputFolder(cfg.out, cfg.overwrite, plan.fingerprint)
    finished = ex.main_only(lambda: folder.open().finished)
    try:
        if finished is not None:
            if ex.is_main:
                print(f"{cfg.out}: already built with these settings (its last run was stopped after the commit); "
                      "nothing to render")
            manifest = finished
        else:
            staging: Path = folder.staging
            done = finished_shards(staging)
            ex.all_ok()  # every process has read the same receipts before any process writes one
            if done and ex.is_main:
                total = f" of {len(plan.shards)}" if plan.shards is not None else ""
                print(f"resuming {cfg.out}: {len(done)}{total} shards already done")
            ex.render(plan, done, staging, progress)
            manifest = ex.main_only(lambda: commit(plan, staging, command))
    except BaseException as e:
        if ex.is_main:
            folder.close(e)
        raise
    if ex.is_main:
        folder.close()
    return manifest
