"""A synthetic abdominal CT phantom: the default source, no download needed.

Orientation: arrays are (X, Y, Z) in nibabel's canonical RAS+ voxel order, i.e. array index
increases towards the patient's **R**ight along axis 0 (x), **A**nterior along axis 1 (y) and
**S**uperior along axis 2 (z) ("RAS+: +x = Right, +y = Anterior, +z = Superior"). So the liver
(patient's right) sits at *larger* x than the spleen (patient's left), and the spine at small y.

Anatomy per case (all positions in mm from the volume centre, all sizes jittered per case):

=============  =====  ========  ==================================================
structure      label  HU        where
=============  =====  ========  ==================================================
air            0      -1000     outside the body
fat rim        0      -100      subcutaneous ring, 8-16 mm thick
soft tissue    0      -20       the rest of the body (visceral fat and bowel)
liver          1      110       patient's right, anterior-ish, upper part of the FOV
kidney_right   2      170       right, posterior-lateral of the spine, lower part
kidney_left    3      170       left, posterior-lateral of the spine, lower part
spleen         4      120       patient's left, posterior, upper part
spine          0      700       vertebral body, posterior midline, all slices
=============  =====  ========  ==================================================

Organs are rotated ellipsoids (random radii, in-plane rotation, offsets) warped by one smooth
random displacement field (a few low-frequency sinusoids, <= 4 mm) and painted in the order
liver, spleen, kidneys, spine (later ones win where they overlap), then clipped to the body.
The image gets a light in-plane blur (partial volume) and Gaussian noise (10 HU). Organs stay
within |z| <= ~70 mm, so with the default 32 x 5 mm slices the outermost slices hold no organ.

Each case is a pure function of ``(seed, case index)`` (``np.random.default_rng([seed, i])``),
so case ``i`` is the same whatever ``num_cases`` is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.ndimage import gaussian_filter

from styleswap.contract import DEFAULT_LABELS
from styleswap.errors import StyleSwapError
from styleswap.generator.sources.base import Volume

# Tissue values per modality. CT: a portal-venous contrast CT in HU (like BTCV): enhanced organs
# stand out from the fat-rich interior. MRI: T2-weighted, fat-suppressed (SPIR, like CHAOS) in
# arbitrary units: the liver is darker than the spleen and the kidneys, bone marrow is dark. The
# anatomy is the same function of (seed, case); only the appearance (the style) differs.
TISSUE = {
    "CT": {"air": -1000.0, "fat": -100.0, "soft": -20.0, "bone": 700.0, "noise": 10.0,
           "liver": 110.0, "spleen": 120.0, "kidney_right": 170.0, "kidney_left": 170.0},
    "MRI": {"air": 0.0, "fat": 120.0, "soft": 170.0, "bone": 90.0, "noise": 18.0,
            "liver": 260.0, "spleen": 620.0, "kidney_right": 700.0, "kidney_left": 700.0},
}
HU_AIR, HU_FAT, HU_SOFT, HU_BONE = (TISSUE["CT"][k] for k in ("air", "fat", "soft", "bone"))
NOISE_HU = TISSUE["CT"]["noise"]


def _ellipsoid(x, y, z, centre, radii, angle: float) -> np.ndarray:
    """Boolean mask of an ellipsoid rotated by ``angle`` (rad) about the z axis."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (dz / radii[2]) ** 2 <= 1.0


