"""Ingest: layouts, orientation, geometry, slice selection, label remapping, real data."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from styleswap.contract import DEFAULT_LABELS
from styleswap.generator.sources.base import Volume
from styleswap.generator.sources.ingest import open_source
from styleswap.volumes.intensity import normalize_intensity
from styleswap.generator.sources.slicing import resize_stack, select_slices

TS_LABELS = "liver=5,spleen=1,kidney_right=2,kidney_left=3"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def pair(tmp_path: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray, name: str = "case") -> str:
    img = write_nifti(tmp_path / f"{name}.nii.gz", image, affine)
    lab = write_nifti(tmp_path / f"{name}_seg.nii.gz", label, affine)
    return f"{img}:{lab}"


def marker_volume(shape=(8, 8, 3)) -> tuple[np.ndarray, np.ndarray]:
    """RAS+ voxel data with a bright marker voxel at the patient's right-anterior corner of z=1."""
    image = np.zeros(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x, y = shape[0] - 1, shape[1] - 1  # largest x = most Right, largest y = most Anterior
    image[x, y, 1] = 100.0
    label[x, y, 1] = 1
    label[0, 0, 1] = 4  # patient's left-posterior corner
    return image, label


# --- orientation ------------------------------------------------------------------------------------


def test_right_anterior_marker_is_top_left(tmp_path):
    image, label = marker_volume()
    ras = np.diag([2.0, 2.0, 4.0, 1.0])
    stream = open_source(pair(tmp_path, image, label, ras), size=8, keep_empty=1.0, modality="MRI")
    slices = list(stream.slices())
    assert [s.slice_index for s in slices] == [0, 1, 2]
    s = slices[1]
    assert s.image.shape == (8, 8) and s.image.dtype == np.uint8
    assert s.image[0, 0] == 255 and np.count_nonzero(s.image) == 1
    assert s.mask[0, 0] == 1 and s.mask[7, 7] == 4  # left-posterior ends up bottom-right
    assert s.sample_id == "case/0001" and s.case_id == "case" and s.split == "train"
    assert stream.info["orientation"]["columns"].startswith("patient right (image left)")


def test_lps_on_disk_gives_the_identical_slice(tmp_path):
    image, label = marker_volume((8, 6, 3))
    ras = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 4.0, 7], [0, 0, 0, 1]])
    # The same world: LPS voxel (i, j, k) is RAS voxel (X-1-i, Y-1-j, k).
    flip = np.array([[-1.0, 0, 0, 7], [0, -1.0, 0, 5], [0, 0, 1, 0], [0, 0, 0, 1]])
    lps = ras @ flip
    assert nib.aff2axcodes(lps) == ("L", "P", "S")
    a = list(open_source(pair(tmp_path, image, label, ras, "ras"), size=8, keep_empty=1, modality="CT").slices())
    b = list(
        open_source(
            pair(tmp_path, image[::-1, ::-1].copy(), label[::-1, ::-1].copy(), lps, "lps"),
            size=8, keep_empty=1, modality="CT",
        ).slices()
    )
    assert len(a) == len(b) == 3
    for sa, sb in zip(a, b):
        assert sa.slice_index == sb.slice_index
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        assert sa.spacing == pytest.approx(sb.spacing)
    # 8 columns (X) by 6 rows (Y) padded to 8 x 8 centered: the marker sits at row 1, column 0.
    assert a[1].mask[1, 0] == 1 and a[1].image[1, 0] == 255
    assert (a[1].mask[0] == 0).all() and (a[1].mask[7] == 0).all()


# --- geometry -------------------------------------------------------------------------------------


def test_nearest_neighbour_masks_keep_the_label_set():
    rng = np.random.default_rng(0)
    blocks = rng.choice(np.array([0, 1, 4], dtype=np.uint8), size=(3, 5, 5))
    masks = np.kron(blocks, np.ones((1, 8, 8), dtype=np.uint8))  # (3, 40, 40), ids {0, 1, 4}
    images = masks.astype(np.float32) / 4.0
    for size in (16, 96):
        img, msk = resize_stack(images, masks, size)
        assert img.shape == msk.shape == (3, size, size)
        assert msk.dtype == np.uint8 and img.dtype == np.float32
        assert set(np.unique(msk)) == {0, 1, 4}  # bilinear would invent 2 and 3 at the edges
        assert 0.0 <= img.min() and img.max() <= 1.0
    _, up = resize_stack(images, masks, 80)
    np.testing.assert_array_equal(up, np.kron(masks, np.ones((1, 2, 2), dtype=np.uint8)))


