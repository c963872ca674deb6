"""Dataset folders read back by the generator: rows, source slices (to build on an ingested
dataset), and `verify`. Writing and the output-folder rules live in `staging` and `commit`."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from styleswap import __version__, contract
from styleswap.contract import Manifest, ShardReader
from styleswap.errors import StyleSwapError, VerificationError
from styleswap.generator import shards
from styleswap.generator.sources.base import SourceSlice

#: The columns a dataset row needs to be read back as a `SourceSlice`.
SOURCE_COLUMNS = ["sample_id", "case_id", "slice_index", "modality", "image", "mask", "spacing"]


def package_versions() -> dict[str, str]:
    names = ["numpy", "torch", "pyarrow", "h5py", "nibabel", "pillow", "datasets", "diffusers", "monai"]
    out = {"python": platform.python_version(), "styleswap": __version__}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a dataset folder this tool wrote (the contract's rules, and ``tool``)."""
    return Manifest.read(folder).require_styleswap(Path(folder) / contract.MANIFEST_NAME)


def is_dataset_folder(source: Any) -> bool:
    """True when ``source`` (a build's source setting) names a folder with a manifest.json."""
    return isinstance(source, (str, Path)) and (Path(source) / contract.MANIFEST_NAME).is_file()


def iter_rows(folder: Path, columns=None, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Decoded rows of a dataset folder, shard by shard, in manifest order."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest.shards:
        if split is None or entry.split == split:
            yield from ShardReader(manifest.shard_path(folder, entry)).iter_rows(columns)


def source_slice(raw: dict[str, Any], split: str, decode: bool = True) -> SourceSlice:
    """An undecoded shard row (`ShardReader.read`) as a source slice; with ``decode=False`` a
    Parquet row keeps its images as PNG bytes only (`SourceSlice.decoded` decodes them)."""
    png = {k: raw[k] for k in ("image", "mask") if isinstance(raw.get(k), bytes)} or None
    lazy = not decode and png is not None and len(png) == 2
    r = {**raw, "image": None, "mask": None} if lazy else contract.decode_row(raw)
    return SourceSlice(sample_id=r["sample_id"], case_id=r["case_id"], slice_index=r["slice_index"],
                       modality=r["modality"], image=r["image"], mask=r["mask"], spacing=tuple(r["spacing"]),
                       split=split, png=png)


def iter_source_slices(folder: Path, manifest: Manifest | None = None,
                       select: Callable[[str, int], bool] | None = None, decode: bool = True) -> Iterator[SourceSlice]:
    """A dataset folder read back as source slices (to build copies from an ingested dataset).

    ``select(split, position_in_split) -> bool`` keeps only some rows; the others are skipped
    without decoding their images (a distributed rank reads only its share). ``decode=False``
    leaves the images of Parquet rows as PNG bytes, for the render workers to decode.
    """
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    position: dict[str, int] = {}
    for entry in manifest.shards:
        split = entry.split
        for raw in ShardReader(manifest.shard_path(folder, entry)).iter_rows(SOURCE_COLUMNS, decode=False):
            pos = position.get(split, 0)
            position[split] = pos + 1
            if select is not None and not select(split, pos):
                continue
            yield source_slice(raw, split, decode)


def read_source_slices(folder: Path, manifest: Manifest, split: str, start: int, stop: int) -> list[SourceSlice]:
    """Rows ``[start, stop)`` of ``split`` as `iter_source_slices` would yield them, reading only the
    shards (and row groups) that hold them."""
    out: list[SourceSlice] = []
    for entry, lo, hi in manifest.locate(split, start, stop):
        reader = ShardReader(manifest.shard_path(folder, entry))
        out.extend(source_slice(r, split) for r in reader.read(lo, hi, SOURCE_COLUMNS))
    if len(out) != stop - start:
        raise StyleSwapError(f"{folder}: expected rows {start}..{stop - 1} of {split}, the shards hold {len(out)}")
    return out


def verify(folder: Path) -> dict[str, Any]:
    """Re-read every shard: file present, sha256, row count and the ``qc_dice`` column as in the manifest.

    Raises `VerificationError` naming the first failing shard; returns a summary otherwise.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    total = 0
    for entry in manifest.shards:
        path = manifest.shard_path(folder, entry)
        if not path.is_file():
            raise VerificationError(f"{entry.path}: shard listed in the manifest is missing")
        digest = contract.sha256_file(path)
        if digest != entry.sha256:
            raise VerificationError(f"{entry.path}: sha256 {digest[:12]}... differs from the manifest's {str(entry.sha256)[:12]}...")
        try:
            reader = ShardReader(path)
        except Exception as e:  # a corrupt shard whose hash was also rewritten
            raise VerificationError(f"{entry.path}: unreadable shard ({e})") from None
        rows = reader.num_rows
        if rows != entry.num_rows:
            raise VerificationError(f"{entry.path}: {rows} rows, the manifest says {entry.num_rows}")
        if (contract.QC_COLUMN in reader.columns) != (manifest.qc is not None):
            has = contract.QC_COLUMN in reader.columns
            raise VerificationError(f"{entry.path}: {'has a' if has else 'lacks the'} {contract.QC_COLUMN} column, but the "
                                    f"manifest records {'no' if has else 'a'} content check")
        total += rows
    listed = {manifest.shard_path(folder, e) for e in manifest.shards}
    data = folder / contract.DATA_DIR
    strays = sorted(p.name for p in data.glob("*") if p.resolve() not in listed) if data.is_dir() else []
    if strays:
        raise VerificationError(f"{contract.DATA_DIR}/{strays[0]}: file not listed in the manifest")
    return {"shards": len(manifest.shards), "rows": total}
