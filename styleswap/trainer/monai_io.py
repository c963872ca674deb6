"""Dataset folders as MONAI-style lists of dicts, for users who want MONAI transforms.

    from monai.data import Dataset
    from styleswap.trainer.monai_io import to_monai_dicts
    ds = Dataset(to_monai_dicts("out/demo"), transform=...)

Each dict: ``image`` (1, H, W) float32 in [0, 1], ``label`` (1, H, W) uint8 label ids,
``augmented`` (K, H, W) float32 (the style copies, K may be 0), ``sample_id``, ``case_id``,
``slice_index``, ``spacing`` (3,) float32. Channel-first, as MONAI's array transforms expect.
Everything is decoded in memory: meant for small datasets; stream big ones with `SliceStream`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from styleswap import contract
from styleswap.trainer.data import _decode, _read_unit, open_dataset


def to_monai_dicts(folder: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a dataset folder (or ``hf://USER/NAME``) as a list of MONAI-ready dicts, in shard order."""
    info = open_dataset(folder, split=split)
    h, w = info.image_size
    out = []
    for shard in info.shards:
        for unit in shard.units:
            for row in _read_unit(shard, unit):
                copies = [contract.to_unit_float(_decode(a)) for a in row["augmented"]]
                out.append(
                    {
                        "image": contract.to_unit_float(_decode(row["image"]))[None],
                        "label": _decode(row["mask"]).astype(np.uint8)[None],
                        "augmented": np.stack(copies) if copies else np.zeros((0, h, w), np.float32),
                        "sample_id": row["sample_id"],
                        "case_id": row["case_id"],
                        "slice_index": row["slice_index"],
                        "spacing": np.asarray(row["spacing"], np.float32),
                    }
                )
    return out