def test_spacing_hand_computed(tmp_path):
    image = np.zeros((30, 20, 4), dtype=np.float32)
    label = np.zeros((30, 20, 4), dtype=np.uint8)
    image[5:10, 5:10] = 1.0
    label[5:10, 5:10, 2] = 1
    affine = np.diag([2.0, 3.0, 5.0, 1.0])
    (s,) = open_source(pair(tmp_path, image, label, affine), size=15, keep_empty=0, modality="MRI").slices()
    # rows follow Y (3 mm), columns X (2 mm); padded extent max(30, 20) = 30 voxels -> 15 pixels.
    assert s.spacing == pytest.approx((3.0 * 30 / 15, 2.0 * 30 / 15, 5.0))
    assert s.image.shape == s.mask.shape == (15, 15)


def test_keep_empty_fraction_is_reproducible(tmp_path):
    image = np.random.default_rng(1).random((8, 8, 10)).astype(np.float32)
    label = np.zeros((8, 8, 10), dtype=np.uint8)
    label[2:5, 2:5, 3:5] = 2
    src = pair(tmp_path, image, label, np.eye(4))
    kept = lambda **kw: [s.slice_index for s in open_source(src, size=8, modality="MRI", **kw).slices()]
    assert kept(keep_empty=0) == [3, 4]
    assert kept(keep_empty=1) == list(range(10))
    half = kept(keep_empty=0.5, seed=3)
    assert len(half) == 2 + 4 and {3, 4} <= set(half)
    assert kept(keep_empty=0.5, seed=3) == half
    assert len({tuple(kept(keep_empty=0.5, seed=s)) for s in range(6)}) > 1  # the seed matters
    # the choice depends on (seed, case_id), not on anything else
    fg = np.zeros(10, dtype=bool)
    fg[[3, 4]] = True
    assert select_slices(fg, 0.5, 3, "case").tolist() == half


# --- intensity and labels ----------------------------------------------------------------------


def test_intensity_rules():
    hu = np.array([-1000.0, -150.0, 50.0, 250.0, 1200.0], dtype=np.float32)
    out, desc = normalize_intensity(hu, "CT")
    assert desc["method"] == "hu_window" and desc["range"] == [-150.0, 250.0]
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)
    out, desc = normalize_intensity(hu, "CT", window=(40.0, 80.0))
    assert desc["range"] == [0.0, 80.0]
    eight_bit = np.linspace(0, 255, 1001, dtype=np.float32)  # windowed CT, not HU: percentiles
    out, desc = normalize_intensity(eight_bit, "CT")
    assert desc["method"] == "percentiles" and desc["range"] == pytest.approx([1.275, 253.725])
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    _, desc = normalize_intensity(hu, "MRI")  # never an HU window for MRI
    assert desc["method"] == "percentiles"


def test_standard_intensity_rule_and_volume_stats(tmp_path):
    """The reference protocol (GIN-IPA / SLAug): windowed CT keeps its whole range, MRI is clipped at
    its 99.5th percentile only; every ingested case records its normalized mean and std."""
    eight_bit = np.linspace(0, 255, 1001, dtype=np.float32)
    out, desc = normalize_intensity(eight_bit, "CT", rule="standard")
    assert desc["method"] == "full_range" and desc["range"] == [0.0, 255.0]
    np.testing.assert_allclose(out, eight_bit / 255.0, atol=1e-6)  # nothing clipped
    mri = np.arange(1001, dtype=np.float32)  # 0..1000: the 99.5th percentile is 995
    out, desc = normalize_intensity(mri, "MRI", rule="standard")
    assert desc["method"] == "upper_percentile" and desc["range"] == pytest.approx([0.0, 995.0])
    assert out[0] == 0.0 and out[995] == pytest.approx(1.0) and out[1000] == 1.0 and out[500] == pytest.approx(500 / 995)
    hu = np.array([-1000.0, 50.0, 1200.0], dtype=np.float32)  # HU CT: the window, as with percentile
    assert normalize_intensity(hu, "CT", rule="standard")[1]["method"] == "hu_window"
    with pytest.raises(ValueError, match="unknown intensity rule"):
        normalize_intensity(hu, "CT", rule="zscore")

    image = np.zeros((8, 8, 2), dtype=np.float32)
    image[:4] = 100.0  # half the volume bright: normalized mean 0.5, std 0.5
    label = np.zeros((8, 8, 2), dtype=np.uint8)
    label[1:3, 1:3, 0] = 1
    stream = open_source(pair(tmp_path, image, label, np.eye(4)), size=8, modality="MRI", keep_empty=1, intensity_rule="standard")
    list(stream.slices())
    (entry,) = stream.info["normalization"]["per_case"].values()
    assert entry["method"] == "upper_percentile"
    assert entry["mean"] == pytest.approx(0.5) and entry["std"] == pytest.approx(0.5)
    assert stream.info["normalization"]["rule"]["name"] == "standard"


