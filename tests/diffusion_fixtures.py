"""A tiny source dataset folder (Parquet + manifest.json) written with pyarrow, for diffusion tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from styleswap import contract


def synthetic_slice(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like slice (uint8) and its label map with liver, kidneys and spleen blobs."""
    yy, xx = np.mgrid[:size, :size] / size
    body = ((yy - 0.5) ** 2 / 0.16 + (xx - 0.5) ** 2 / 0.2) < 1
    mask = np.zeros((size, size), np.uint8)
    cx, cy = rng.uniform(-0.05, 0.05, 2)
    organs = [(1, 0.45 + cy, 0.35 + cx, 0.02), (2, 0.6, 0.3, 0.006), (3, 0.6, 0.7, 0.006), (4, 0.4, 0.7, 0.008)]
    for label, y0, x0, r2 in organs:
        mask[((yy - y0) ** 2 + (xx - x0) ** 2) < r2] = label
    image = np.where(body, 0.35, 0.0) + 0.25 * (mask > 0) + 0.1 * (mask == 1)
    image = image + rng.normal(0, 0.02, image.shape)
    return contract.from_unit_float(np.clip(image, 0, 1)), mask


def write_dataset(folder: Path, n: int = 4, size: int = 48, modality: str = "CT", seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    (folder / contract.DATA_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = {c: [] for c in contract.COLUMNS}
    for i in range(n):
        img, msk = synthetic_slice(rng, size)
        case = f"case{i // 2:02d}"
        rows["sample_id"].append(contract.sample_id(case, i % 2))
        rows["case_id"].append(case)
        rows["slice_index"].append(i % 2)
        rows["modality"].append(modality)
        rows["image"].append({"bytes": contract.encode_png(img), "path": None})
        rows["mask"].append({"bytes": contract.encode_png(msk), "path": None})
        rows["augmented"].append([])
        rows["prompts"].append([])
        rows["seeds"].append([])
        rows["engine"].append("none")
        rows["spacing"].append([1.0, 1.0, 3.0])
    schema = contract.hf_features().arrow_schema  # the contract's own Parquet schema
    table = pa.table(rows, schema=schema)
    name = f"{contract.DATA_DIR}/{contract.shard_name('train', 0, 1, 'parquet')}"
    pq.write_table(table, folder / name)
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    manifest = {
        "tool": "styleswap",
        "format_version": contract.FORMAT_VERSION,
        "format": "parquet",
        "labels": dict(contract.DEFAULT_LABELS),
        "shards": [{"path": name, "split": "train", "num_rows": n, "sha256": digest}],
    }
    (folder / contract.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return folder
