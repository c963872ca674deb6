"""Learning-rate schedules, photometric jitter and the largest-component post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from styleswap.trainer.evaluate import dice_per_organ, keep_largest_component
from styleswap.trainer.augment import bias_field, intensity_augment, organ_intensity_shift
from styleswap.trainer.config import parse_intensity_augs
from styleswap.trainer.schedule import lr_at


def test_lr_schedules_against_hand_values():
    assert lr_at(0, 100, 1e-3) == lr_at(99, 100, 1e-3) == 1e-3
    # cosine: base at the start, base/2 halfway, 0 at the end
    assert lr_at(0, 100, 1e-3, "cosine") == pytest.approx(1e-3)
    assert lr_at(50, 100, 1e-3, "cosine") == pytest.approx(0.5e-3)
    assert lr_at(100, 100, 1e-3, "cosine") == pytest.approx(0.0, abs=1e-12)
    # poly: nnU-Net's (1 - t)^0.9
    assert lr_at(50, 100, 1e-3, "poly") == pytest.approx(1e-3 * 0.5**0.9)
    # warm-up: linear to base over 10 steps, then the schedule runs over the remaining 90
    assert lr_at(0, 100, 1e-3, "cosine", warmup=10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, "cosine", warmup=10) == pytest.approx(1e-3)
    assert lr_at(55, 100, 1e-3, "cosine", warmup=10) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0, 10, 1e-3, "step")


def test_intensity_jitter_is_seeded_bounded_and_per_image():
    x = torch.linspace(0, 1, 2 * 32 * 32).reshape(2, 1, 32, 32)
    a = intensity_augment(x, torch.Generator().manual_seed(3))
    b = intensity_augment(x, torch.Generator().manual_seed(3))
    c = intensity_augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    assert not torch.allclose(a, x, atol=1e-3)  # it changes intensities
    assert intensity_augment(x, torch.Generator(), "none") is x
    # each image draws its own parameters: the same input in two batch slots comes out different
    same = x[:1].repeat(2, 1, 1, 1)
    out = intensity_augment(same, torch.Generator().manual_seed(0))
    assert not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="unknown intensity augmentation"):
        intensity_augment(x, torch.Generator(), "heavy")


def _two_organ_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A 16 x 16 ramp image with organ 1 in rows 2-7 and organ 2 in rows 9-14, both at columns 2-9."""
    x = (torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16) / 255.0) * 0.5 + 0.25
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    mask[..., 2:8, 2:10] = 1
    mask[..., 9:15, 2:10] = 2
    return x, mask


def test_organ_shift_maps_each_organ_linearly_by_hand_and_leaves_background():
    x, mask = _two_organ_image()
    g = torch.Generator().manual_seed(5)
    y = organ_intensity_shift(x, mask, g, num_classes=3, prob=1.0, scale=(2.0, 2.0), shift=0.0, invert_prob=1.0)
    # a = -2 for both organs (inverted), b = 0: an interior pixel becomes m - 2 (x - m), m the organ mean
    for organ, rows in ((1, slice(3, 7)), (2, slice(10, 14))):
        m = x[mask == organ].mean()
        inner = (slice(None), slice(None), rows, slice(3, 9))  # the 3 x 3 box sees only this organ
        expected = (m - 2 * (x[inner] - m)).clamp(0, 1)
        torch.testing.assert_close(y[inner], expected)
    # background two pixels away from any organ: untouched
    far = torch.zeros(16, 16, dtype=torch.bool)
    far[:, 12:] = True
    far[0, :] = True
    assert torch.equal(y[0, 0][far], x[0, 0][far])
    # the edge is blended over one pixel: the background pixel left of organ 1's middle row sees 3 of 9
    w = 3 / 9
    m1 = x[mask == 1].mean()
    edge = (1 - w) * x[0, 0, 4, 1] + w * (m1 - 2 * (x[0, 0, 4, 1] - m1))
    torch.testing.assert_close(y[0, 0, 4, 1], edge.clamp(0, 1))


