"""Dataset folders on disk: the output-folder rules, manifest.json, reading rows back, verify."""

from __future__ import annotations

import json
import os
import platform
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from styleswap import __version__, contract
from styleswap.errors import StyleSwapError, VerificationError
from styleswap.generator import shards
from styleswap.generator.sources.base import SourceSlice

STAGING_DIR = ".partial"
TOOL = "styleswap"


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
    rel = entry.get("path", "")
    target = (folder / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise StyleSwapError(f"{folder / contract.MANIFEST_NAME}: shard path {rel!r} escapes the dataset folder")
    return target


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def output_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a clean staging folder inside ``out``; on any failure leave nothing behind.

    Refuses an existing folder that holds anything but a dataset of this tool, and a dataset of
    this tool unless ``overwrite``. Old files of an overwritten dataset are replaced only after the
    new build succeeded.
    """
    out = Path(out)
    created = not out.exists()
    if out.exists():
        if not out.is_dir():
            raise StyleSwapError(f"{out}: output path exists and is not a folder")
        leftovers = [p.name for p in out.iterdir() if p.name != STAGING_DIR]
        if leftovers:
            if not is_dataset(out):
                raise StyleSwapError(
                    f"{out}: folder exists and is not a {TOOL} dataset (found {', '.join(sorted(leftovers)[:3])}); "
                    "refusing to overwrite it: choose another --out"
                )
            if not overwrite:
                raise StyleSwapError(f"{out}: a dataset already exists there; pass --overwrite to replace it")
    staging = out / STAGING_DIR
    try:
        if staging.exists():  # an interrupted earlier build of ours
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        yield staging
    except BaseException:
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


def iter_source_slices(folder: Path, select=None) -> Iterator[SourceSlice]:
    """A dataset folder read back as source slices (to build copies from an ingested dataset).

    ``select(split, position_in_split) -> bool`` keeps only some rows; the others are skipped
    without decoding their images (a distributed rank reads only its share).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    cols = ["sample_id", "case_id", "slice_index", "modality", "image", "mask", "spacing"]
    position: dict[str, int] = {}
    for entry in manifest["shards"]:
        split = entry["split"]
        for raw in shards.iter_shard_rows(shard_path(folder, entry), cols, decode=False):
            pos = position.get(split, 0)
            position[split] = pos + 1
            if select is not None and not select(split, pos):
                continue
            r = shards.decode_row(raw)
            yield SourceSlice(
                sample_id=r["sample_id"], case_id=r["case_id"], slice_index=r["slice_index"],
                modality=r["modality"], image=r["image"], mask=r["mask"],
                spacing=tuple(r["spacing"]), split=entry["split"],
            )


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
