"""A model's preprocessing of a whole scan, forward, and the exact inverse of its prediction.

Forward (the steps of `augment ingest`, in its code, `intensity` and `geometry`): reorient to RAS+
(a view), normalize intensities with the volume's range, take axial display slices, pad them to a
square, resize to ``size``, store as 8-bit (``round(x * 255)``, what a dataset holds) and read back
to [0, 1] as the trainer does; with ``input_norm="zscore"`` subtract the normalized volume's mean
and divide by its standard deviation (`intensity.volume_stats`).

Inverse (`PreparedScan.write_back`): per-class scores at ``size`` x ``size`` are resized back to
the padded square, the padding is cut off, the display transform is undone and the result is
written through the RAS+ view into an array in the scan's own voxel order. Shape, affine and voxel
grid of the output are therefore the scan's, by construction.

The forward never holds more than one float copy of a chunk of slices: the scan's voxels stay in
their stored dtype, the intensity range is computed once on the whole volume, and everything else
happens ``chunk`` slices at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch

from styleswap.contract import from_unit_float, to_unit_float
from styleswap.errors import StyleSwapError
from styleswap.volumes import geometry, intensity

#: Recorded in a model's config.json: which code prepares its input, and which version of it.
NAME = "styleswap.volumes.preprocess"
VERSION = 1
INPUT_NORMS = intensity.INPUT_NORMS


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from a volume. ``modality`` is the training data's: the default
    for a scan whose modality nothing else tells."""

    size: int
    intensity: str = "percentile"
    input_norm: str = "unit"
    modality: str | None = None

    def __post_init__(self) -> None:
        if self.intensity not in intensity.RULES:
            raise StyleSwapError(f"preprocessing: unknown intensity rule {self.intensity!r} (known: {', '.join(intensity.RULES)})")
        if self.input_norm not in INPUT_NORMS:
            raise StyleSwapError(f"preprocessing: unknown input_norm {self.input_norm!r} (known: {', '.join(INPUT_NORMS)})")
        if not isinstance(self.size, int) or self.size < 8:
            raise StyleSwapError(f"preprocessing: size must be an integer >= 8, got {self.size!r}")

    def to_config(self) -> dict[str, Any]:
        return {"name": NAME, "version": VERSION, **asdict(self), "orientation": dict(geometry.ORIENTATION),
                "geometry": "padded to square (centered), resized: image bilinear (antialiased), mask nearest",
                "pixels": "stored as round(x * 255) (8-bit), read back as x / 255"}

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> "Preprocessing":
        """From a model's config.json; a model saved before preprocessing was recorded gets the only
        rule there was then (percentile, ``image_size``)."""
        pre = config.get("preprocessing")
        norm = str(config.get("input_norm", (pre or {}).get("input_norm", "unit")))
        if pre is None:
            size = config.get("image_size") or [0]
            return cls(size=int(size[0]), input_norm=norm)
        if not isinstance(pre, dict) or pre.get("name") != NAME or int(pre.get("version", 0)) > VERSION:
            raise StyleSwapError(f"{where}: preprocessing {pre.get('name') if isinstance(pre, dict) else pre!r} "
                                 f"(version {pre.get('version') if isinstance(pre, dict) else '?'}) is not one this StyleSwap knows ({NAME} v{VERSION})")
        return cls(size=int(pre["size"]), intensity=str(pre.get("intensity", "percentile")), input_norm=norm,
                   modality=pre.get("modality"))


