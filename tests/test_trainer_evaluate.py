"""Dice conventions and 3D (per-case) evaluation against hand-computed values."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from styleswap.trainer.data import open_dataset
from styleswap.trainer.evaluate import (
    class_counts,
    confusion_matrix,
    counts_from_confusion,
    dice_from_confusion,
    dice_from_counts,
    dice_per_organ,
    INFERENCE_OPTIONS,
    Inference,
    evaluate_info,
    evaluate_options,
    fill_holes,
    metrics_markdown,
    summarize,
)
from trainer_fixtures import write_dataset

torch.set_num_threads(1)


def _mask(h, w, boxes):
    m = np.zeros((h, w), np.uint8)
    for lid, (r0, r1, c0, c1) in boxes:
        m[r0:r1, c0:c1] = lid
    return m


# (pred boxes, gt boxes, expected Dice for organs 1 and 2); 4x4 images, 3 classes
CASES = [
    ([(1, (0, 2, 0, 2))], [(1, (0, 2, 0, 2))], [1.0, math.nan]),  # perfect; organ 2 absent in both -> NaN
    ([(1, (0, 2, 0, 2)), (2, (3, 4, 3, 4))], [(1, (0, 2, 0, 2))], [1.0, 0.0]),  # false-positive organ -> 0
    ([(1, (0, 2, 0, 1))], [(1, (0, 2, 0, 2))], [2 * 2 / (2 + 4), math.nan]),  # half the organ -> 2/3
    ([(1, (0, 2, 1, 3))], [(1, (0, 2, 0, 2))], [2 * 2 / (4 + 4), math.nan]),  # shifted -> 0.5
    ([], [(2, (0, 1, 0, 1))], [math.nan, 0.0]),  # missed organ -> 0
]


@pytest.mark.parametrize("pred_boxes, gt_boxes, expected", CASES)
def test_dice_per_organ(pred_boxes, gt_boxes, expected):
    got = dice_per_organ(_mask(4, 4, pred_boxes), _mask(4, 4, gt_boxes), 3)
    np.testing.assert_allclose(got, expected, equal_nan=True)


def test_dice_is_volumetric_not_a_mean_over_slices():
    # slice A: 4 gt pixels, all predicted; slice B: no gt, 2 false-positive pixels
    gt = np.stack([_mask(4, 4, [(1, (0, 2, 0, 2))]), _mask(4, 4, [])])
    pred = np.stack([_mask(4, 4, [(1, (0, 2, 0, 2))]), _mask(4, 4, [(1, (3, 4, 0, 2))])])
    counts = [np.stack(class_counts(pred[i], gt[i], 3)) for i in range(2)]
    dice = dice_from_counts(*sum(counts))
    assert dice[0] == pytest.approx(2 * 4 / (6 + 4))  # 0.8; a slice mean would say (1 + 0) / 2
    assert dice[0] == pytest.approx(dice_per_organ(pred, gt, 3)[0])


def test_summary_excludes_nan_and_keeps_false_positives():
    case_dice = {"a": np.array([1.0, np.nan]), "b": np.array([0.5, 0.0])}
    m = summarize(case_dice, ["liver", "spleen"])
    assert m["per_organ"]["liver"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert m["per_organ"]["spleen"] == {"mean": 0.0, "std": 0.0, "n": 1}
    assert m["per_case"]["a"]["spleen"] is None and m["per_case"]["a"]["mean"] == 1.0
    assert m["per_case"]["b"]["mean"] == 0.25
    assert m["mean_dice"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["mean_dice_std"] == pytest.approx(np.std([1.0, 0.25]))
    json.dumps(m)  # no NaN in the JSON
    assert "| liver | 75.0 | 25.0 | 2 |" in metrics_markdown(m)


def test_confusion_matrix_by_hand_and_the_dice_sums_it_holds():
    gt = np.array([[1, 1, 1, 1], [2, 2, 0, 0]])
    pred = np.array([[1, 1, 2, 0], [2, 1, 0, 2]])
    # rows: ground truth 0, 1, 2; columns: predicted 0, 1, 2
    want = np.array([[1, 0, 1],  # background: one kept, one called organ 2
                     [1, 2, 1],  # organ 1: two found, one missed, one taken for organ 2
                     [0, 1, 1]])  # organ 2: one found, one taken for organ 1
    conf = confusion_matrix(pred, gt, 3)
    assert np.array_equal(conf, want)
    inter, psum, gsum = counts_from_confusion(conf)
    assert inter.tolist() == [2, 1] and psum.tolist() == [3, 3] and gsum.tolist() == [4, 2]
    rng = np.random.default_rng(0)
    for _ in range(5):  # against the sums counted organ by organ
        p, g = rng.integers(0, 5, (2, 7, 9))
        inter, psum, gsum = class_counts(p, g, 5)
        for k in range(1, 5):
            assert (inter[k - 1], psum[k - 1], gsum[k - 1]) == (((p == k) & (g == k)).sum(), (p == k).sum(), (g == k).sum())
    with pytest.raises(ValueError, match="label id 3"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_summary_says_where_missed_voxels_went():
    # case a: 4 liver voxels, 3 found and 1 missed; case b: 4 spleen voxels, 1 missed, 3 taken for liver
    conf = {"a": np.array([[10, 0, 0], [1, 3, 0], [0, 0, 0]]), "b": np.array([[8, 0, 0], [0, 0, 0], [1, 3, 0]])}
    case_dice = {c: dice_from_confusion(v) for c, v in conf.items()}
    m = summarize(case_dice, ["liver", "spleen"], case_confusion=conf)
    assert m["confusion"]["classes"] == ["background", "liver", "spleen"]
    assert m["confusion"]["voxels"] == [[18, 0, 0], [1, 3, 0], [1, 3, 0]]
    assert m["per_case"]["b"]["confusion"] == [[8, 0, 0], [0, 0, 0], [1, 3, 0]]
    assert m["per_case"]["b"]["spleen"] == 0.0 and m["per_case"]["b"]["liver"] == 0.0  # liver: 3 false positives
    json.dumps(m)
    md = metrics_markdown(m)
    assert "| ground truth | background | liver | spleen |" in md
    assert "| liver | 25.0 | 75.0 | 0.0 |" in md and "| spleen | 25.0 | 75.0 | 0.0 |" in md


class ThresholdModel(nn.Module):
    """Stub network: disk (0.8) -> 1, square (0.5) -> 2, else 0; or a fixed label everywhere."""

    def __init__(self, fixed: int | None = None):
        super().__init__()
        self.config = {"num_classes": 3}
        self.fixed = fixed

    def forward(self, x):
        lab = torch.where(x > 0.65, 1, torch.where(x > 0.3, 2, 0))[:, 0]
        if self.fixed is not None:
            lab = torch.full_like(lab, self.fixed)
        return nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float() * 10


def test_evaluate_info_groups_slices_by_case(tmp_path):
    info = open_dataset(write_dataset(tmp_path / "d", n_cases=3, slices=5, copies=0))
    metrics, overlays = evaluate_info(ThresholdModel(), info, batch_size=4, hd95=True)
    assert metrics["num_cases"] == 3 and metrics["num_slices"] == 15
    assert set(metrics["per_case"]) == {"case00", "case01", "case02"}
    assert metrics["mean_dice"] > 0.95
    assert metrics["per_organ"]["disk"]["hd95_mean"] is not None
    assert all(len(v) == 3 for v in overlays.values())
    # predicting "disk" everywhere: square Dice is 0 wherever a square exists (false negatives)
    bad, _ = evaluate_info(ThresholdModel(fixed=1), info, batch_size=4)
    assert bad["per_organ"]["square"]["mean"] == 0.0
    assert bad["per_organ"]["disk"]["mean"] < 0.4
    # ... and the confusion says where the square went: all of it to "disk", as every voxel did
    (bg, disk, square) = bad["confusion"]["voxels"]
    assert square[2] == 0 and square[0] == 0 and square[1] > 0 and bg[0] == 0
    assert sum(map(sum, bad["confusion"]["voxels"])) == 15 * np.prod(info.image_size)
    assert bad["confusion"]["voxels"] == np.sum([bad["per_case"][c]["confusion"] for c in bad["per_case"]], axis=0).tolist()


class IslandModel(ThresholdModel):
    """ThresholdModel plus a 2 x 2 "disk" island in the top-left corner of every slice, apart from the
    disk (its top is at row >= 3): a stray component that --largest-component removes, and that the
    test-time flip removes too (mirrored it says background there, a 0.5 / 0.5 tie that argmax gives
    to background)."""

    def forward(self, x):
        logits = super().forward(x).clone()
        logits[:, :, :2, :2] = 0
        logits[:, 1, :2, :2] = 10
        return logits


def test_one_pass_over_every_option_scores_each_as_alone(tmp_path):
    info = open_dataset(write_dataset(tmp_path / "d", n_cases=3, slices=5, copies=0))
    assert [o.name for o in INFERENCE_OPTIONS][:4] == ["plain", "tta", "fill-holes", "largest-component"]
    together = evaluate_options(IslandModel(), info, INFERENCE_OPTIONS, batch_size=4, hd95=True)
    for option in INFERENCE_OPTIONS:
        alone, alone_overlays = evaluate_info(IslandModel(), info, batch_size=4, hd95=True, **option._asdict())
        metrics, overlays = together[option]
        assert metrics == alone and metrics["tta"] == option.tta and metrics["fill_holes"] == option.fill_holes
        assert overlays.keys() == alone_overlays.keys()
        for case in overlays:
            for got, want in zip(overlays[case], alone_overlays[case], strict=True):
                assert got[0] == want[0] and all(np.array_equal(a, b) for a, b in zip(got[1:], want[1:]))
    # by hand: the island costs the disk some Dice; the flip or the largest component take it away,
    # leaving the figures of the model without it; filling holes alone does not (it is no hole)
    clean, _ = evaluate_info(ThresholdModel(), info, batch_size=4)
    disk = {o.name: together[o][0]["per_organ"]["disk"]["mean"] for o in INFERENCE_OPTIONS}
    assert disk["plain"] == disk["fill-holes"] < clean["per_organ"]["disk"]["mean"] - 0.01
    for name in ("tta", "largest-component", "tta+largest-component", "tta+fill-holes+largest-component"):
        assert disk[name] == pytest.approx(clean["per_organ"]["disk"]["mean"], abs=1e-12)
    # the confusion follows the post-processing: the island's voxels, background in truth, are
    # counted as disk on plain inference and as background once the largest component is kept
    # (the fixture's squares are no single 3D body, so the square's row changes too: not asserted)
    island = 3 * 5 * 4  # cases x slices x a 2 x 2 island
    plain = np.array(together[INFERENCE_OPTIONS[0]][0]["confusion"]["voxels"])
    kept = np.array(together[Inference(largest_component=True)][0]["confusion"]["voxels"])
    assert plain[0, 1] - kept[0, 1] == island and plain[0, 2] == kept[0, 2]
    assert np.array_equal(plain[1], kept[1])  # the disk's own voxels: untouched


def test_fill_holes_gives_an_organ_what_it_encloses_in_3d():
    vol = np.zeros((5, 7, 7), np.uint8)
    vol[1:4, 1:6, 1:6] = 1  # a 3 x 5 x 5 block of organ 1 ...
    vol[2, 3, 3] = 0  # ... with a hole,
    vol[2, 2, 2] = 2  # an island of organ 2 inside it,
    vol[3, 5, 5] = 0  # a dent in a corner, open to the outside (not enclosed),
    vol[0, 0, 0] = 2  # and organ 2 elsewhere, touching the border
    out = fill_holes(vol, 3)
    want = vol.copy()
    want[2, 3, 3] = want[2, 2, 2] = 1
    assert np.array_equal(out, want)
    # a 2D ring enclosing background in one slice only is open through the slices above and below
    ring = np.zeros((3, 5, 5), np.uint8)
    ring[1, 1:4, 1:4] = 1
    ring[1, 2, 2] = 0
    assert np.array_equal(fill_holes(ring, 2), ring)
    # then the largest component: the island joined the organ, so it is not dropped as stray
    both = Inference(fill_holes=True, largest_component=True).postprocess(vol, 3)
    assert both[2, 2, 2] == 1 and both[0, 0, 0] == 2
