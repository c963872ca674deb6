"""The embedded abdominal phantom: deterministic, anatomically placed (RAS+), CT-like."""

from __future__ import annotations

import numpy as np
import pytest

from styleswap.contract import DEFAULT_LABELS
from styleswap.errors import StyleSwapError
from styleswap.generator.sources.phantom import generate_cases

LIVER, KIDNEY_R, KIDNEY_L, SPLEEN = (DEFAULT_LABELS[n] for n in ("liver", "kidney_right", "kidney_left", "spleen"))


@pytest.fixture(scope="module")
def cases():
    return list(generate_cases(3, seed=7))


def centroid(label: np.ndarray, value: int) -> np.ndarray:
    return np.argwhere(label == value).mean(axis=0)


def test_volume_fields(cases) -> None:
    assert [v.case_id for v in cases] == ["phantom_000", "phantom_001", "phantom_002"]
    for v in cases:
        assert v.image.shape == v.label.shape == (96, 96, 32)
        assert v.image.dtype == np.float32 and v.label.dtype == np.uint8
        assert v.spacing == (3.0, 3.0, 5.0) and v.modality == "CT"


def test_deterministic_per_seed_and_case(cases) -> None:
    again = list(generate_cases(3, seed=7))
    for a, b in zip(cases, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    # Case i does not depend on how many cases are asked for.
    (first,) = generate_cases(1, seed=7)
    assert np.array_equal(first.image, cases[0].image)
    other = next(iter(generate_cases(1, seed=8)))
    assert not np.array_equal(other.label, cases[0].label)
    assert not np.array_equal(cases[0].label, cases[1].label)
    assert not np.array_equal(cases[1].image, cases[2].image)


def test_labels_and_all_organs_present(cases) -> None:
    for v in cases:
        assert set(np.unique(v.label)) == {0, LIVER, KIDNEY_R, KIDNEY_L, SPLEEN}


def test_anatomy_in_ras_plus(cases) -> None:
    # RAS+: x (axis 0) grows towards the patient's right, y (axis 1) towards anterior.
    for v in cases:
        liver, spleen = centroid(v.label, LIVER), centroid(v.label, SPLEEN)
        kid_r, kid_l = centroid(v.label, KIDNEY_R), centroid(v.label, KIDNEY_L)
        mid_x = (v.label.shape[0] - 1) / 2
        assert liver[0] > mid_x > spleen[0]
        assert kid_r[0] > mid_x > kid_l[0]
        assert liver[1] > kid_r[1]  # liver anterior of the kidneys
        spine_y = np.argwhere(v.image[int(mid_x), :, v.label.shape[2] // 2] > 300).mean()
        assert spine_y < liver[1]  # spine posterior


def test_ct_like_intensities(cases) -> None:
    for v in cases:
        corner = v.image[:4, :4, :]
        assert abs(float(np.median(corner)) + 1000) < 10  # air
        assert 5 < float(corner.std()) < 15  # ~10 HU noise
        assert v.image.max() > 300  # bone
        liver_hu = float(np.median(v.image[v.label == LIVER]))
        assert 90 < liver_hu < 130  # portal-venous liver
        # Enhanced organs stand out from the interior background by well over the noise.
        interior = float(np.median(v.image[(v.label == 0) & (v.image > -60) & (v.image < 20)]))
        for organ in (1, 2, 3, 4):
            assert float(np.median(v.image[v.label == organ])) - interior > 80


def test_some_slices_without_foreground(cases) -> None:
    for v in cases:
        fg_per_slice = (v.label > 0).any(axis=(0, 1))
        assert not fg_per_slice.all() and fg_per_slice.sum() >= v.label.shape[2] // 2


def test_custom_shape() -> None:
    vols = list(generate_cases(2, seed=1, shape=(64, 80, 20), spacing=(4.0, 4.0, 8.0)))
    assert vols[0].image.shape == (64, 80, 20) and vols[0].spacing == (4.0, 4.0, 8.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_cases": -1},
        {"num_cases": 1.5},
        {"seed": -3},
        {"shape": (96, 96)},
        {"shape": (96, 96, 2)},
        {"spacing": (3, 0, 5)},
    ],
)
def test_bad_arguments_raise_at_call(kwargs) -> None:
    args = {"num_cases": 1, "seed": 0} | kwargs
    with pytest.raises(StyleSwapError):
        generate_cases(**args)  # raised at the call, not at the first next()


def test_mri_phantom_same_anatomy_other_style() -> None:
    ct = next(iter(generate_cases(1, seed=5)))
    mr = next(iter(generate_cases(1, seed=5, modality="MRI")))
    # Content: the label volumes are identical; style: the tissue contrasts are not.
    np.testing.assert_array_equal(ct.label, mr.label)
    assert mr.modality == "MRI" and mr.case_id == "phantom_mri_000"

    def med(v, lab):
        return float(np.median(v.image[v.label == lab]))

    spine_ct, spine_mr = ct.image.max(), mr.image[ct.image > 400]
    assert float(np.median(spine_mr)) < med(mr, 1)  # bone: brightest in CT, dark on T2
    assert spine_ct > 400
    assert med(mr, 4) - med(mr, 1) > 200  # T2: spleen much brighter than liver
    assert abs(med(ct, 4) - med(ct, 1)) < 40  # CT: similar enhancement
    assert mr.image.min() >= 0  # MR magnitudes are non-negative


def test_unknown_phantom_modality_is_refused() -> None:
    with pytest.raises(StyleSwapError, match="modality"):
        generate_cases(1, seed=0, modality="PET")
