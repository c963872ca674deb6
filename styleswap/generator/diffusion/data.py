"""Training data for the diffusion stages: a dataset folder's Parquet shards (the contract).

Images go in as 3 identical channels scaled to [-1, 1] (what an SD VAE expects), resized to the
model resolution with antialiased bilinear; masks are resized nearest-neighbour and turned into
the conditioning image of `conditioning.encode_mask`. Slices are held in memory as decoded arrays
(source datasets for tuning are small: hundreds to a few thousand slices).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from styleswap import contract
from styleswap.errors import StyleSwapError

from .conditioning import encode_mask, resize_image


@dataclass
class SliceSet:
    sample_ids: list[str]
    modalities: list[str]
    images: list[np.ndarray]  # float32 (H, W) in [0, 1]
    masks: list[np.ndarray]  # uint8 (H, W)
    data_hash: str
    labels: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def modality(self) -> str:
        """The most common source modality (instance prompts use each row's own)."""
        return Counter(self.modalities).most_common(1)[0][0]

    def image_tensor(self, i: int, resolution: int) -> torch.Tensor:
        """(3, R, R) float32 in [-1, 1]."""
        t = resize_image(self.images[i], resolution).clamp(0, 1)
        return (t * 2 - 1).expand(3, -1, -1).contiguous()

    def cond_tensor(self, i: int, resolution: int, encoding: str = "mask") -> torch.Tensor:
        """(3, R, R) float32 in [0, 1]: the conditioning image of slice ``i``."""
        return encode_mask(self.masks[i], resolution, encoding, image=self.images[i])


def shard_files(data_dir: Path) -> list[Path]:
    """The Parquet shards of a dataset folder, as its manifest lists them."""
    from styleswap.generator import dataset

    data_dir = Path(data_dir)
    manifest = dataset.read_manifest(data_dir)
    if manifest.get("format", "parquet") != "parquet":
        raise StyleSwapError(f"{data_dir}: diffusion training reads Parquet datasets; "
                             f"run `augment convert {data_dir} --to parquet --out DIR` first")
    files = [dataset.shard_path(data_dir, e) for e in manifest["shards"]]
    if not files:
        raise StyleSwapError(f"{data_dir}: the manifest lists no shards")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StyleSwapError(f"{data_dir}: shard listed in manifest.json is missing: {missing[0]}")
    return files


def data_hash(data_dir: Path) -> str:
    """sha256 over the manifest's per-shard sha256s (or the shard bytes when not listed)."""
    data_dir = Path(data_dir)
    manifest = data_dir / contract.MANIFEST_NAME
    digests: list[str] = []
    if manifest.is_file():
        for entry in json.loads(manifest.read_text()).get("shards", []):
            if isinstance(entry, dict) and entry.get("sha256"):
                digests.append(str(entry["sha256"]))
    if not digests:
        for f in shard_files(data_dir):
            digests.append(hashlib.sha256(f.read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def load_slices(data_dir: str | Path, limit: int | None = None) -> SliceSet:
    """Decode all (or the first ``limit``) source slices of a dataset folder, in shard order."""
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    ids, mods, images, masks = [], [], [], []
    for f in shard_files(data_dir):
        table = pq.read_table(f, columns=["sample_id", "modality", "image", "mask"])
        cols = {c: table.column(c).to_pylist() for c in table.column_names}
        for sid, mod, img, msk in zip(cols["sample_id"], cols["modality"], cols["image"], cols["mask"]):
            img_b = img["bytes"] if isinstance(img, dict) else img
            msk_b = msk["bytes"] if isinstance(msk, dict) else msk
            ids.append(sid)
            mods.append(mod or "CT")
            images.append(contract.to_unit_float(contract.decode_png(img_b)))
            masks.append(contract.decode_png(msk_b).astype(np.uint8))
            if limit and len(ids) >= limit:
                break
        if limit and len(ids) >= limit:
            break
    if not ids:
        raise StyleSwapError(f"{data_dir} holds no slices")
    labels = {}
    manifest = data_dir / contract.MANIFEST_NAME
    if manifest.is_file():
        labels = json.loads(manifest.read_text()).get("labels", {}) or {}
    return SliceSet(ids, mods, images, masks, data_hash(data_dir), labels)