class PreparedScan:
    """One scan, ready to be fed to a 2D network slice chunk by slice chunk and written back.

    ``voxels``: the stored (X, Y, Z) array (any numeric dtype, finite); ``affine``: its 4 x 4.
    """

    def __init__(self, voxels: np.ndarray, affine: np.ndarray, spec: Preprocessing, modality: str, chunk: int = 16) -> None:
        if voxels.ndim != 3:
            raise StyleSwapError(f"expected a 3D volume, got shape {voxels.shape}")
        self.spec, self.modality, self.chunk = spec, modality, max(1, int(chunk))
        self.shape = tuple(int(n) for n in voxels.shape)
        self.ornt = geometry.canonical_orientation(affine)
        self.canon = geometry.to_canonical(voxels, self.ornt)  # (X, Y, Z) RAS+ view
        self.nx, self.ny, self.nz = self.canon.shape
        self.side = max(self.nx, self.ny)  # the padded square (display rows follow Y, columns X)
        self.lo, self.hi, self.normalization = intensity.intensity_range(voxels, modality, rule=spec.intensity)
        self.fill = float(intensity.apply_range(np.array([voxels.min()]), self.lo, self.hi)[0])
        self.stats: dict[str, float] | None = None
        if spec.input_norm == "zscore":
            self.stats = intensity.chunked_volume_stats(
                intensity.apply_range(self.canon[:, :, k : k + self.chunk], self.lo, self.hi) for k in range(0, self.nz, self.chunk)
            )

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(k0, k1)`` ranges of axial slices, ``chunk`` at a time, inferior to superior."""
        for k0 in range(0, self.nz, self.chunk):
            yield k0, min(k0 + self.chunk, self.nz)

    def display_image(self, k0: int, k1: int) -> np.ndarray:
        """(n, rows, cols) normalized display slices in [0, 1] (unresized), for overviews."""
        return intensity.apply_range(geometry.display_slices(self.canon, slice(k0, k1)), self.lo, self.hi)

    def network_input(self, k0: int, k1: int) -> torch.Tensor:
        """(n, 1, size, size) float32: slices ``k0..k1-1`` exactly as the model saw its training data."""
        images = geometry.resize_images(geometry.pad_to_square(self.display_image(k0, k1), self.fill), self.spec.size)
        x = to_unit_float(from_unit_float(images))
        if self.stats is not None:
            x = (x - np.float32(self.stats["mean"])) / np.float32(max(self.stats["std"], intensity.ZSCORE_MIN_STD))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]

    def scores_on_grid(self, scores: torch.Tensor) -> torch.Tensor:
        """(n, C, size, size) per-class scores -> (n, C, rows, cols) on the scan's display grid."""
        if scores.ndim != 4 or scores.shape[-1] != self.spec.size or scores.shape[-2] != self.spec.size:
            raise StyleSwapError(f"scores of shape {tuple(scores.shape)} do not match size {self.spec.size}")
        return geometry.crop_square(geometry.resize_back(scores.float(), self.side), self.ny, self.nx)

    def write_back(self, k0: int, k1: int, scores: torch.Tensor, labels: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """Write slices ``k0..k1-1``: the argmax of ``scores`` (n, C, size, size) into ``labels`` (the
        scan's shape, stored order); with ``probs`` (shape + (C,), uint8), the scores (probabilities
        in [0, 1]) as round(p * 255). Returns the (n, rows, cols) display labels written."""
        grid = self.scores_on_grid(scores)
        shown = argmax_classes(grid).numpy()  # (n, rows, cols)
        geometry.to_canonical(labels, self.ornt)[:, :, k0:k1] = geometry.from_display(shown)
        if probs is not None:
            q = from_unit_float(grid.clamp(0, 1).numpy())  # (n, C, rows, cols)
            for c in range(q.shape[1]):
                geometry.to_canonical(probs[..., c], self.ornt)[:, :, k0:k1] = geometry.from_display(q[:, c])
        return shown


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=1)`` as uint8 (the first class wins ties, as argmax does), by a running
    maximum over the classes: 3 to 4 times faster than ``argmax`` on a cropped (strided) tensor."""
    best = scores[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, scores.shape[1]):
        labels.masked_fill_(scores[:, c] > best, c)
        torch.maximum(best, scores[:, c], out=best)
    return labels
