"""Tiny contract-format dataset folders written with pyarrow / h5py directly.

Independent of the generator's writer on purpose: the trainer must read the *format*, so its tests
write the format by hand. Images are synthetic shapes: label 1 a disk, label 2 a square; the
"style" copies remap intensities (inversion, gamma) and add noise, so appearance changes and
anatomy does not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from styleswap import contract

SHAPE_LABELS = {"background": 0, "disk": 1, "square": 2}


def synthetic_slice(rng: np.random.Generator, size: int, with_square: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], mask uint8) of a disk and (optionally) a square."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.15, 0.22) * size
    cy, cx = rng.uniform(0.3, 0.4) * size, rng.uniform(0.3, 0.7) * size
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    if with_square:
        h = int(rng.uniform(0.12, 0.18) * size)
        y0, x0 = int(rng.uniform(0.62, 0.7) * size), int(rng.uniform(0.2, 0.6) * size)
        mask[y0 : y0 + h, x0 : x0 + h] = 2
    image = np.where(mask == 1, 0.8, np.where(mask == 2, 0.5, 0.15)).astype(np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), mask


def style_copy(image: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    out = 1.0 - image if k % 2 == 0 else image ** rng.uniform(0.4, 2.5)
    return np.clip(out + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


def make_rows(n_cases: int, slices: int, size: int, copies: int, seed: int = 0, case_prefix: str = "case") -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        case = f"{case_prefix}{c:02d}"
        for s in range(slices):
            image, mask = synthetic_slice(rng, size, with_square=(s % 3 != 0))
            augmented = [style_copy(image, k, rng) for k in range(copies)]
            rows.append(
                {
                    "sample_id": contract.sample_id(case, s),
                    "case_id": case,
                    "slice_index": s,
                    "modality": "SYN",
                    "image": contract.from_unit_float(image),
                    "mask": mask,
                    "augmented": [contract.from_unit_float(a) for a in augmented],
                    "prompts": [f"style {k}" for k in range(copies)],
                    "seeds": [int(seed * 1000 + c * 100 + s * 10 + k) for k in range(copies)],
                    "engine": "synthetic",
                    "spacing": [1.5, 1.5, 3.0],
                }
            )
    return rows


def _png(a: np.ndarray) -> dict:
    return {"bytes": contract.encode_png(a), "path": None}


def write_parquet(path: Path, rows: list[dict], rows_per_group: int, drop_column: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the contract's own Parquet schema; with the optional qc_dice column when the rows carry it
    schema = contract.hf_features(qc=bool(rows) and contract.QC_COLUMN in rows[0]).arrow_schema
    if drop_column:
        schema = schema.remove(schema.get_field_index(drop_column))
    fields = [(f.name, f.type) for f in schema]
    data = {}
    for name, _ in fields:
        if name in ("image", "mask"):
            data[name] = [_png(r[name]) for r in rows]
        elif name == "augmented":
            data[name] = [[_png(a) for a in r[name]] for r in rows]
        else:
            data[name] = [r[name] for r in rows]
    table = pa.table(data, schema=schema)
    pq.write_table(table, path, row_group_size=max(1, rows_per_group))


def write_h5(path: Path, rows: list[dict], size: int, copies: int) -> None:
    import h5py

    n = len(rows)
    s = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f["image"] = np.stack([r["image"] for r in rows]) if n else np.zeros((0, size, size), np.uint8)
        f["mask"] = np.stack([r["mask"] for r in rows]) if n else np.zeros((0, size, size), np.uint8)
        aug = np.zeros((n, copies, size, size), np.uint8)
        for i, r in enumerate(rows):
            for k, a in enumerate(r["augmented"]):
                aug[i, k] = a
        f["augmented"] = aug
        f["seeds"] = np.array([r["seeds"] for r in rows], np.int64).reshape(n, copies)
        f["spacing"] = np.array([r["spacing"] for r in rows], np.float32).reshape(n, 3)
        f["slice_index"] = np.array([r["slice_index"] for r in rows], np.int32)
        if rows and contract.QC_COLUMN in rows[0]:
            f[contract.QC_COLUMN] = np.array([r[contract.QC_COLUMN] for r in rows], np.float32).reshape(n, copies)
        for key in ("sample_id", "case_id", "modality", "engine"):
            f.create_dataset(key, data=[r[key] for r in rows], dtype=s)
        f.create_dataset("prompts", data=np.array([r["prompts"] for r in rows], dtype=object).reshape(n, copies), dtype=s)


def write_dataset(
    root: str | Path,
    *,
    n_cases: int = 3,
    slices: int = 6,
    size: int = 32,
    copies: int = 2,
    fmt: str = "parquet",
    num_shards: int = 2,
    rows_per_group: int = 4,
    split: str = "train",
    labels: dict[str, int] | None = None,
    drop_column: str | None = None,
    bad_label: int | None = None,
    seed: int = 0,
    case_prefix: str = "case",
    rows: list[dict] | None = None,
    volume_stats: bool = False,
) -> Path:
    """Write a dataset folder; returns its path.

    ``bad_label`` writes that id into one mask pixel of the last row; ``n_cases=0`` writes an
    empty dataset (one shard with no rows). ``volume_stats`` records each case's mean and std (of
    its stored slices) in the manifest, as ingest does for whole volumes.
    """
    root = Path(root)
    (root / contract.DATA_DIR).mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = make_rows(n_cases, slices, size, copies, seed, case_prefix)
    if bad_label is not None and rows:
        rows[-1]["mask"] = rows[-1]["mask"].copy()
        rows[-1]["mask"][0, 0] = bad_label
    num_shards = max(1, min(num_shards, len(rows))) if rows else 1
    shards = []
    for i in range(num_shards):
        part = rows[i::num_shards]
        name = contract.shard_name(split, i, num_shards, fmt)
        path = root / contract.DATA_DIR / name
        if fmt == "parquet":
            write_parquet(path, part, rows_per_group, drop_column)
        else:
            write_h5(path, part, size, copies)
        shards.append(
            {
                "path": f"{contract.DATA_DIR}/{name}",
                "split": split,
                "num_rows": len(part),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
    manifest = {
        "format_version": contract.FORMAT_VERSION,
        "format": fmt,
        "labels": labels or SHAPE_LABELS,
        "shards": shards,
        "engine": "synthetic",
        "size": size,
    }
    if volume_stats:
        by_case: dict[str, list] = {}
        for r in rows:
            by_case.setdefault(r["case_id"], []).append(contract.to_unit_float(r["image"]))
        manifest["volume_stats"] = {c: {"mean": float(np.mean(v)), "std": float(np.std(v))} for c, v in by_case.items()}
    (root / contract.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return root
