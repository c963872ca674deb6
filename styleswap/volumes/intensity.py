"""Intensity normalization to float32 in [0, 1], computed per volume.

- CT in Hounsfield units (the volume's minimum is at most ``hu_threshold``, i.e. it contains air
  around -1000 HU): clip to a fixed window (abdominal soft tissue, level 50 / width 400 ->
  [-150, 250] HU). A fixed window keeps the same tissue at the same grey level in every case.
- Everything else (MRI, or CT already windowed to 8-bit as in the SSL-ALPNet preprocessing):
  clip to the volume's 0.5 and 99.5 percentiles; MRI has no absolute intensity scale.

Rule ``standard`` (``--intensity standard``) is the preprocessing of the single-source domain
generalization code whose abdominal CT <-> MRI figures are the field's reference (Ouyang et al.'s
GIN-IPA, SLAug): CT in HU is clipped to the abdominal window; CT already windowed (8-bit) keeps its
whole range (no percentile clipping, so bright bone is not cut); MRI is clipped at the volume's
99.5th percentile only (its darkest voxels are air, never clipped). Both rules end in [0, 1]; the
per-volume z-score of that protocol happens when a network reads the data (`volume_stats` gives
each volume's mean and standard deviation in these units).
"""

from __future__ import annotations

import numpy as np

#: Abdominal soft-tissue window (level, width) in HU.
ABDOMEN_WINDOW: tuple[float, float] = (50.0, 400.0)
#: A CT volume whose minimum is at or below this is taken to be in HU.
HU_THRESHOLD = -500.0
PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: ``percentile``: the rule above; ``standard``: the reference protocol's (module docstring).
RULES = ("percentile", "standard")


def describe_rule(
    window: tuple[float, float] | None = ABDOMEN_WINDOW,
    hu_threshold: float = HU_THRESHOLD,
    percentiles: tuple[float, float] = PERCENTILES,
    rule: str = "percentile",
) -> dict:
    """The normalization rule, as recorded in manifest.json."""
    if rule == "standard":
        percentiles = (0.0, percentiles[1])
        desc = {"name": "standard", "ct": "HU: abdominal window; not HU: the volume's full range",
                "mri": f"clipped at the {percentiles[1]:g}th percentile", "output": "float32 [0, 1], stored as round(x * 255)"}
        if window is not None:
            desc["ct_hu_window"] = {"level": window[0], "width": window[1], "used_when": f"CT and min <= {hu_threshold:g}"}
        return desc
    rule = {"percentiles": list(percentiles), "output": "float32 [0, 1], stored as round(x * 255)"}
    if window is not None:
        rule["ct_hu_window"] = {"level": window[0], "width": window[1], "used_when": f"CT and min <= {hu_threshold:g}"}
    return rule


def intensity_range(
    image: np.ndarray,
    modality: str,
    *,
    window: tuple[float, float] | None = ABDOMEN_WINDOW,
    hu_threshold: float = HU_THRESHOLD,
    percentiles: tuple[float, float] = PERCENTILES,
    rule: str = "percentile",
) -> tuple[float, float, dict]:
    """The intensities ``(lo, hi)`` that map to 0 and 1 for this volume, and their JSON description.

    ``image`` is the whole volume (any numeric dtype, finite); see `normalize_intensity`.
    """
    if rule not in RULES:
        raise ValueError(f"unknown intensity rule {rule!r} (choose from {', '.join(RULES)})")
    vmin = float(image.min())
    if modality == "CT" and window is not None and vmin <= hu_threshold:
        level, width = window
        lo, hi = level - width / 2.0, level + width / 2.0
        desc = {"method": "hu_window", "level": float(level), "width": float(width), "range": [lo, hi]}
    elif rule == "standard" and modality == "CT":  # windowed already: keep the whole range
        lo, hi = vmin, float(image.max())
        desc = {"method": "full_range", "range": [lo, hi]}
    elif rule == "standard":
        lo, hi = vmin, float(np.percentile(image, percentiles[1]))
        desc = {"method": "upper_percentile", "percentile": float(percentiles[1]), "range": [lo, hi]}
    else:
        lo, hi = (float(v) for v in np.percentile(image, percentiles))
        desc = {"method": "percentiles", "percentiles": list(percentiles), "range": [lo, hi]}
    if hi <= lo:  # a constant volume: nothing to show, map it to black rather than dividing by 0
        desc["constant"] = True
    return lo, hi, desc


def apply_range(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``image`` (any part of a volume) to [lo, hi] and map it linearly to float32 [0, 1]."""
    if hi <= lo:
        return np.zeros(np.shape(image), dtype=np.float32)
    out = np.clip(np.asarray(image, dtype=np.float32), lo, hi)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out.astype(np.float32, copy=False)


def normalize_intensity(
    image: np.ndarray,
    modality: str,
    *,
    window: tuple[float, float] | None = ABDOMEN_WINDOW,
    hu_threshold: float = HU_THRESHOLD,
    percentiles: tuple[float, float] = PERCENTILES,
    rule: str = "percentile",
) -> tuple[np.ndarray, dict]:
    """``image`` (any shape, finite) -> (float32 in [0, 1], JSON description of what was done).

    ``window`` is (level, width) in HU; None disables HU windowing (percentiles for every volume).
    ``rule``: ``percentile`` or ``standard`` (see the module docstring). The same two steps
    (`intensity_range` on the whole volume, `apply_range` on any part of it) serve `train predict`,
    which applies the range slice by slice.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi, desc = intensity_range(image, modality, window=window, hu_threshold=hu_threshold, percentiles=percentiles, rule=rule)
    return apply_range(image, lo, hi), desc


#: What a network may read (a model's ``input_norm``): ``unit`` the stored slice in [0, 1]; ``zscore``
#: minus its volume's mean (`volume_stats`), over max(std, `ZSCORE_MIN_STD`).
INPUT_NORMS = ("unit", "zscore")
ZSCORE_MIN_STD = 1e-6


def volume_stats(image01: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of a normalized volume (all voxels), for the per-volume z-score
    that networks trained under the ``standard`` protocol apply when they read a slice."""
    x = np.asarray(image01, dtype=np.float64)
    return {"mean": float(x.mean()), "std": float(x.std())}


def chunked_volume_stats(chunks) -> dict[str, float]:
    """`volume_stats` of the concatenation of ``chunks`` (float arrays), one chunk in memory at a
    time, from float64 sums of the values and of their squares (agrees with `volume_stats` to
    about 1e-9 on [0, 1] data, plenty for a z-score)."""
    n, total, squares = 0, 0.0, 0.0
    for chunk in chunks:
        x = np.asarray(chunk, dtype=np.float64)
        n += x.size
        total += float(x.sum())
        squares += float(np.square(x).sum())
    if n == 0:
        return {"mean": 0.0, "std": 0.0}
    mean = total / n
    return {"mean": mean, "std": float(np.sqrt(max(squares / n - mean * mean, 0.0)))}
