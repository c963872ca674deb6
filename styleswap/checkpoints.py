"""Training checkpoints a kill cannot corrupt, for both halves (segmentation and diffusion stages).

A checkpoint is a folder ``<root>/<prefix><step>`` holding the files a layout names as required.
It is written under ``<root>/.tmp-<name>``, every file is fsynced, then one rename makes it
visible; only complete folders with that exact name pattern are ever listed, so a write cut short
is never resumed from. Like ``contract`` and ``safe_state`` this module belongs to neither half.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from styleswap.safe_state import fsync_path, kill_point


@dataclass(frozen=True)
class Layout:
    """How one kind of run names its checkpoints: ``prefix`` + the step (zero-padded to ``digits``)
    and the files a complete checkpoint holds."""

    prefix: str
    required: tuple[str, ...]
    digits: int = 0

    def name(self, step: int) -> str:
        return f"{self.prefix}{step:0{self.digits}d}"

    def step_of(self, name: str) -> int | None:
        m = re.fullmatch(re.escape(self.prefix) + r"(\d+)", name)
        return int(m.group(1)) if m else None


def complete(root: Path, layout: Layout) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root``, oldest first."""
    found = []
    for p in Path(root).iterdir() if Path(root).is_dir() else ():
        step = layout.step_of(p.name)
        if step is not None and p.is_dir() and not missing(p, layout):
            found.append((step, p))
    return sorted(found)


def missing(folder: Path, layout: Layout) -> list[str]:
    return [f for f in layout.required if not (Path(folder) / f).is_file()]


def write(root: Path, layout: Layout, step: int, fill: Callable[[Path], None], keep: int | None = None) -> Path:
    """Write checkpoint ``step``: ``fill(tmp_folder)`` writes its files, then sync and one rename.

    Leftover temporary folders (a run killed while writing) are removed first. ``keep``: how many
    complete checkpoints to keep afterwards (oldest removed first; None keeps all)."""
    root = Path(root)
    folder = root / layout.name(step)
    tmp = root / f".tmp-{folder.name}"
    for stale in root.glob(f".tmp-{layout.prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    missing_files = missing(tmp, layout)
    if missing_files:
        raise RuntimeError(f"checkpoint {folder.name} lacks {', '.join(missing_files)}")
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    kill_point("checkpoint-commit", step)
    if folder.exists():  # only when re-running a step from an older checkpoint
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    fsync_path(root)
    if keep:
        for _, old in complete(root, layout)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder
