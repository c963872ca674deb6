"""`augment preview`: pick a few slices of a dataset folder and draw them as a grid."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from styleswap.contract import Manifest, ShardReader

#: Previews sample from the first shards only, so a preview of a huge dataset stays instant.
PREVIEW_SHARDS = 2


def sample_rows(folder: Path, manifest: Manifest, rows: int, seed: int) -> list[dict[str, Any]]:
    """A reservoir sample of ``rows`` rows, preferring slices with foreground, in dataset order."""
    rng = random.Random(seed)
    pool: list[tuple[int, dict[str, Any]]] = []
    empty: list[tuple[int, dict[str, Any]]] = []
    seen = 0
    for entry in manifest.shards[:PREVIEW_SHARDS]:
        for rec in ShardReader(manifest.shard_path(folder, entry)).iter_rows():
            target = pool if rec["mask"].any() else empty
            if len(target) < rows:
                target.append((seen, rec))
            else:
                j = rng.randrange(seen + 1)
                if j < rows:
                    target[j] = (seen, rec)
            seen += 1
    picked = sorted(pool + empty[: max(0, rows - len(pool))], key=lambda t: t[0])
    return [rec for _, rec in picked[:rows]]


def write_preview(folder: Path, manifest: Manifest, out_png: Path, rows: int = 6, seed: int = 0) -> Path:
    from styleswap.generator.preview import make_preview_grid

    picked = sample_rows(Path(folder), manifest, rows, seed)
    engine = manifest.engine.name if manifest.engine else "?"
    title = f"{Path(folder).name}: engine {engine}, {manifest.copies} copies per slice"
    return make_preview_grid(picked, manifest.labels, out_png, title=title)