def make_case(
    seed: int,
    index: int,
    shape: tuple[int, int, int] = (96, 96, 32),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
    modality: str = "CT",
) -> Volume:
    """Phantom case ``index`` of the series seeded by ``seed`` (see the module docstring)."""
    tissue = TISSUE[modality]
    rng = np.random.default_rng([int(seed), int(index)])
    nx, ny, nz = shape
    sx, sy, sz = spacing
    # Voxel-centre coordinates in mm, centred; broadcasting keeps memory at one full grid per term.
    x = ((np.arange(nx) - (nx - 1) / 2) * sx).reshape(-1, 1, 1)
    y = ((np.arange(ny) - (ny - 1) / 2) * sy).reshape(1, -1, 1)
    z = ((np.arange(nz) - (nz - 1) / 2) * sz).reshape(1, 1, -1)

    def jitter(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    # Smooth random deformation: the same warp for every structure, so organs never tear apart.
    wx, wy = np.zeros((nx, ny, nz)), np.zeros((nx, ny, nz))
    for field in (wx, wy):
        for _ in range(3):
            k = rng.uniform(0.005, 0.02, size=3) * 2 * np.pi  # wavelengths 5-20 cm
            field += rng.uniform(1.0, 1.5) * np.sin(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
    xw, yw = x + wx, y + wy

    # Body outline and its fat rim.
    body_c = (jitter(-6, 6), jitter(-6, 6))
    body_r = (jitter(118, 135), jitter(85, 100))
    rim = jitter(8, 16)
    rb = ((xw - body_c[0]) / body_r[0]) ** 2 + ((yw - body_c[1]) / body_r[1]) ** 2
    body = np.broadcast_to(rb <= 1.0, shape)
    ri = ((xw - body_c[0]) / (body_r[0] - rim)) ** 2 + ((yw - body_c[1]) / (body_r[1] - rim)) ** 2
    inner = np.broadcast_to(ri <= 1.0, shape)

    image = np.full(shape, tissue["air"], dtype=np.float32)
    image[body] = tissue["fat"]
    image[inner] = tissue["soft"]
    label = np.zeros(shape, dtype=np.uint8)

    bx, by = body_c
    spine_y = by - 0.55 * body_r[1]
    j = jitter
    organs = [
        # name, centre (x, y, z) mm, radii (in-plane major, minor, z) mm, max rotation (deg), HU
        ("liver", (bx + j(45, 60), by + j(0, 15), j(10, 25)), (j(55, 68), j(45, 58), j(35, 45)), 20, 110.0),
        ("spleen", (bx - j(65, 80), spine_y + j(15, 30), j(15, 30)), (j(22, 30), j(35, 45), j(28, 38)), 25, 120.0),
        ("kidney_right", (bx + j(45, 55), spine_y + j(0, 8), j(-30, -20)), (j(20, 26), j(26, 32), j(30, 38)), 20, 170.0),
        ("kidney_left", (bx - j(45, 55), spine_y + j(0, 8), j(-26, -16)), (j(20, 26), j(26, 32), j(30, 38)), 20, 170.0),
    ]
    for name, centre, radii, max_deg, hu in organs:
        angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
        m = _ellipsoid(xw, yw, z, centre, radii, angle) & inner
        image[m] = tissue[name] + rng.normal(0, 4) * tissue["noise"] / NOISE_HU  # per-case contrast jitter
        label[m] = DEFAULT_LABELS[name]

    # Vertebral body (a cylinder along z); bone is not a label, so it clears what it covers.
    spine = np.broadcast_to(((xw - bx) / 18.0) ** 2 + ((yw - spine_y) / 16.0) ** 2 <= 1.0, shape)
    image[spine] = tissue["bone"]
    label[spine] = 0

    # Partial-volume blur in-plane only (slices are thick), then scanner noise.
    image = gaussian_filter(image, sigma=(0.7, 0.7, 0.0), mode="nearest")
    image += rng.normal(0.0, tissue["noise"], size=shape).astype(np.float32)
    if modality == "MRI":
        # Receive-coil shading: a smooth multiplicative bias across the field of view.
        bias = 1.0 + 0.25 * np.sin(x / 90.0 + jitter(0, 6.3)) * np.cos(y / 110.0 + jitter(0, 6.3))
        image = np.clip(image * bias.astype(np.float32), 0, None)
    prefix = _prefix(modality)
    return Volume(
        case_id=phantom_case_id(index, modality),
        image=image.astype(np.float32, copy=False),
        label=label,
        spacing=(float(sx), float(sy), float(sz)),
        modality=modality,
        split="train",
        path=f"{prefix}(seed={seed}, case={index})",
    )


def _prefix(modality: str) -> str:
    return "phantom" if modality == "CT" else "phantom_mri"


def phantom_case_id(index: int, modality: str = "CT") -> str:
    return f"{_prefix(modality)}_{index:03d}"


def generate_cases(
    num_cases: int,
    seed: int,
    shape: tuple[int, int, int] = (96, 96, 32),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
    modality: str = "CT",
) -> Iterator[Volume]:
    """Yield ``num_cases`` phantom volumes ``phantom_000``, ``phantom_001``, ... (RAS+, HU, labels)."""
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 0:
        raise StyleSwapError(f"phantom: num_cases must be an integer >= 0, got {num_cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise StyleSwapError(f"phantom: seed must be a non-negative integer, got {seed!r}")
    shape = tuple(shape)  # type: ignore[assignment]
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4 for n in shape):
        raise StyleSwapError(f"phantom: shape must be three integers >= 4, got {shape!r}")
    spacing = tuple(spacing)  # type: ignore[assignment]
    if len(spacing) != 3 or any(not isinstance(s, (int, float)) or not s > 0 for s in spacing):
        raise StyleSwapError(f"phantom: spacing must be three positive numbers (mm), got {spacing!r}")
    if modality not in TISSUE:
        raise StyleSwapError(f"phantom: modality must be one of {', '.join(TISSUE)}, got {modality!r}")
    # Validate now, not at the first next(): the caller's error should point at the call.
    return (make_case(int(seed), i, shape, spacing, modality) for i in range(int(num_cases)))  # type: ignore[arg-type]
