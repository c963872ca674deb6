"""The geometry of `train predict`: forward preprocessing and its inverse land every label on the
scan's own grid (same shape, same affine, liver on the patient's right in world coordinates)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from predict_fixtures import dice, label_round_trip, phantom_volume, reorient, save, world_centroid
from styleswap.volumes import geometry
from styleswap.volumes.io import make_label_map
from styleswap.volumes.scans import ScanRef, load_scan

LIVER, KIDNEY_R, KIDNEY_L, SPLEEN = 1, 2, 3, 4


def test_display_and_padding_invert_exactly():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, size=(7, 5, 4)).astype(np.uint8)
    shown = geometry.display_slices(vol, slice(0, 4))
    assert shown.shape == (4, 5, 7)  # (slices, rows = Y, cols = X)
    # row 0 is the most anterior (largest y), column 0 the patient's right (largest x)
    assert shown[2, 0, 0] == vol[6, 4, 2] and shown[2, 4, 6] == vol[0, 0, 2]
    assert np.array_equal(geometry.from_display(shown), vol)
    padded = geometry.pad_to_square(shown, 0)
    assert padded.shape == (4, 7, 7)
    assert np.array_equal(geometry.crop_square(padded, 5, 7), shown)
    # with a leading class axis too
    assert np.array_equal(geometry.from_display(np.stack([shown, shown]))[1], vol)


def test_canonical_view_writes_through_to_the_stored_array():
    stored = np.zeros((4, 3, 2), np.uint8)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS
    ornt = geometry.canonical_orientation(affine)
    view = geometry.to_canonical(stored, ornt)
    view[0, 0, 1] = 7  # the most left / posterior voxel of slice 1 in RAS+
    assert stored[3, 2, 1] == 7  # ... is the last x and y index in LPS storage


@pytest.mark.parametrize(
    "axcodes, rotate, shape, spacing",
    [
        ("RAS", 0.0, (96, 96, 32), (3.0, 3.0, 5.0)),
        ("LPS", 0.0, (96, 96, 32), (3.0, 3.0, 5.0)),
        ("LAS", 0.0, (96, 96, 32), (3.0, 3.0, 5.0)),
        ("PSR", 0.0, (96, 96, 32), (3.0, 3.0, 5.0)),  # stored sagittal-first: axes permuted
        ("LPS", 20.0, (96, 96, 32), (3.0, 3.0, 5.0)),  # oblique
        ("RAS", 0.0, (120, 72, 20), (2.4, 4.0, 7.5)),  # anisotropic, non-square in-plane
    ],
)
def test_label_round_trip_on_synthetic_orientations(tmp_path, axcodes, rotate, shape, spacing):
    _, label, ras_affine = phantom_volume(shape=shape, spacing=spacing)
    stored, affine = reorient(label, ras_affine, axcodes, rotate)
    assert "".join(nib.aff2axcodes(affine)) == axcodes
    back = label_round_trip(stored, affine, size=128)  # the demo size; at 64 the 96-voxel phantom loses detail
    assert back.shape == stored.shape
    for organ in (LIVER, KIDNEY_R, KIDNEY_L, SPLEEN):
        assert dice(back, stored, organ) >= 0.97, (axcodes, organ, dice(back, stored, organ))
    # written next to the scan and read back: same grid, liver on the patient's right (+x in RAS)
    path = save(back, affine, tmp_path / "pred.nii.gz")
    img = nib.load(str(path))
    assert img.shape == stored.shape and np.array_equal(img.affine, nib.load(str(save(stored, affine, tmp_path / "gt.nii.gz"))).affine)
    got = np.asarray(img.dataobj)
    liver, spleen = world_centroid(got, img.affine, LIVER), world_centroid(got, img.affine, SPLEEN)
    truth = world_centroid(label, ras_affine, LIVER)
    if not rotate:
        assert np.allclose(liver, truth, atol=1.0)
    assert liver[0] > spleen[0] + 30  # mm: the liver is on the patient's right, the spleen on the left
    assert world_centroid(got, img.affine, KIDNEY_R)[0] > world_centroid(got, img.affine, KIDNEY_L)[0]


def _real_cases(shared_data):
    ct = shared_data / "abdomen-ct"
    mr = shared_data / "abdomen-mr-dev"
    # sabs_07 has the smallest kidneys for its field of view: the worst case of the 30 at size 192
    for root, case in ((ct, "sabs_00"), (ct, "sabs_07"), (mr, "chaos_01")):
        yield root / "imagesTr" / f"{case}_0000.nii.gz", root / "labelsTr" / f"{case}.nii.gz", None
    smoke = shared_data / "smoke-totalseg"
    remap = "liver=5,spleen=1,kidney_right=2,kidney_left=3"  # TotalSegmentator ids
    yield smoke / "example_ct_sm.nii.gz", smoke / "example_seg.nii.gz", remap
    yield smoke / "example_mr_sm.nii.gz", smoke / "example_seg_mr.nii.gz", remap


@pytest.mark.realdata
def test_label_round_trip_on_real_scans(shared_data):
    """Real CT (LAS), real MRI (LAS), TotalSegmentator's RAS CT and LPS MRI.

    At the padded side itself (no resize) the round trip must be exact: orientation, padding and
    display undone voxel for voxel. At the default size 192 the forward's nearest-neighbour shrink
    of the mask (what ingest stores) loses detail nothing can restore: >= 0.97 per organ, except CT
    kidneys (257 px -> 192: measured 0.913 to 0.984 over the 30 CT cases, mean 0.975).
    """
    from styleswap.contract import DEFAULT_LABELS

    seen = set()
    for image_path, label_path, remap in _real_cases(shared_data):
        scan = load_scan(ScanRef("x", label_path, "nifti"))
        label = make_label_map(remap, None, DEFAULT_LABELS).apply(scan.voxels, label_path)
        seen.add("".join(nib.aff2axcodes(scan.affine)))
        present = [o for o in (LIVER, KIDNEY_R, KIDNEY_L, SPLEEN) if (label == o).sum() > 50]
        assert LIVER in present and SPLEEN in present
        exact = label_round_trip(label, scan.affine, size=max(label.shape[:2]))  # axial scans: in-plane = axes 0, 1
        assert np.array_equal(exact, label), label_path.name
        back = label_round_trip(label, scan.affine, size=192)
        assert back.shape == label.shape
        for organ in present:
            floor = 0.90 if "sabs" in label_path.name and organ in (KIDNEY_R, KIDNEY_L) else 0.97
            assert dice(back, label, organ) >= floor, (label_path.name, organ, dice(back, label, organ))
        assert np.allclose(nib.load(str(image_path)).affine, scan.affine, atol=1e-3)  # the label shares its image's grid
        liver = world_centroid(back, scan.affine, LIVER)
        others = [world_centroid(back, scan.affine, o)[0] for o in (SPLEEN, KIDNEY_L) if o in present]
        assert all(liver[0] > x for x in others), label_path.name  # patient's right = +x (RAS)
    assert {"LAS", "RAS", "LPS"} <= seen


@pytest.mark.parametrize("modality, rule", [("CT", "percentile"), ("MRI", "standard")])
def test_network_input_is_what_ingest_stores(tmp_path, modality, rule):
    """Predict's forward on an LPS scan gives, slice for slice, the pixels `augment ingest` writes
    for the same file (the model saw exactly those)."""
    from styleswap.contract import to_unit_float
    from styleswap.generator.sources.ingest import open_source
    from styleswap.volumes.preprocess import Preprocessing, PreparedScan

    image, label, ras = phantom_volume(modality, shape=(80, 64, 12), spacing=(3.0, 3.5, 6.0))
    stored, affine = reorient(image, ras, "LPS")
    stored_label, _ = reorient(label, ras, "LPS")
    img_path, lab_path = save(stored, affine, tmp_path / "img.nii.gz"), save(stored_label, affine, tmp_path / "lab.nii.gz")
    stream = open_source(f"{img_path}:{lab_path}", size=48, keep_empty=1.0, modality=modality, intensity_rule=rule)
    ingested = {s.slice_index: to_unit_float(s.image) for s in stream.slices()}
    prep = PreparedScan(np.asarray(nib.load(str(img_path)).dataobj), affine, Preprocessing(size=48, intensity=rule), modality, chunk=5)
    got = {k: x[0].numpy() for k0, k1 in prep.chunks() for k, x in zip(range(k0, k1), prep.network_input(k0, k1))}
    assert sorted(got) == sorted(ingested) == list(range(12))
    for k in got:
        assert np.array_equal(got[k], ingested[k]), k


def test_zscore_input_uses_the_normalized_volume_statistics():
    from styleswap.volumes.intensity import normalize_intensity, volume_stats
    from styleswap.volumes.preprocess import Preprocessing, PreparedScan

    image, _, ras = phantom_volume("MRI", shape=(40, 40, 8))
    unit = PreparedScan(image, ras, Preprocessing(size=32), "MRI", chunk=3)
    z = PreparedScan(image, ras, Preprocessing(size=32, input_norm="zscore"), "MRI", chunk=3)
    want = volume_stats(normalize_intensity(image, "MRI")[0])
    assert z.stats["mean"] == pytest.approx(want["mean"], abs=1e-9) and z.stats["std"] == pytest.approx(want["std"], abs=1e-9)
    expected = (unit.network_input(0, 3).numpy() - want["mean"]) / want["std"]
    assert np.allclose(z.network_input(0, 3).numpy(), expected, atol=1e-5)