def test_organ_shift_draws_per_organ_and_per_image_is_seeded_and_bounded():
    x, mask = _two_organ_image()
    xb, mb = x.repeat(4, 1, 1, 1), mask.repeat(4, 1, 1, 1)
    a = organ_intensity_shift(xb, mb, torch.Generator().manual_seed(1), num_classes=3, prob=1.0)
    b = organ_intensity_shift(xb, mb, torch.Generator().manual_seed(1), num_classes=3, prob=1.0)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[0], a[1])  # each image its own draw
    d = (a - xb)[0, 0]
    # the two organs moved by different amounts (their own maps)
    assert not torch.isclose(d[3:7, 3:9].mean(), d[10:14, 3:9].mean(), atol=1e-3)
    # prob 0: identity; no organs in the mask: identity
    assert torch.equal(organ_intensity_shift(xb, mb, torch.Generator(), num_classes=3, prob=0.0), xb)
    empty = torch.zeros_like(mb)
    assert torch.equal(organ_intensity_shift(xb, empty, torch.Generator(), num_classes=3, prob=1.0), xb)


def test_bias_field_is_smooth_positive_seeded_and_spares_some_images():
    x = torch.full((8, 1, 32, 32), 0.5)
    a = bias_field(x, torch.Generator().manual_seed(2), prob=0.5, strength=0.3)
    assert torch.equal(a, bias_field(x, torch.Generator().manual_seed(2), prob=0.5, strength=0.3))
    ratio = a / x  # the field itself, since nothing clips at 0.5 * exp(<= ~1)
    assert ratio.min() > 0 and a.max() <= 1
    untouched = [(ratio[i] == 1).all().item() for i in range(8)]
    assert any(untouched) and not all(untouched)  # prob 0.5 of 8 images: both kinds (this seed)
    shaded = ratio[untouched.index(False), 0]
    assert shaded.max() - shaded.min() > 0.05  # it really shades
    # smooth: neighbouring pixels differ far less than the field's range (a 4 x 4 grid over 32 px)
    assert (shaded[:, 1:] - shaded[:, :-1]).abs().max() < 0.25 * (shaded.max() - shaded.min())
    assert torch.equal(bias_field(x, torch.Generator(), prob=0.0), x)


def test_intensity_aug_lists_parse_and_refuse_unknown_names():
    assert parse_intensity_augs("standard,organ") == ("standard", "organ")
    assert parse_intensity_augs("standard+organ+bias") == ("standard", "organ", "bias")
    assert parse_intensity_augs("none") == () == parse_intensity_augs("")
    with pytest.raises(ValueError, match="unknown intensity augmentation 'heavy'"):
        parse_intensity_augs("standard,heavy")


def test_largest_component_removes_islands_and_raises_dice_as_computed_by_hand():
    gt = np.zeros((4, 10, 10), np.int64)
    gt[1:3, 2:6, 2:6] = 1  # organ 1: 2 x 4 x 4 = 32 voxels
    gt[1:3, 7:9, 7:9] = 2  # organ 2: 2 x 2 x 2 = 8 voxels
    pred = gt.copy()
    pred[0, 0, 9] = 1  # a one-voxel island of organ 1, far from it
    pred[3, 9, 0:2] = 2  # a two-voxel island of organ 2
    post = keep_largest_component(pred, num_classes=3)
    assert np.array_equal(post, gt)
    # before: organ 1 Dice = 2*32 / (33 + 32), organ 2 = 2*8 / (10 + 8)
    np.testing.assert_allclose(dice_per_organ(pred, gt, 3), [64 / 65, 16 / 18])
    np.testing.assert_allclose(dice_per_organ(post, gt, 3), [1.0, 1.0])
    # 26-connectivity: a diagonal neighbour across slices belongs to the same component
    diag = np.zeros((2, 3, 3), np.int64)
    diag[0, 0, 0] = diag[1, 1, 1] = 1
    assert np.array_equal(keep_largest_component(diag, 2), diag)
