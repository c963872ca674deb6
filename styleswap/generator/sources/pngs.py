"""A folder of PNG slices (``images/``) with PNG masks of the same names (``masks/``).

``<case>_<digits>.png`` gives the case id and the slice index; any other name is its own case,
slice 0. PNGs carry no geometry: slices are taken as already displayed the way the user wants
(no reorientation), spacing is unknown and recorded as 1 mm. 8-bit images keep their grey levels
(x / 255); 16-bit or float images are scaled per case to their 0.5..99.5 percentiles. RGB images are
converted to grayscale; RGB masks are refused (a colour is not a label id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from styleswap.errors import StyleSwapError
from styleswap.generator.sources.base import SourceSlice
from styleswap.volumes.intensity import normalize_intensity, volume_stats
from styleswap.generator.sources.slicing import emit_slices, select_slices
from styleswap.volumes.io import LabelMap, check_memory

UNKNOWN_SPACING = (1.0, 1.0, 1.0)
RULE = "8-bit images as stored (x / 255); 16-bit/float images: per-case percentiles 0.5..99.5"


def _open(path: Path) -> Image.Image:
    """The decoded PNG (PNG only: other formats are refused, whatever the file's name). Its size is
    checked from the header before any pixel is decoded: a crafted header (a "decompression
    bomb") is refused, never allocated."""
    if path.stat().st_size == 0:
        raise StyleSwapError(f"{path}: empty file (0 bytes)")
    try:
        img = Image.open(path, formats=["PNG"])  # only PIL's PNG decoder ever sees the bytes
        check_memory(path, img.size[::-1], "image")
        img.load()
    except StyleSwapError:
        raise
    except UnidentifiedImageError:
        raise StyleSwapError(f"{path}: cannot read as PNG (not PNG data)") from None
    except Image.DecompressionBombError as e:  # over PIL's own pixel limit (which Image.open checks)
        raise StyleSwapError(f"{path}: refusing to decode ({' '.join(str(e).split())})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise StyleSwapError(f"{path}: cannot read as PNG ({' '.join(str(e).split()) or type(e).__name__})") from None
    return img


def read_png_image(path: Path) -> np.ndarray:
    """2D grayscale array: uint8 for 8-bit PNGs, float32 otherwise."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        img = img.convert("L")
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode.startswith("I") or img.mode == "F":
        return np.asarray(img).astype(np.float32)
    raise StyleSwapError(f"{path}: unsupported PNG mode {img.mode!r}")


def read_png_mask(path: Path) -> np.ndarray:
    """2D integer label map; a palette PNG gives its palette indices (the ids), RGB is refused."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        raise StyleSwapError(f"{path}: {img.mode} mask; masks must be single-channel label maps (ids as grey levels)")
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    return np.asarray(img).astype(np.int64)


def png_case_slices(
    root: Path,
    case_id: str,
    items: list[tuple[int, str]],
    label_map: LabelMap,
    *,
    size: int,
    keep_empty: float,
    seed: int,
    modality: str,
    split: str = "train",
    normalization: dict | None = None,
) -> Iterator[SourceSlice]:
    """All kept slices of one PNG case. ``normalization`` (if given) receives the case's description."""
    ks = np.array([k for k, _ in items], dtype=np.int64)
    images, masks = [], []
    for _, name in items:
        image = read_png_image(root / "images" / name)
        mask = read_png_mask(root / "masks" / name)
        if image.shape != mask.shape:
            raise StyleSwapError(
                f"{root / 'masks' / name}: mask shape {mask.shape} differs from image shape {image.shape}"
            )
        images.append(image)
        masks.append(label_map.apply(mask, root / "masks" / name))

    if all(im.dtype == np.uint8 for im in images):
        scaled = [im.astype(np.float32) / 255.0 for im in images]
        desc = {"method": "as_stored", "scale": "x / 255"}
    else:  # one scale for the whole case, as for a volume
        flat = np.concatenate([im.astype(np.float32).ravel() for im in images])
        _, desc = normalize_intensity(flat, "MRI")
        lo, hi = desc["range"]
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        scaled = [np.clip((im.astype(np.float32) - lo) * scale, 0.0, 1.0) for im in images]
    if normalization is not None:
        normalization[case_id] = {**desc, **volume_stats(np.concatenate([im.ravel() for im in scaled]))}
    fill = float(min(im.min() for im in scaled))

    keep = select_slices(np.array([m.any() for m in masks]), keep_empty, seed, case_id)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i in keep:
        by_shape.setdefault(scaled[i].shape, []).append(int(i))
    out: list[SourceSlice] = []
    for positions in by_shape.values():  # slices of one shape are resized in one batch
        out.extend(
            emit_slices(
                case_id,
                ks[positions],
                np.stack([scaled[i] for i in positions]),
                np.stack([masks[i] for i in positions]),
                pixel_spacing=UNKNOWN_SPACING[:2],
                thickness=UNKNOWN_SPACING[2],
                fill=fill,
                size=size,
                modality=modality,
                split=split,
            )
        )
    yield from sorted(out, key=lambda s: s.slice_index)
