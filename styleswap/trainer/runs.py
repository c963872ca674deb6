"""A run folder is protected like a dataset folder: what ``train seg`` may write where.

``--out`` must be new, empty, or a run of this tool (it holds ``train_config.json``). A finished or
interrupted run is continued only with ``--resume`` and only under the same data (by content:
each dataset's manifest.json hash), recipe and seed; ``--steps`` may be raised, never lowered
below the checkpoint. ``--overwrite`` replaces a run (its own files and the evaluations written
into it), never a folder of someone else's files. train_config.json keeps the run's original
settings; resumes are appended to its ``resumes`` list.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.trainer.config import TrainConfig, flag

CONFIG_NAME = "train_config.json"
#: What a run writes into its folder.
RUN_ENTRIES = (CONFIG_NAME, "metrics.csv", "curves.png", "checkpoints", "best", "final")


def data_identity(root: Path) -> dict[str, str]:
    """A dataset's identity by content: its folder and the sha256 of its manifest.json (which holds
    every shard's sha256), so a moved or re-downloaded copy of the same data is the same data."""
    return {"path": str(root), "manifest_sha256": contract.sha256_file(Path(root) / contract.MANIFEST_NAME)}


def is_eval_folder(path: Path) -> bool:
    """A ``train eval`` output (metrics.json + metrics.md), which may live inside its run."""
    return path.is_dir() and (path / "metrics.json").is_file() and (path / "metrics.md").is_file()


def prepare(cfg: TrainConfig, data_ids: list[dict[str, str]], val_id: dict[str, str] | None) -> dict[str, Any] | None:
    """Check ``cfg.out`` against the rules; clear it for ``--overwrite``. Returns the recorded
    config of the run being resumed (None for a new run). Nothing is written when refused."""
    out = Path(cfg.out)
    if out.is_symlink():
        raise StyleSwapError(f"{out}: the run folder is a symbolic link; refusing to write through it")
    if out.exists() and not out.is_dir():
        raise StyleSwapError(f"{out}: exists and is not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    recorded = out / CONFIG_NAME
    if not recorded.is_file():
        foreign = [p.name for p in entries if p.name not in RUN_ENTRIES and not is_eval_folder(p)]
        if entries and (foreign or not cfg.overwrite):
            names = ", ".join((foreign or [p.name for p in entries])[:3])
            raise StyleSwapError(f"{out}: not empty and not a training run of this tool (holds {names}); "
                                 "choose a new or empty --out")
        if entries:  # leftovers of a run that never wrote its config: --overwrite clears them
            _clear(out, entries)
        return None
    try:
        previous = json.loads(recorded.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{recorded}: unreadable ({e})") from None
    if cfg.overwrite:
        _clear(out, entries)
        return None
    if not cfg.resume:
        raise StyleSwapError(f"{out}: holds a training run already; pass --resume latest to continue it, "
                             "--overwrite to replace it, or choose another --out")
    differences = _differences(previous, cfg, data_ids, val_id)
    if differences:
        raise StyleSwapError(f"{out}: --resume with other settings than the run's ({'; '.join(differences)}); "
                             "run its own command again, or use another --out")
    return previous


def _differences(previous: dict[str, Any], cfg: TrainConfig, data_ids: list[dict[str, str]], val_id) -> list[str]:
    diffs = []
    recipe = previous.get("recipe", {})
    for key, value in cfg.recipe().items():
        if key in ("data", "val"):
            continue  # compared by content below
        if key in recipe and json.loads(json.dumps(recipe[key])) != json.loads(json.dumps(value)):
            diffs.append(f"{flag(key)} {recipe[key]!r} -> {value!r}")
    old_data = [d.get("manifest_sha256") for d in previous.get("data_ids", [])]
    if old_data and old_data != [d["manifest_sha256"] for d in data_ids]:
        diffs.append("--data holds other data (manifest hashes differ)")
    old_val = (previous.get("val_id") or {}).get("manifest_sha256")
    if old_val != (val_id or {}).get("manifest_sha256"):
        diffs.append("--val holds other data" if old_val and val_id else "--val added or removed")
    return diffs


def _clear(out: Path, entries: list[Path]) -> None:
    for p in entries:
        if p.name in RUN_ENTRIES or is_eval_folder(p):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def remove_run_files(out: Path) -> None:
    """Undo a run that failed before its first checkpoint: its own files, and the folder if that
    leaves it empty (a user's files, never)."""
    if out.is_dir():
        _clear(out, [p for p in out.iterdir() if p.name in RUN_ENTRIES])
        if not any(out.iterdir()):
            out.rmdir()


def record(cfg: TrainConfig, data_ids: list[dict[str, str]], val_id: dict[str, str] | None,
           previous: dict[str, Any] | None, start_step: int) -> dict[str, Any]:  # fmt: skip
    """train_config.json's content: the run's settings as first given, plus one entry per resume."""
    if previous is None:
        from dataclasses import asdict

        return {**asdict(cfg), "recipe": cfg.recipe(), "data_ids": data_ids, "val_id": val_id, "resumes": []}
    return {**previous, "steps": max(int(previous.get("steps", 0)), cfg.steps),
            "resumes": [*previous.get("resumes", []), {"from_step": start_step, "steps": cfg.steps}]}  # fmt: skip


def check_steps(cfg: TrainConfig, checkpoint_step: int, where: Path) -> None:
    if cfg.steps < checkpoint_step:
        raise StyleSwapError(f"{where}: the run is at step {checkpoint_step}; --steps {cfg.steps} would undo it "
                             f"(give --steps >= {checkpoint_step} to continue)")
