"""The one shard-row reader: Parquet and HDF5 shards of the contract, read in units of rows.

Both halves read shards here: the trainer one unit at a time (shuffled, streamed), the generator
whole shards (verify, convert, preview, building on an ingested dataset) and row ranges (Ray
actors). A *unit* is a Parquet row group or a block of `ROW_GROUP_SIZE` rows of an HDF5 shard, so
both formats are read in the same units and shuffle the same way.

A *raw* row holds each column as plain Python values, except the images: ``image`` and ``mask`` are
PNG bytes (Parquet) or 2D arrays (HDF5), ``augmented`` a list of those. `decode_row` turns them into
arrays; readers that skip most rows decode only what they keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from styleswap.contract.schema import COLUMNS, OPTIONAL_COLUMNS, ROW_GROUP_SIZE, decode_png
from styleswap.errors import StyleSwapError

#: ``(start, stop, row_group)``: a unit's rows; ``row_group`` is -1 for HDF5 blocks.
Unit = tuple[int, int, int]
_IMAGES = ("image", "mask")


class ShardReader:
    """One shard file. Opening reads metadata only (row count, units, column names)."""

    def __init__(self, path: str | Path, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = fmt or ("parquet" if self.path.suffix == ".parquet" else "hdf5")
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(self.path)
            except Exception as e:  # noqa: BLE001 - any pyarrow failure means the same to the user
                raise StyleSwapError(f"{self.path}: not a readable Parquet shard ({e.__class__.__name__})") from None
            md, units, start = pf.metadata, [], 0
            for i in range(md.num_row_groups):
                n = md.row_group(i).num_rows
                units.append((start, start + n, i))
                start += n
            self.num_rows = md.num_rows
            self.columns = list(pf.schema_arrow.names)
            self.units: tuple[Unit, ...] = tuple(u for u in units if u[1] > u[0])
            return
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                self.columns = list(f.keys())
                key = "sample_id" if "sample_id" in f else "image"
                self.num_rows = int(f[key].shape[0]) if key in f else 0
        except OSError as e:
            raise StyleSwapError(f"{self.path}: not a readable HDF5 shard ({e})") from None
        n = self.num_rows
        self.units = tuple((s, min(s + ROW_GROUP_SIZE, n), -1) for s in range(0, n, ROW_GROUP_SIZE))

    def read_unit(self, unit: Unit, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The raw rows of one unit."""
        return read_unit(self.path, self.format, unit, columns)

    def read(self, start: int, stop: int, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Raw rows ``[start, stop)``, reading only the units that hold them."""
        out: list[dict[str, Any]] = []
        for unit in self.units:
            if unit[0] < stop and unit[1] > start:
                rows = self.read_unit(unit, columns)
                out.extend(rows[max(start - unit[0], 0) : min(stop, unit[1]) - unit[0]])
        return out

    def iter_rows(self, columns: Sequence[str] | None = None, decode: bool = True) -> Iterator[dict[str, Any]]:
        """Every row, one unit in memory at a time; images decoded unless ``decode=False``."""
        for unit in self.units:
            for row in self.read_unit(unit, columns):
                yield decode_row(row) if decode else row


def read_unit(path: Path, fmt: str, unit: Unit, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The raw rows of one unit of a shard (a unit of `ShardReader.units`), metadata unread.

    ``columns=None`` reads the contract's columns and the optional ones the shard holds."""
    start, stop, group = unit
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        cols = list(columns or _present(pf.schema_arrow.names))
        table = pf.read_row_group(group, columns=cols)
        return _parquet_rows({c: table.column(c).to_pylist() for c in cols}, table.num_rows, Path(path))
    import h5py

    with h5py.File(path, "r") as f:
        cols = list(columns or _present(f.keys()))
        block = {c: f[c][start:stop] for c in cols}
    return [{c: _h5_value(c, block[c][j]) for c in cols} for j in range(stop - start)]


def _present(names) -> list[str]:
    names = set(names)
    return [*COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in names)]


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A raw row with its PNG images decoded to arrays (arrays from HDF5 are kept), in place."""
    for key in _IMAGES:
        if key in row:
            row[key] = decode_image(row[key])
    if "augmented" in row:
        row["augmented"] = [decode_image(a) for a in row["augmented"]]
    return row


def decode_image(value: bytes | np.ndarray) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else decode_png(value)


def count_rows(path: str | Path) -> int:
    """Rows as the shard itself stores them (Parquet footer, HDF5 dataset length)."""
    return ShardReader(path).num_rows


def _struct_bytes(value: Any, path: Path) -> bytes:
    # datasets `Image` columns are structs {bytes, path}; accept raw bytes too
    if isinstance(value, dict):
        if value.get("bytes") is None:
            raise StyleSwapError(f"{path}: image stored by path only ({value.get('path')!r}); "
                                 "the contract embeds bytes")
        return value["bytes"]
    return value


def _parquet_rows(cols: dict[str, list], n: int, path: Path) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row = {}
        for c, values in cols.items():
            v = values[i]
            if c in _IMAGES:
                v = _struct_bytes(v, path)
            elif c == "augmented":
                v = [_struct_bytes(a, path) for a in (v or [])]
            elif c == "slice_index":
                v = int(v)
            row[c] = v
        rows.append(row)
    return rows


def _h5_value(column: str, v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if column == "prompts":
        return [p.decode() if isinstance(p, bytes) else p for p in v]
    if column == "augmented":
        return list(v)
    if column in ("seeds", "spacing", "qc_dice"):
        return v.tolist()
    if column == "slice_index":
        return int(v)
    return v
