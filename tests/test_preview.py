"""Preview grids and the shared mask overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from styleswap.contract import DEFAULT_LABELS, LABEL_COLORS
from styleswap.errors import StyleSwapError
from styleswap.generator.preview import grid_size_px, make_preview_grid, overlay_mask


def row(i: int, n_copies: int, h: int = 24, w: int = 20) -> dict:
    rng = np.random.default_rng(i)
    mask = np.zeros((h, w), np.uint8)
    mask[4:10, 3:9] = 1
    mask[12:18, 10:16] = 4
    return {
        "sample_id": f"case_{i:03d}/0007",
        "image": rng.integers(0, 256, (h, w), dtype=np.uint8),
        "mask": mask,
        "augmented": [rng.random((h, w), dtype=np.float32) for _ in range(n_copies)],
        "prompts": [f"an MRI image, style {k} with a long tail of words" for k in range(n_copies)],
    }


@pytest.mark.parametrize(("n_rows", "n_copies"), [(1, 0), (1, 2), (3, 2), (2, 4)])
def test_grid_png_size(tmp_path, n_rows: int, n_copies: int) -> None:
    out = make_preview_grid([row(i, n_copies) for i in range(n_rows)], DEFAULT_LABELS, tmp_path / "p.png", title="t")
    assert out == tmp_path / "p.png"
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == grid_size_px(n_rows, n_copies)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind


def test_grid_grows_with_rows_and_copies() -> None:
    w1, h1 = grid_size_px(1, 2)
    w2, h2 = grid_size_px(3, 2)
    w3, h3 = grid_size_px(1, 5)
    assert h2 > h1 and w2 == w1
    assert w3 > w1 and h3 == h1


def test_grid_rejects_no_rows(tmp_path) -> None:
    with pytest.raises(StyleSwapError):
        make_preview_grid([], DEFAULT_LABELS, tmp_path / "p.png")


def test_overlay_mask_blend_by_hand() -> None:
    image = np.full((2, 3), 100, np.uint8)
    mask = np.array([[0, 2, 0], [1, 0, 4]], np.uint8)
    rgb = overlay_mask(image, mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    # kidney_right (60, 140, 230) at alpha 0.45 over gray 100: 0.55*100 + 0.45*c.
    assert LABEL_COLORS[2] == (60, 140, 230)
    assert np.allclose(rgb[0, 1].astype(float), [82.0, 118.0, 158.5], atol=0.51)
    # liver (230, 80, 60): (158.5, 91, 82); spleen (240, 200, 50): (163, 145, 77.5)
    assert np.allclose(rgb[1, 0].astype(float), [158.5, 91.0, 82.0], atol=0.51)
    assert np.allclose(rgb[1, 2].astype(float), [163.0, 145.0, 77.5], atol=0.51)
    # Background stays gray.
    for yx in [(0, 0), (0, 2), (1, 1)]:
        assert tuple(rgb[yx]) == (100, 100, 100)


@pytest.mark.parametrize(
    ("image", "gray"),
    [
        (np.full((2, 2), 51, np.uint8), 51),
        (np.full((2, 2), 51 * 257, np.uint16), 51),
        (np.full((2, 2), 0.2, np.float32), 51),
    ],
)
def test_overlay_accepts_stored_and_float_images(image, gray) -> None:
    rgb = overlay_mask(image, np.zeros((2, 2), np.uint8))
    assert np.all(rgb == gray)


def test_overlay_shape_mismatch() -> None:
    with pytest.raises(StyleSwapError):
        overlay_mask(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
