"""Shard writers (Parquet, HDF5) for the dataset contract (the reader is `contract.reader`).

Writers stream rows into a *staging* folder under temporary names and never hold more than one
row group in memory. A shard is complete when its writer is closed and the file fsynced; only then
is it renamed (``.tmp`` -> final staging name), so a killed process never leaves a half-written file
under a shard's name. `finalize_shards` links complete shards to their Hub-native names
``data/<split>-00000-of-000NN.<ext>`` once the total is known (the HF datasets builder pattern).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.safe_state import fsync_path, kill_point

#: Rows per Parquet row group: small enough that a streaming reader holds little, large enough
#: that per-group overhead is negligible (a 192x192 row with 4 copies is ~100 KB of PNG).
ROW_GROUP_SIZE = contract.ROW_GROUP_SIZE


@dataclass
class Row:
    """One contract row. Images are arrays here; writers encode them as their format needs."""

    sample_id: str
    case_id: str
    slice_index: int
    modality: str
    image: np.ndarray
    mask: np.ndarray
    augmented: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    engine: str
    spacing: tuple[float, float, float]
    split: str = "train"
    #: per copy, the content check's Dice (`generator.qc`); None when no check ran (no column)
    qc_dice: list[float] | None = None
    # PNG bytes, filled by the renderer (in worker processes) when the format is Parquet, so that
    # encoding is parallel and the single writer only writes bytes.
    encoded: dict[str, Any] | None = field(default=None, repr=False)
    #: the source's PNG bytes of ``image`` and ``mask`` (`SourceSlice.png`), written as they are
    source_png: dict[str, bytes] | None = field(default=None, repr=False)

    def encode(self, keep_copies: bool = True) -> None:
        """Fill ``encoded``; ``keep_copies=False`` then drops the copies' arrays (a render worker
        sends the writer bytes, not two forms of the same pixels)."""
        png = self.source_png or {}
        self.encoded = {
            "image": png.get("image") or contract.encode_png(self.image),
            "mask": png.get("mask") or contract.encode_png(self.mask),
            "augmented": [contract.encode_png(a) for a in self.augmented],
        }
        if not keep_copies:
            self.augmented = []


class _ParquetShard:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = None  # opened with the first rows: they say whether the shard has qc_dice
        self.pending: list[Row] = []

    def _open(self, qc: bool) -> None:
        import pyarrow.parquet as pq

        self.qc = qc
        self.schema = contract.arrow_schema(qc=qc)
        self.writer = pq.ParquetWriter(self.path, self.schema, compression="none")

    def add(self, row: Row) -> None:
        self.pending.append(row)
        if len(self.pending) >= ROW_GROUP_SIZE:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.pending:
            return
        rows = self.pending
        if self.writer is None:
            self._open(rows[0].qc_dice is not None)
        for r in rows:
            if r.encoded is None:
                r.encode()
            if (r.qc_dice is not None) != self.qc:
                raise RuntimeError(f"{self.path.name}: row {r.sample_id} {'lacks' if self.qc else 'has'} qc_dice, "
                                   "unlike the shard's other rows")
        columns = {
            "sample_id": [r.sample_id for r in rows],
            "case_id": [r.case_id for r in rows],
            "slice_index": [int(r.slice_index) for r in rows],
            "modality": [r.modality for r in rows],
            "image": [{"bytes": r.encoded["image"], "path": None} for r in rows],
            "mask": [{"bytes": r.encoded["mask"], "path": None} for r in rows],
            "augmented": [[{"bytes": b, "path": None} for b in r.encoded["augmented"]] for r in rows],
            "prompts": [list(r.prompts) for r in rows],
            "seeds": [[int(s) for s in r.seeds] for r in rows],
            "engine": [r.engine for r in rows],
            "spacing": [[float(s) for s in r.spacing] for r in rows],
        }
        if self.qc:
            columns[contract.QC_COLUMN] = [[float(d) for d in r.qc_dice] for r in rows]
        table = pa.Table.from_pydict(columns, schema=self.schema)
        self.writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
        self.pending = []

    def close(self) -> None:
        self._flush()
        if self.writer is None:
            self._open(False)
        self.writer.close()
        fsync_path(self.path)


class _HDF5Shard:
    """Fixed-shape arrays, grown per row; ``track_times=False`` keeps the bytes reproducible."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        self.file = h5py.File(path, "w", libver="latest", track_order=False)
        self.n = 0
        self.ds: dict[str, Any] = {}

    def _create(self, row: Row) -> None:
        import h5py

        h, w = row.image.shape
        k = len(row.augmented)
        s = h5py.string_dtype("utf-8")
        spec = {
            "image": ((h, w), row.image.dtype),
            "mask": ((h, w), np.uint8),
            "augmented": ((k, h, w), row.augmented[0].dtype if k else row.image.dtype),
            "seeds": ((k,), np.int64),
            "prompts": ((k,), s),
            "spacing": ((3,), np.float32),
            "slice_index": ((), np.int32),
            "sample_id": ((), s),
            "case_id": ((), s),
            "modality": ((), s),
            "engine": ((), s),
        }
        if row.qc_dice is not None:
            spec[contract.QC_COLUMN] = ((k,), np.float32)
        for name, (shape, dtype) in spec.items():
            chunks = (min(ROW_GROUP_SIZE, 8) if len(shape) >= 2 else ROW_GROUP_SIZE, *shape)
            self.ds[name] = self.file.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=chunks if all(chunks) else None, track_times=False,
            )
        self.file.attrs["format_version"] = contract.format_version(spec)

    def add(self, row: Row) -> None:
        if not self.ds:
            self._create(row)
        i = self.n
        expected = self.ds["image"].shape[1:]
        if row.image.shape != expected or len(row.augmented) != self.ds["augmented"].shape[1]:
            raise StyleSwapError(
                f"{self.path.name}: HDF5 needs fixed shapes; row {row.sample_id} has image {row.image.shape} "
                f"and {len(row.augmented)} copies, the shard has {expected} and {self.ds['augmented'].shape[1]}"
            )
        for d in self.ds.values():
            d.resize(i + 1, axis=0)
        values = {
            "image": row.image, "mask": row.mask, "seeds": np.asarray(row.seeds, np.int64),
            "prompts": list(row.prompts), "spacing": np.asarray(row.spacing, np.float32),
            "slice_index": int(row.slice_index), "sample_id": row.sample_id, "case_id": row.case_id,
            "modality": row.modality, "engine": row.engine,
        }
        if row.augmented:
            values["augmented"] = np.stack(row.augmented)
        if (row.qc_dice is not None) != (contract.QC_COLUMN in self.ds):
            raise RuntimeError(f"{self.path.name}: row {row.sample_id} and the shard's first row differ in having qc_dice")
        if row.qc_dice is not None:
            values[contract.QC_COLUMN] = np.asarray(row.qc_dice, np.float32)
        for name, v in values.items():
            self.ds[name][i] = v
        self.n += 1

    def close(self) -> None:
        self.file.close()
        fsync_path(self.path)


