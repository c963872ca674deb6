"""Preview grids: one row per slice -- original, mask overlay, then its style-intervened copies.

``overlay_mask`` is the single definition of how a label map is drawn over a grayscale slice
(the fixed ``contract.LABEL_COLORS``, alpha 0.45). The trainer may not import the generator, so
if it needs the same picture it should copy this ~15-line function (it depends on numpy and
``styleswap.contract`` only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from styleswap.contract import LABEL_COLORS
from styleswap.errors import StyleSwapError

OVERLAY_ALPHA = 0.45
#: Colour of label ids that have no entry in ``LABEL_COLORS``.
FALLBACK_COLOR = (255, 255, 255)

# Layout in inches; at DPI 100 the PNG is exactly (LEFT + cols * CELL) x (HEADER + rows * CELL) * 100 px.
DPI = 100
CELL_IN = 2.0
LEFT_IN = 0.4
HEADER_IN = 0.6
_PAD_IN = 0.05
_TITLE_IN = 0.22
_PROMPT_CHARS = 38


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """A 2D slice as uint8 gray: uint8 as is, uint16 / 257, float assumed in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image.astype(np.uint32) // 257).astype(np.uint8)  # 65535 -> 255 exactly
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` in gray, each labelled pixel blended with its label's colour.

    ``out = round((1 - alpha) * gray + alpha * LABEL_COLORS[id])`` where ``mask == id > 0``;
    background pixels (id 0) stay gray ``(g, g, g)``. ``image`` is uint8, uint16 or float in [0, 1].
    """
    gray = to_gray_u8(image)
    mask = np.asarray(mask)
    if gray.ndim != 2 or gray.shape != mask.shape:
        raise StyleSwapError(f"overlay_mask: image {gray.shape} and mask {mask.shape} must be equal 2D shapes")
    # A lookup table by id keeps this one vectorised pass however many labels there are.
    lut = np.array([LABEL_COLORS.get(i, FALLBACK_COLOR) for i in range(256)], dtype=np.float32)
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    fg = mask > 0
    rgb[fg] = (1.0 - alpha) * rgb[fg] + alpha * lut[mask[fg].astype(np.intp)]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def grid_size_px(n_rows: int, n_copies: int) -> tuple[int, int]:
    """(width, height) in pixels of a preview with ``n_rows`` rows and ``n_copies`` copies each."""
    return round((LEFT_IN + (2 + n_copies) * CELL_IN) * DPI), round((HEADER_IN + n_rows * CELL_IN) * DPI)


def _short(prompt: str) -> str:
    return prompt if len(prompt) <= _PROMPT_CHARS else prompt[: _PROMPT_CHARS - 1] + "\u2026"


def make_preview_grid(
    rows: list[dict[str, Any]],
    labels: dict[str, int],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG grid; each row dict has ``sample_id``, ``image``, ``mask``, ``augmented``, ``prompts``.

    Columns: original, mask overlay, then the copies (as many columns as the longest row has
    copies; shorter rows leave cells empty). The legend shows every non-background label of
    ``labels`` in its fixed colour. The file is written to a temporary name and renamed, so a
    crash never leaves a half-written preview.
    """
    # Figure + Agg canvas instead of pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not rows:
        raise StyleSwapError("make_preview_grid: no rows to draw")
    out_png = Path(out_png)
    n_rows = len(rows)
    n_copies = max(len(r.get("augmented", [])) for r in rows)
    n_cols = 2 + n_copies
    w_in, h_in = LEFT_IN + n_cols * CELL_IN, HEADER_IN + n_rows * CELL_IN
    fig = Figure(figsize=(w_in, h_in), dpi=DPI)
    FigureCanvasAgg(fig)

    def add_cell(r: int, c: int):
        left = LEFT_IN + c * CELL_IN + _PAD_IN
        bottom = h_in - HEADER_IN - (r + 1) * CELL_IN + _PAD_IN
        size = CELL_IN - 2 * _PAD_IN
        ax = fig.add_axes((left / w_in, bottom / h_in, size / w_in, (size - _TITLE_IN) / h_in))
        ax.set_axis_off()
        return ax

    for r, row in enumerate(rows):
        image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
        augmented, prompts = list(row.get("augmented", [])), list(row.get("prompts", []))
        if len(prompts) < len(augmented):
            prompts += [""] * (len(augmented) - len(prompts))
        ax = add_cell(r, 0)
        ax.imshow(to_gray_u8(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title("original", fontsize=7)
        ax = add_cell(r, 1)
        ax.imshow(overlay_mask(image, mask), interpolation="nearest")
        ax.set_title("mask", fontsize=7)
        for k, (copy, prompt) in enumerate(zip(augmented, prompts)):
            ax = add_cell(r, 2 + k)
            ax.imshow(to_gray_u8(np.asarray(copy)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(_short(str(prompt)), fontsize=7)
        y_mid = (h_in - HEADER_IN - (r + 0.5) * CELL_IN) / h_in
        fig.text(LEFT_IN / 2 / w_in, y_mid, str(row["sample_id"]), rotation=90, ha="center", va="center", fontsize=8)

    handles = [
        Patch(facecolor=np.array(LABEL_COLORS.get(i, FALLBACK_COLOR)) / 255.0, label=name)
        for name, i in sorted(labels.items(), key=lambda kv: kv[1])
        if i != 0
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, (h_in - HEADER_IN) / h_in),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.05 / h_in, va="top")

    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out_png)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_png
