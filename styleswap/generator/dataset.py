"""Dataset folders on disk: the output-folder rules, manifest.json, reading rows back, verify."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from styleswap import __version__, contract
from styleswap.errors import StyleSwapError, VerificationError
from styleswap.generator import shards
from styleswap.generator.safe_paths import check_output_folder
from styleswap.generator.sources.base import SourceSlice

STAGING_DIR = contract.STAGING_DIR
TOOL = "styleswap"
#: In the staging folder: the settings the staged shards were rendered with (a rerun resumes only
#: under the same ones). Next to each finished staged shard, ``<shard>.json``: its receipt.
BUILD_FILE = "build.json"
_STAGED = re.compile(rf"(?P<split>.+)-(?P<index>\d{{5}})(?:{'|'.join(re.escape(s) for s in contract.SHARD_SUFFIX.values())})")
#: What a build killed while it moved its shards in leaves in the output folder (no manifest yet).
_FINISH_LEFTOVERS = {contract.DATA_DIR, contract.CARD_NAME, "preview.png", contract.MANIFEST_NAME + ".tmp"}


def package_versions() -> dict[str, str]:
    names = ["numpy", "torch", "pyarrow", "h5py", "nibabel", "pillow", "datasets", "diffusers", "monai"]
    out = {"python": platform.python_version(), "styleswap": __version__}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / contract.MANIFEST_NAME
    if not path.is_file():
        raise StyleSwapError(f"{folder}: not a dataset folder (no {contract.MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("tool") != TOOL:
        raise StyleSwapError(f"{path}: not a manifest written by {TOOL}")
    return manifest


def is_dataset(folder: Path) -> bool:
    try:
        read_manifest(folder)
        return True
    except StyleSwapError:
        return False


def shard_path(folder: Path, entry: dict[str, Any]) -> Path:
    """A manifest's shard path, refused if it escapes the dataset folder."""
    return contract.shard_file(folder, entry.get("path", ""))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    shards.fsync_path(path.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_receipt(shard: Path, num_rows: int, stats: dict[str, Any]) -> None:
    """Mark a closed staged shard finished: a resumed build keeps it and does not render it again."""
    m = _STAGED.fullmatch(shard.name)
    write_json_atomic(shard.with_name(shard.name + ".json"), {
        "split": m["split"], "index": int(m["index"]), "name": shard.name, "num_rows": num_rows,
        "bytes": shard.stat().st_size, "sha256": shards.sha256_file(shard), "stats": stats,
    })


def finished_shards(staging: Path, clean: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
    """The receipts of the finished shards in ``staging``, by ``(split, index)``.

    ``clean`` also checks each shard against its receipt (size and sha256: one read of each) and
    deletes what a killed or failed run left half done: ``.tmp`` files, shards without a receipt.
    """
    staging, done = Path(staging), {}
    if not staging.is_dir():
        return done
    for path in sorted(staging.iterdir()):
        if path.suffix != ".json" or not _STAGED.fullmatch(path.stem):
            continue
        r, shard = _read_json(path), path.with_suffix("")
        ok = isinstance(r, dict) and shard.is_file()
        if ok and clean:
            ok = shard.stat().st_size == r.get("bytes") and shards.sha256_file(shard) == r.get("sha256")
        if ok:
            done[(r["split"], int(r["index"]))] = r
        elif clean:
            path.unlink()
    if clean:
        for path in staging.iterdir():
            if path.suffix == ".tmp" or (_STAGED.fullmatch(path.name) and not Path(f"{path}.json").exists()):
                path.unlink()
    return done


@contextmanager
def output_folder(out: Path, overwrite: bool = False, fingerprint: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield the staging folder inside ``out``; on failure leave nothing behind but resumable work.

    Refuses an existing folder that holds anything but a dataset of this tool, and a dataset of
    this tool unless ``overwrite``. Old files of an overwritten dataset are replaced only after the
    new build succeeded.

    With a ``fingerprint`` (the settings the shard bytes depend on, as JSON) the build resumes: the
    finished shards (`finished_shards`) of an interrupted run with the same fingerprint are kept,
    also when this run fails, and half-written files are removed. A staged build with another
    fingerprint is refused, or discarded with ``overwrite``: hours of rendering are not thrown away
    for a mistyped flag. Without a fingerprint (convert) staging always starts empty.
    """
    out = Path(out)
    check_output_folder(out)  # every writer of a dataset folder comes through here (convert too)
    staging = out / STAGING_DIR
    created = not out.exists()
    previous = _read_json(staging / BUILD_FILE) if fingerprint is not None else None
    previous = previous if isinstance(previous, dict) else None
    if out.exists():
        if not out.is_dir():
            raise StyleSwapError(f"{out}: output path exists and is not a folder")
        leftovers = [p.name for p in out.iterdir() if p.name != STAGING_DIR]
        # a build of ours killed while it moved its shards in (before manifest.json) is resumed
        unfinished = previous is not None and set(leftovers) <= _FINISH_LEFTOVERS
        if leftovers and not unfinished:
            if not is_dataset(out):
                raise StyleSwapError(
                    f"{out}: folder exists and is not a {TOOL} dataset (found {', '.join(sorted(leftovers)[:3])}); "
                    "refusing to overwrite it: choose another --out"
                )
            if not overwrite:
                raise StyleSwapError(f"{out}: a dataset already exists there; pass --overwrite to replace it")
    resume = previous is not None and previous == fingerprint
    if previous is not None and not resume and not overwrite:
        changed = sorted(k for k in {**previous.get("recipe", {}), **fingerprint["recipe"]}
                         if previous.get("recipe", {}).get(k) != fingerprint["recipe"].get(k))
        changed += [k for k in fingerprint if k != "recipe" and previous.get(k) != fingerprint[k]]
        raise StyleSwapError(
            f"{staging}: holds an interrupted build with other settings ({', '.join(changed) or 'unknown'}); "
            "run its command again to resume it, or pass --overwrite to discard it"
        )
    try:
        if resume:
            finished_shards(staging, clean=True)
        else:
            shutil.rmtree(staging, ignore_errors=True)  # an earlier build of ours, not resumable
            staging.mkdir(parents=True)
            if fingerprint is not None:
                write_json_atomic(staging / BUILD_FILE, fingerprint)
        yield staging
    except BaseException:
        if fingerprint is None or not finished_shards(staging, clean=True):
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def clear_previous(out: Path) -> None:
    """Remove the files of a previous dataset (called just before the new one is moved in)."""
    for name in (contract.MANIFEST_NAME, contract.CARD_NAME, "preview.png"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / contract.DATA_DIR, ignore_errors=True)


def iter_rows(folder: Path, columns=None, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Decoded rows of a dataset folder, shard by shard, in manifest order."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        if split is None or entry["split"] == split:
            yield from shards.iter_shard_rows(shard_path(folder, entry), columns)


#: The columns a dataset row needs to be read back as a `SourceSlice`.
SOURCE_COLUMNS = ["sample_id", "case_id", "slice_index", "modality", "image", "mask", "spacing"]


def source_slice(raw: dict[str, Any], split: str) -> SourceSlice:
    """An undecoded shard row (`shards.iter_shard_rows(decode=False)`) as a source slice."""
    r = shards.decode_row(raw)
    return SourceSlice(sample_id=r["sample_id"], case_id=r["case_id"], slice_index=r["slice_index"],
                       modality=r["modality"], image=r["image"], mask=r["mask"], spacing=tuple(r["spacing"]),
                       split=split)


def iter_source_slices(folder: Path, select=None) -> Iterator[SourceSlice]:
    """A dataset folder read back as source slices (to build copies from an ingested dataset).

    ``select(split, position_in_split) -> bool`` keeps only some rows; the others are skipped
    without decoding their images (a distributed rank reads only its share).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    cols = SOURCE_COLUMNS
    position: dict[str, int] = {}
    for entry in manifest["shards"]:
        split = entry["split"]
        for raw in shards.iter_shard_rows(shard_path(folder, entry), cols, decode=False):
            pos = position.get(split, 0)
            position[split] = pos + 1
            if select is not None and not select(split, pos):
                continue
            yield source_slice(raw, split)


def verify(folder: Path) -> dict[str, Any]:
    """Re-read every shard: file present, sha256 and row count as in the manifest.

    Raises `VerificationError` naming the first failing shard; returns a summary otherwise.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    total = 0
    for entry in manifest["shards"]:
        path = shard_path(folder, entry)
        if not path.is_file():
            raise VerificationError(f"{entry['path']}: shard listed in the manifest is missing")
        digest = shards.sha256_file(path)
        if digest != entry["sha256"]:
            raise VerificationError(f"{entry['path']}: sha256 {digest[:12]}... differs from the manifest's {entry['sha256'][:12]}...")
        try:
            rows = shards.count_rows(path)
        except Exception as e:  # a corrupt shard whose hash was also rewritten
            raise VerificationError(f"{entry['path']}: unreadable shard ({e})") from None
        if rows != entry["num_rows"]:
            raise VerificationError(f"{entry['path']}: {rows} rows, the manifest says {entry['num_rows']}")
        total += rows
    listed = {shard_path(folder, e) for e in manifest["shards"]}
    data = folder / contract.DATA_DIR
    strays = sorted(p.name for p in data.glob("*") if p.resolve() not in listed) if data.is_dir() else []
    if strays:
        raise VerificationError(f"{contract.DATA_DIR}/{strays[0]}: file not listed in the manifest")
    return {"shards": len(manifest["shards"]), "rows": total}
