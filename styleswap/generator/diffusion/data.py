"""Training data for the diffusion stages: a dataset folder's Parquet shards (the contract).

Images go in as 3 identical channels scaled to [-1, 1] (what an SD VAE expects), resized to the
model resolution with antialiased bilinear; masks are resized nearest-neighbour and turned into
the conditioning image of `conditioning.encode_mask`. Slices are held in memory as decoded arrays
(source datasets for tuning are small: hundreds to a few thousand slices).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from styleswap import contract
from styleswap.contract import Manifest, ShardReader
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


def _manifest(data_dir: Path) -> Manifest:
    return Manifest.read(data_dir).require_styleswap(Path(data_dir) / contract.MANIFEST_NAME)


def shard_files(data_dir: Path, manifest: Manifest | None = None) -> list[Path]:
    """The Parquet shards of a dataset folder, as its manifest lists them."""
    data_dir = Path(data_dir)
    manifest = manifest or _manifest(data_dir)
    if manifest.format != "parquet":
        raise StyleSwapError(f"{data_dir}: diffusion training reads Parquet datasets; "
                             f"run `augment convert {data_dir} --to parquet --out DIR` first")
    files = [manifest.shard_path(data_dir, e) for e in manifest.shards]
    if not files:
        raise StyleSwapError(f"{data_dir}: the manifest lists no shards")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StyleSwapError(f"{data_dir}: shard listed in manifest.json is missing: {missing[0]}")
    return files


def data_hash(data_dir: Path, manifest: Manifest | None = None) -> str:
    """sha256 over the manifest's per-shard sha256s (or the shard bytes when not listed)."""
    data_dir = Path(data_dir)
    manifest = manifest or _manifest(data_dir)
    digests = [e.sha256 for e in manifest.shards if e.sha256]
    if not digests:
        digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in shard_files(data_dir, manifest)]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def load_slices(data_dir: str | Path, limit: int | None = None) -> SliceSet:
    """Decode all (or the first ``limit``) source slices of a dataset folder, in shard order."""
    data_dir = Path(data_dir)
    manifest = _manifest(data_dir)
    ids, mods, images, masks = [], [], [], []
    for f in shard_files(data_dir, manifest):
        for row in ShardReader(f).iter_rows(["sample_id", "modality", "image", "mask"]):
            ids.append(row["sample_id"])
            mods.append(row["modality"] or "CT")
            images.append(contract.to_unit_float(row["image"]))
            masks.append(row["mask"].astype(np.uint8))
            if limit and len(ids) >= limit:
                break
        if limit and len(ids) >= limit:
            break
    if not ids:
        raise StyleSwapError(f"{data_dir} holds no slices")
    return SliceSet(ids, mods, images, masks, data_hash(data_dir, manifest), dict(manifest.labels))
