"""Who may write a dataset folder, and how a build's shards wait there until they are committed.

One place holds the rules every executor (local pool, torchrun/accelerate ranks, Ray) and
`augment convert` follow, in `OutputFolder`:

- one writer at a time: the folder is locked (`safe_state.folder_lock`) while a build writes;
- an existing folder that is not a StyleSwap dataset is refused, never overwritten; a dataset is
  replaced only with ``--overwrite``, and only after the new build succeeded;
- shards are staged in ``OUT/.partial/`` with the settings they are rendered with (``build.json``,
  the *fingerprint*) and, per finished shard, a receipt (rows, bytes, sha256, row statistics);
- a rerun with the same fingerprint resumes: finished shards are kept, half-written files dropped;
- a staged build with another fingerprint (or a writer without one) is refused unless
  ``--overwrite``: finished shards of another configuration are never deleted silently;
- a build killed after ``manifest.json`` was renamed into place but before ``.partial`` was
  removed is recognised by its rerun as finished (nothing to do, no ``--overwrite`` needed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from styleswap import contract
from styleswap.contract import Manifest
from styleswap.errors import StyleSwapError
from styleswap.generator import shards
from styleswap.generator.safe_paths import check_output_folder
from styleswap.safe_state import LOCK_NAME, folder_lock, kill_point, write_json_atomic

STAGING_DIR = contract.STAGING_DIR
#: In the staging folder: the settings the staged shards were rendered with (a rerun resumes only
#: under the same ones). Next to each finished staged shard, ``<shard>.json``: its receipt.
BUILD_FILE = "build.json"
STAGED = re.compile(rf"(?P<split>.+)-(?P<index>\d{{5}})(?:{'|'.join(re.escape(s) for s in contract.SHARD_SUFFIX.values())})")
#: What a build killed while it moved its shards in leaves in the output folder (no manifest yet).
FINISH_LEFTOVERS = {contract.DATA_DIR, contract.CARD_NAME, "preview.png", contract.MANIFEST_NAME + ".tmp"}
Key = tuple[str, int]  # (split, shard index)


def read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def committed_manifest(folder: Path) -> Manifest | None:
    """The manifest of a dataset this tool wrote in ``folder``, or None."""
    try:
        return Manifest.read(folder).require_styleswap(folder)
    except StyleSwapError:
        return None


# --- receipts -----------------------------------------------------------------------------------


def write_receipt(shard: Path, num_rows: int, stats: dict[str, Any]) -> None:
    """Mark a closed staged shard finished: a resumed build keeps it and does not render it again."""
    m = STAGED.fullmatch(shard.name)
    write_json_atomic(shard.with_name(shard.name + ".json"), {
        "split": m["split"], "index": int(m["index"]), "name": shard.name, "num_rows": num_rows,
        "bytes": shard.stat().st_size, "sha256": contract.sha256_file(shard), "stats": stats,
    })


def finished_shards(staging: Path, clean: bool = False) -> dict[Key, dict[str, Any]]:
    """The receipts of the finished shards in ``staging``, by ``(split, index)``.

    ``clean`` also checks each shard against its receipt (size and sha256: one read of each) and
    deletes what a killed or failed run left half done: ``.tmp`` files, shards without a receipt.
    """
    staging, done = Path(staging), {}
    if not staging.is_dir():
        return done
    for path in sorted(staging.iterdir()):
        if path.suffix != ".json" or not STAGED.fullmatch(path.stem):
            continue
        r, shard = read_json(path), path.with_suffix("")
        ok = isinstance(r, dict) and shard.is_file()
        if ok and clean:
            ok = shard.stat().st_size == r.get("bytes") and contract.sha256_file(shard) == r.get("sha256")
        if ok:
            done[(r["split"], int(r["index"]))] = r
        elif clean:
            path.unlink()
    if clean:
        for path in staging.iterdir():
            if path.suffix == ".tmp" or (STAGED.fullmatch(path.name) and not Path(f"{path}.json").exists()):
                path.unlink()
    return done


class RowStats:
    """What the manifest counts (rows, cases, slices per label, image size), kept per shard in its
    receipt so that a resumed build counts the shards it did not render itself."""

    def __init__(self) -> None:
        self.rows = 0
        self.cases: set[str] = set()
        self.label_slices: dict[int, int] = {}
        self.shape: tuple[int, int] | None = None

    def add(self, row: shards.Row) -> None:
        self.rows += 1
        self.cases.add(row.case_id)
        self.shape = self.shape or tuple(row.image.shape)
        # bincount, not unique: the labels are small ints, and this runs once per row in the writer
        for v in np.flatnonzero(np.bincount(row.mask.ravel())[1:]) + 1:
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


class ShardSink:
    """Writes rendered rows into their staged shards, each with a receipt once it is closed.

    Rows come with their shard's key ``(split, index)``; the rows of one shard arrive together and
    in order (every executor renders in source order), so a change of key closes the shard.
    """

    def __init__(self, staging: Path, fmt: str, rows_per_shard: int) -> None:
        self.staging, self.fmt, self.rows_per_shard = staging, fmt, rows_per_shard
        self.writing: dict[str, tuple[int, shards.ShardWriter, RowStats]] = {}  # per split: its open shard

    def add(self, key: Key, row: shards.Row) -> None:
        split, index = key
        if split in self.writing and self.writing[split][0] != index:
            self._close(split)
        if split not in self.writing:
            writer = shards.ShardWriter(self.staging, split, self.fmt, self.rows_per_shard, index)
            self.writing[split] = (index, writer, RowStats())
        _, writer, stats = self.writing[split]
        writer.add(row)  # closes the file itself after rows_per_shard rows
        stats.add(row)
        if writer.done:
            self._close(split)

    def close(self) -> None:
        """Close the last shard of each split (after every row was added)."""
        for split in list(self.writing):
            self._close(split)

    def _close(self, split: str) -> None:
        _, writer, stats = self.writing.pop(split)
        (path, rows), = writer.close()
        kill_point("receipt")
        write_receipt(path, rows, stats.to_json())


# --- the output folder --------------------------------------------------------------------------


class OutputFolder:
    """One writer's hold on a dataset folder, from `open` (lock, checks, staging) to `close`.

    ``fingerprint``: the settings the staged shards' bytes depend on (JSON); a writer without one
    (convert) starts from empty staging and cannot resume. After `open`, ``finished`` is the
    manifest when the folder already holds the committed result of this very build.
    """

    def __init__(self, out: str | Path, overwrite: bool = False, fingerprint: dict[str, Any] | None = None,
                 what: str = "augment build") -> None:
        self.out, self.overwrite, self.fingerprint, self.what = Path(out), overwrite, fingerprint, what
        self.staging = self.out / STAGING_DIR
        self.finished: Manifest | None = None
        self.resumed = False
        self._lock = None
        self._created = False

    def __enter__(self) -> Path:
        self.open()
        return self.staging

    def __exit__(self, kind, error, tb) -> None:
        self.close(error)

    def open(self) -> "OutputFolder":
        out = self.out
        check_output_folder(out)  # every writer of a dataset folder comes through here (convert too)
        if out.exists() and not out.is_dir():
            raise StyleSwapError(f"{out}: output path exists and is not a folder")
        self._created = not out.exists()
        self._lock = folder_lock(out, self.what)
        self._lock.__enter__()
        try:
            self._claim()
        except BaseException:
            self._release()
            raise
        return self

    def _claim(self) -> None:
        out, staging, fp = self.out, self.staging, self.fingerprint
        previous = read_json(staging / BUILD_FILE)
        previous = previous if isinstance(previous, dict) else None
        leftovers = [p.name for p in out.iterdir() if p.name not in (STAGING_DIR, LOCK_NAME)]
        if leftovers:
            committed = committed_manifest(out)
            # a build of ours killed while it moved its shards in (before manifest.json) is resumed
            unfinished = committed is None and previous is not None and set(leftovers) <= FINISH_LEFTOVERS
            if committed is None and not unfinished:
                raise StyleSwapError(
                    f"{out}: folder exists and is not a {contract.TOOL} dataset (found {', '.join(sorted(leftovers)[:3])}); "
                    "refusing to overwrite it: choose another --out"
                )
            if committed is not None and fp is not None and previous == fp and _is_commit_of(staging, committed):
                self.finished = committed  # killed between the commit and the removal of .partial
                return
            if committed is not None and not self.overwrite:
                raise StyleSwapError(f"{out}: a dataset already exists there; pass --overwrite to replace it")
        if previous is not None and previous != fp and not self.overwrite:
            changed = _changed(previous, fp)
            raise StyleSwapError(
                f"{staging}: holds an interrupted build with other settings ({', '.join(changed) or 'unknown'}); "
                "run its command again to resume it, or pass --overwrite to discard it"
            )
        self.resumed = previous is not None and previous == fp
        if self.resumed:
            finished_shards(staging, clean=True)
        else:
            shutil.rmtree(staging, ignore_errors=True)  # ours to discard: nothing resumable, or --overwrite
            staging.mkdir(parents=True)
            if fp is not None:
                write_json_atomic(staging / BUILD_FILE, fp)

    def close(self, error: BaseException | None = None) -> None:
        """After success: drop the staging folder (the manifest is committed). After a failure:
        keep the finished shards of a resumable build, remove everything else this writer made."""
        try:
            if error is None:
                kill_point("committed")
                shutil.rmtree(self.staging, ignore_errors=True)
            elif self.fingerprint is None or not finished_shards(self.staging, clean=True):
                shutil.rmtree(self.staging, ignore_errors=True)
                if self._created:
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)


def _is_commit_of(staging: Path, manifest: Manifest) -> bool:
    """True when ``manifest`` lists exactly the staged shards (the commit of the staged build)."""
    staged = sorted(r["sha256"] for r in finished_shards(staging).values())
    return bool(staged) and staged == sorted(e.sha256 or "" for e in manifest.shards)


def _changed(previous: dict[str, Any], fp: dict[str, Any] | None) -> list[str]:
    if fp is None:
        return []
    prev_recipe, recipe = previous.get("recipe", {}), fp.get("recipe", {})
    changed = sorted(k for k in {**prev_recipe, **recipe} if prev_recipe.get(k) != recipe.get(k))
    return changed + [k for k in fp if k != "recipe" and previous.get(k) != fp[k]]


def clear_previous(out: Path) -> None:
    """Remove the files of a previous dataset (called just before the new one is moved in)."""
    for name in (contract.MANIFEST_NAME, contract.CARD_NAME, "preview.png"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / contract.DATA_DIR, ignore_errors=True)