class ShardWriter:
    """Splits a stream of rows of one split into shards of ``rows_per_shard`` rows in ``staging``."""

    def __init__(self, staging: Path, split: str, fmt: str, rows_per_shard: int, first_index: int = 0) -> None:
        if fmt not in contract.FORMATS:
            raise StyleSwapError(f"--format must be one of {', '.join(contract.FORMATS)}, got {fmt!r}")
        if rows_per_shard < 1:
            raise StyleSwapError(f"--rows-per-shard must be at least 1, got {rows_per_shard}")
        self.staging, self.split, self.fmt, self.rows_per_shard = staging, split, fmt, rows_per_shard
        self.first_index = first_index  # a distributed rank starts at the global index of its shard
        self.done: list[tuple[Path, int]] = []  # complete shards in staging and their row counts
        self._shard = None
        self._rows = 0

    def _open(self) -> None:
        index = self.first_index + len(self.done)
        tmp = self.staging / f"{self.split}-{index:05d}{contract.SHARD_SUFFIX[self.fmt]}.tmp"
        self._shard = _ParquetShard(tmp) if self.fmt == "parquet" else _HDF5Shard(tmp)
        self._rows = 0

    def add(self, row: Row) -> None:
        if self._shard is None:
            self._open()
        self._shard.add(row)
        self._rows += 1
        kill_point("rows")
        if self._rows >= self.rows_per_shard:
            self._close_current()

    def _close_current(self) -> None:
        if self._shard is None:
            return
        self._shard.close()
        kill_point("shard-close")
        final = self._shard.path.with_suffix("")  # drop .tmp: the shard is complete
        os.replace(self._shard.path, final)
        fsync_path(self.staging)
        self.done.append((final, self._rows))
        self._shard = None

    def close(self) -> list[tuple[Path, int]]:
        self._close_current()
        return self.done


def finalize_shards(out: Path, writers: Sequence[ShardWriter], sha256: Mapping[Path, str] | None = None
                    ) -> list[contract.ShardEntry]:
    """Link complete staged shards to ``out/data/<split>-i-of-N.<ext>``; return manifest entries.

    ``sha256``: the hashes already known (a build's receipts), by staged path: the link is the same
    file, so it is not read again at the end of the build, where nothing else overlaps with it.

    Hard links, not moves: until manifest.json is written the staging folder keeps every finished
    shard, so a build killed here resumes without rendering any again. (On a filesystem without
    hard links they are moved, and such a resume renders the moved ones again.)
    """
    data = out / contract.DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    entries = []
    for w in writers:
        total = len(w.done)
        for i, (path, rows) in enumerate(w.done):
            name = contract.shard_name(w.split, i, total, w.fmt)
            target = data / name
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                os.replace(path, target)
            kill_point("finalize")
            entries.append(contract.ShardEntry(path=f"{contract.DATA_DIR}/{name}", split=w.split, num_rows=rows,
                                               bytes=target.stat().st_size,
                                               sha256=(sha256 or {}).get(path) or contract.sha256_file(target)))
    fsync_path(data)
    return entries