def test_label_remap_and_info(tmp_path):
    image = np.full((8, 8, 2), -1000.0, dtype=np.float32)
    label = np.zeros((8, 8, 2), dtype=np.int16)
    label[1:3, 1:3, 0] = 5  # liver in TotalSegmentator ids
    label[4:6, 4:6, 0] = 1  # spleen
    label[6:8, 0:2, 1] = 117  # something we do not keep
    stream = open_source(pair(tmp_path, image, label, np.eye(4)), labels=TS_LABELS, size=8, modality="CT", keep_empty=1)
    slices = list(stream.slices())
    assert np.unique(slices[0].mask).tolist() == [0, 1, 4]
    assert np.unique(slices[1].mask).tolist() == [0]  # 117 became background
    remap = stream.info["label_remap"]
    assert remap["origin"] == "--labels"
    assert remap["source_to_project"] == {"1": 4, "2": 2, "3": 3, "5": 1}
    assert stream.info["labels"] == DEFAULT_LABELS
    assert stream.info["normalization"]["per_case"]["case"]["method"] == "hu_window"
    json.dumps(stream.info)  # manifest.json must be able to hold it


# --- layouts ------------------------------------------------------------------------------------------


def _nnunet(root: Path, cases: dict[str, str], channel="CT", labels=None, ts: bool = False) -> Path:
    """A tiny nnU-Net raw folder; ``cases`` maps case id -> split folder suffix ("Tr" or "Ts")."""
    root.mkdir()
    meta = {"channel_names": {"0": channel}, "labels": labels or dict(DEFAULT_LABELS), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for case, part in cases.items():
        (root / f"images{part}").mkdir(exist_ok=True)
        image = np.zeros((8, 8, 2), dtype=np.float32)
        label = np.zeros((8, 8, 2), dtype=np.uint8)
        label[2:4, 2:4, 1] = 1
        write_nifti(root / f"images{part}" / f"{case}_0000.nii.gz", image, np.eye(4))
        if part == "Tr" or ts:
            (root / f"labels{part}").mkdir(exist_ok=True)
            write_nifti(root / f"labels{part}" / f"{case}.nii.gz", label, np.eye(4))
    return root


def test_nnunet_layout_with_test_split(tmp_path):
    root = _nnunet(tmp_path / "ds", {"a": "Tr", "b": "Tr", "c": "Ts"}, channel="T2", ts=True)
    stream = open_source(str(root), size=8, keep_empty=0)
    assert stream.info["layout"] == "nnunet" and stream.info["modality"] == "MRI"
    assert stream.info["num_cases"] == 3 and stream.info["splits"] == {"train": 2, "test": 1}
    assert stream.info["label_remap"]["origin"] == "dataset.json"
    got = [(s.sample_id, s.split, s.modality) for s in stream.slices()]
    assert got == [("a/0001", "train", "MRI"), ("b/0001", "train", "MRI"), ("c/0001", "test", "MRI")]
    assert open_source(str(root), size=8, modality="CT").info["modality"] == "CT"  # --modality wins


def test_nnunet_images_ts_without_labels_is_skipped_with_a_warning(tmp_path):
    root = _nnunet(tmp_path / "ds", {"a": "Tr", "c": "Ts"})
    with pytest.warns(UserWarning, match="imagesTs"):
        stream = open_source(str(root), size=8)
    assert stream.info["splits"] == {"train": 1}
    assert [s.case_id for s in stream.slices()] == ["a"]


def test_msd_layout(tmp_path):
    root = tmp_path / "Task03_Liver"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = np.zeros((8, 8, 3), dtype=np.float32)
    label = np.zeros((8, 8, 3), dtype=np.uint8)
    label[1:4, 1:4, 2] = 1
    write_nifti(root / "imagesTr" / "liver_0.nii.gz", image, np.eye(4))
    write_nifti(root / "labelsTr" / "liver_0.nii.gz", label, np.eye(4))
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver"},
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    stream = open_source(str(root), size=8, keep_empty=0)
    assert stream.info["layout"] == "msd" and stream.info["modality"] == "CT"
    (s,) = stream.slices()
    assert s.sample_id == "liver_0/0002" and np.unique(s.mask).tolist() == [0, 1]


def test_png_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in (0, 1, 2):
        rgb = np.zeros((20, 10, 3), dtype=np.uint8)
        rgb[..., 0] = 200  # red: converted to grayscale, not refused
        rgb[0, 0] = 0  # the darkest pixel, which the padding takes
        mask = np.zeros((20, 10), dtype=np.uint8)
        if k != 1:
            mask[5:10, 2:5] = 3
        Image.fromarray(rgb, "RGB").save(tmp_path / "images" / f"pat7_{k:03d}.png")
        Image.fromarray(mask, "L").save(tmp_path / "masks" / f"pat7_{k:03d}.png")
    stream = open_source(str(tmp_path), size=10, keep_empty=0, modality="MRI")
    assert stream.info["layout"] == "png" and "unknown" in stream.info["spacing_note"]
    slices = list(stream.slices())
    assert [s.sample_id for s in slices] == ["pat7/0000", "pat7/0002"]
    s = slices[0]
    assert s.image.shape == s.mask.shape == (10, 10)
    assert s.spacing == pytest.approx((2.0, 2.0, 1.0))  # 1 mm * padded 20 / 10
    assert np.unique(s.mask).tolist() == [0, 3]
    assert s.image.max() == 60  # red (200, 0, 0) became grey level 60 (ITU-R 601 luma)
    assert (s.image[:, :2] == 0).all() and (s.image[:, -2:] == 0).all()  # 20 x 10 padded centered


def test_phantom_goes_through_the_same_slicing(monkeypatch):
    def generate_cases(num_cases: int, seed: int, modality: str = "CT"):
        for i in range(num_cases):
            image = np.full((16, 16, 4), -1000.0, dtype=np.float32)
            label = np.zeros((16, 16, 4), dtype=np.uint8)
            image[12:15, 8:12, 1:3] = 60.0
            label[12:15, 8:12, 1:3] = 1  # liver at large x = patient's right
            yield Volume(f"phantom_{seed}_{i}", image, label, (2.0, 2.0, 5.0), "CT")

    monkeypatch.setitem(sys.modules, "styleswap.generator.sources.phantom", types.SimpleNamespace(generate_cases=generate_cases))
    stream = open_source("phantom:2", size=16, keep_empty=0, seed=5)
    assert stream.info["num_cases"] == 2 and stream.info["modality"] == "CT"
    slices = list(stream.slices())
    assert [s.sample_id for s in slices] == ["phantom_5_0/0001", "phantom_5_0/0002", "phantom_5_1/0001", "phantom_5_1/0002"]
    cols = np.nonzero(slices[0].mask)[1]
    assert cols.max() < 8  # patient's right -> image left half
    assert stream.info["normalization"]["per_case"]["phantom_5_0"]["method"] == "hu_window"


def test_streaming_is_lazy_and_restartable(tmp_path):
    image, label = marker_volume()
    src = pair(tmp_path, image, label, np.eye(4))
    stream = open_source(src, size=8, keep_empty=1, modality="MRI")
    Path(src.split(":")[0]).write_bytes(b"")  # opening read nothing yet; streaming reads now
    with pytest.raises(Exception, match="empty file"):
        list(stream.slices())
    write_nifti(Path(src.split(":")[0]), image, np.eye(4))
    first = [s.image.tobytes() for s in stream.slices()]
    assert first == [s.image.tobytes() for s in stream.slices()] and len(first) == 3


# --- real data ---------------------------------------------------------------------------------------


def _one_case_nnunet(tmp_path: Path, dataset: Path, case: str) -> Path:
    root = tmp_path / dataset.name
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").symlink_to(dataset / "dataset.json")
    (root / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(dataset / "imagesTr" / f"{case}_0000.nii.gz")
    (root / "labelsTr" / f"{case}.nii.gz").symlink_to(dataset / "labelsTr" / f"{case}.nii.gz")
    return root


def _check_orientation(slices) -> None:
    masks = np.stack([s.mask for s in slices])
    size = masks.shape[-1]
    liver = np.nonzero(masks == DEFAULT_LABELS["liver"])
    spleen = np.nonzero(masks == DEFAULT_LABELS["spleen"])
    kidneys = np.nonzero(np.isin(masks, [DEFAULT_LABELS["kidney_right"], DEFAULT_LABELS["kidney_left"]]))
    right_kidney = np.nonzero(masks == DEFAULT_LABELS["kidney_right"])
    left_kidney = np.nonzero(masks == DEFAULT_LABELS["kidney_left"])
    assert liver[2].mean() < size / 2 < spleen[2].mean()  # patient's right on the image's left
    assert right_kidney[2].mean() < size / 2 < left_kidney[2].mean()
    assert kidneys[1].mean() > liver[1].mean()  # kidneys are posterior: anterior is at the top


@pytest.mark.realdata
@pytest.mark.parametrize(
    "dataset, case, modality, thickness",
    [("abdomen-ct", "sabs_00", "CT", 3.0), ("abdomen-mr-dev", "chaos_01", "MRI", 7.7)],
)
def test_real_nnunet_case(shared_data, tmp_path, dataset, case, modality, thickness):
    root = _one_case_nnunet(tmp_path, shared_data / dataset, case)
    stream = open_source(str(root), size=96, keep_empty=0)
    assert stream.info["modality"] == modality and stream.info["num_cases"] == 1
    slices = list(stream.slices())
    assert len(slices) > 10
    in_plane = nib.load(str(root / "imagesTr" / f"{case}_0000.nii.gz")).header.get_zooms()[0]
    extent = nib.load(str(root / "imagesTr" / f"{case}_0000.nii.gz")).shape[0]
    for s in slices:
        assert s.image.shape == s.mask.shape == (96, 96)
        assert s.image.dtype == s.mask.dtype == np.uint8
        assert set(np.unique(s.mask)) <= {0, 1, 2, 3, 4} and s.mask.any()
        assert s.spacing == pytest.approx((in_plane * extent / 96, in_plane * extent / 96, thickness), rel=1e-4)
        assert s.modality == modality and s.sample_id == f"{case}/{s.slice_index:04d}"
    assert len({s.slice_index for s in slices}) == len(slices)
    assert max(s.image.max() for s in slices) == 255 and min(s.image.min() for s in slices) == 0
    _check_orientation(slices)
    assert stream.info["normalization"]["per_case"][case]["method"] == "percentiles"  # not HU


@pytest.mark.realdata
@pytest.mark.parametrize(
    "image, label, modality, axcodes, method",
    [
        ("example_ct_sm.nii.gz", "example_seg.nii.gz", "CT", ("R", "A", "S"), "hu_window"),
        ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MRI", ("L", "P", "S"), "percentiles"),
    ],
)
def test_real_totalsegmentator_pair(shared_data, image, label, modality, axcodes, method):
    folder = shared_data / "smoke-totalseg"
    assert nib.aff2axcodes(nib.load(str(folder / image)).affine) == axcodes  # the point of the test
    stream = open_source(f"{folder / image}:{folder / label}", labels=TS_LABELS, modality=modality, size=96, keep_empty=0)
    slices = list(stream.slices())
    assert slices
    present = set(np.unique(np.stack([s.mask for s in slices])).tolist())
    assert present <= {0, 1, 2, 3, 4} and {1, 4} <= present  # liver (5 -> 1) and spleen (1 -> 4) kept
    _check_orientation(slices)
    assert stream.info["normalization"]["per_case"][image.removesuffix(".nii.gz")]["method"] == method
