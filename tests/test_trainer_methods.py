"""The peers' methods in our trainer (SLAug, GIN-IPA) and the stronger geometry, on hand-made tensors."""

from __future__ import annotations

import json

import pytest
import torch

from styleswap.trainer.augment import Views, geometric_augment
from styleswap.trainer.augment import bezier_remap, classwise_location_scale, global_location_scale, location_scale
from styleswap.trainer.methods import METHODS, derive_step, ipa_field, saliency_map


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bezier_remap_keeps_the_range_and_is_monotone_unless_inverse():
    x = torch.linspace(0.2, 0.9, 500)
    y = bezier_remap(x, gen(1), inverse=False)
    assert y[0] == pytest.approx(0.2, abs=1e-6) and y[-1] == pytest.approx(0.9, abs=1e-6)
    assert torch.all(y[1:] >= y[:-1] - 1e-6)  # monotone: contrast order kept
    # an inverting curve keeps the range and falls: the darkest value becomes the brightest
    ys = bezier_remap(x, gen(3), inverse=True)
    assert ys[0] == pytest.approx(0.9, abs=1e-6) and ys[-1] == pytest.approx(0.2, abs=1e-6)
    assert torch.all(ys[1:] <= ys[:-1] + 1e-6)
    assert not torch.allclose(bezier_remap(x, gen(4), inverse=False), y)  # each draw its own curve


def test_location_scale_stays_in_unit_range_and_keeps_the_middle_inside():
    v = torch.linspace(0.0, 1.0, 101)
    for s in range(10):
        out = location_scale(v, gen(s))
        assert out.min() >= 0 and out.max() <= 1
        # the 20th..80th percentiles are never pushed out of [0, 1] (the location is clipped so)
        mid = out[20:81]
        assert mid.min() > 0.0 or mid.max() < 1.0


def test_classwise_location_scale_keeps_air_and_changes_organs_independently():
    x = torch.full((1, 1, 8, 8), 0.5)
    x[..., :2, :] = 0.0  # air
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    mask[..., 4:, :4] = 1
    mask[..., 4:, 4:] = 2
    x[..., 4:, :4] = torch.linspace(0.3, 0.6, 16).view(4, 4)
    x[..., 4:, 4:] = torch.linspace(0.3, 0.6, 16).view(4, 4)
    out = classwise_location_scale(x, mask, gen(2), num_classes=3)
    assert torch.equal(out[..., :2, :], x[..., :2, :])  # air (<= 0.01) untouched
    assert out.min() >= 0 and out.max() <= 1
    # the same intensities in two organs map differently: each organ drew its own curve
    assert not torch.allclose(out[..., 4:, :4], out[..., 4:, 4:])
    g = global_location_scale(x, gen(2))
    assert g.shape == x.shape and g.min() >= 0 and g.max() <= 1


def test_saliency_map_is_a_smooth_unit_range_weight_led_by_the_strongest_gradient():
    grad = torch.zeros(2, 1, 48, 48)
    grad[0, :, :16, :16] = 1.0  # top-left cell of the 3x3 grid carries all the saliency
    grad[1] = torch.randn(1, 48, 48, generator=gen(0))
    s = saliency_map(grad)
    assert s.shape == grad.shape and s.min() >= 0 and s.max() <= 1 + 1e-6
    assert s[0, 0, 0, 0] == pytest.approx(1.0) and s[0, 0, -1, -1] == pytest.approx(0.0, abs=1e-6)
    diag = s[0, 0].diagonal()
    assert torch.all(diag[1:24] < diag[:23])  # falls off smoothly from the salient cell, no hard tile edge
    assert diag[8] == pytest.approx((1 - 8 / 23.5) ** 2, abs=1e-4)  # bilinear between cell centres 23.5 px apart


def test_ipa_blends_two_views_with_complementary_weights():
    f = ipa_field(3, (32, 32), gen(4))
    assert f.shape == (3, 1, 32, 32) and f.min() >= 0 and f.max() <= 1 + 1e-6
    assert torch.all(f.amax(dim=(2, 3)) > 0.99) and torch.all(f.amin(dim=(2, 3)) < 0.01)  # rescaled per image
    a, b, c = (torch.rand(3, 1, 32, 32, generator=gen(i)) for i in range(3))
    views = Views([a, b, c], [True] * 3, torch.zeros(3, 1, 32, 32, dtype=torch.long), torch.zeros(3, 2))
    out = derive_step(METHODS["gin-ipa"], 2)(views, gen(4)).images
    torch.testing.assert_close(out[0] + out[1], a + b)  # IPA redistributes, never invents intensity
    assert torch.equal(out[2], c) and not torch.allclose(out[0], a)


def test_fresh_gin_ipa_draws_three_new_gin_networks_per_slice_every_step():
    from styleswap.gin import gin_forward

    x = torch.zeros(2, 1, 24, 24)
    x[:, :, 6:18, 8:16] = torch.linspace(0.3, 0.9, 8)  # an organ with a gradient, on air
    mask = (x > 0).long()
    views = Views([x], [False], mask, torch.zeros(2, 2))
    out = derive_step(METHODS["gin-ipa-fresh"], 2)(views, gen(5))
    assert len(out.images) == 3 and out.is_copy == [True, True, True] and torch.equal(out.mask, mask)
    # by hand: three seeds per slice from the step's generator, GIN of the original, then IPA's field
    g = gen(5)
    seeds = torch.randint(2**62, (6,), generator=g).tolist()
    gins = gin_forward(x[:, 0].repeat(3, 1, 1), seeds).unsqueeze(1)
    a, b, c = gins[:2], gins[2:4], gins[4:]
    torch.testing.assert_close(out.images[0] + out.images[1], a + b)  # IPA redistributes two GIN images
    assert torch.equal(out.images[2], c)
    assert all(im.min() >= 0 and im.max() <= 1 for im in out.images)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)  # three different networks
    # the same generator replays the step (resume); the next step's draw is new
    again = derive_step(METHODS["gin-ipa-fresh"], 2)(views, gen(5)).images
    assert all(torch.equal(p, q) for p, q in zip(again, out.images))
    other = derive_step(METHODS["gin-ipa-fresh"], 2)(views, gen(6)).images
    assert not torch.allclose(other[2], out.images[2])
    # a GIN network is shallow and local: air stays one flat value, the organ's edge stays in place
    for im in gins[:, 0]:
        air = im[:4, :4]
        assert air.max() - air.min() < 1e-5
        assert (im[12, 7] - im[12, 8]).abs() > 1e-3 or (im[12, 16] - im[12, 15]).abs() > 1e-3
    assert METHODS["gin-ipa-fresh"].copies == 0 and METHODS["gin-ipa-fresh"].uses_original


def test_released_gin_mixes_the_raw_net_output_then_rescales_to_the_input_norm():
    from styleswap.gin import _draw_net, gin_forward_released

    # one 1x1 layer: the net is w * x + b, so the released GIN is computable by hand
    z = torch.randn(3, 8, 8, generator=gen(1))  # z-scored slices: negative values are normal
    seeds = [11, 12, 13]
    out = gin_forward_released(z, seeds, layers=1, kernel_sizes=(1,))
    for i, s in enumerate(seeds):
        (w,), (b,), alpha = _draw_net(s, 1, 2, (1,), 1)
        mixed = alpha * (w.item() * z[i] + b.item()) + (1 - alpha) * z[i]
        torch.testing.assert_close(out[i], mixed * z[i].norm() / mixed.norm())
    torch.testing.assert_close(out.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1))  # the input's energy
    assert out.min() < 0  # no min-max to [0, 1]
    # zero padding: a 3x3 net of a constant slice darkens its border, where replicate would not
    deep = gin_forward_released(torch.ones(4, 12, 12), [1, 2, 3, 4])
    assert any((im[0, 6] - im[6, 6]).abs() > 1e-4 for im in deep)
    assert all((im[3:9, 3:9] - im[6, 6]).abs().max() < 1e-5 for im in deep)  # the inside stays flat


def test_released_gin_ipa_feeds_the_network_its_gin_of_the_z_scored_slice():
    from styleswap.gin import gin_forward_released
    from styleswap.trainer.model import normalize_input

    x = torch.rand(2, 1, 24, 24, generator=gen(2)) * 0.5
    stats = torch.tensor([[0.2, 0.1], [0.3, 0.2]])  # each slice's volume mean and std
    views = Views([x], [False], torch.zeros(2, 1, 24, 24, dtype=torch.long), stats)
    out = derive_step(METHODS["gin-ipa-released"], 2)(views, gen(5))
    assert len(out.images) == 3 and out.is_copy == [True, True, True]
    g = gen(5)  # by hand: the same seeds, GIN of the z-scored slice; what the network reads after Normalize
    seeds = torch.randint(2**62, (6,), generator=g).tolist()
    z = ((x - stats[:, :1, None, None]) / stats[:, 1:, None, None])[:, 0].repeat(3, 1, 1)
    gins = gin_forward_released(z, seeds).unsqueeze(1)
    read = [normalize_input(im, stats, "zscore") for im in out.images]
    torch.testing.assert_close(read[2], gins[4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(read[0] + read[1], gins[:2] + gins[2:4], atol=1e-5, rtol=1e-5)  # IPA redistributes
    assert not torch.allclose(read[0], gins[:2], atol=1e-3)


def test_released_ipa_field_spreads_weights_where_the_log_normal_one_peaks():
    lin = ipa_field(16, (32, 32), gen(8), log_normal=False)
    log = ipa_field(16, (32, 32), gen(8))
    assert lin.min() >= 0 and lin.max() <= 1 + 1e-6 and torch.all(lin.amax(dim=(2, 3)) > 0.99)
    # same draws: min-max of a convex increasing map of the field lies below min-max of the field
    assert torch.all(log <= lin + 1e-5) and (lin - log).mean() > 0.05


def test_released_gin_ipa_is_refused_without_zscore_or_with_clipping_jitter():
    from styleswap.errors import StyleSwapError
    from styleswap.trainer.config import TrainConfig

    ok = dict(data=["d"], out="o", loss="gin-ipa-released", input_norm="zscore")
    TrainConfig(**ok).validate()
    for bad in ({"input_norm": "unit"}, {"intensity_aug": "standard"}):
        with pytest.raises(StyleSwapError, match="gin-ipa-released needs --input-norm zscore and --intensity-aug none"):
            TrainConfig(**{**ok, **bad}).validate()


def test_slaug_derives_gla_and_lla_from_the_original():
    x = torch.rand(2, 1, 16, 16, generator=gen(0))
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    mask[:, :, 4:10, 4:10] = 1
    views = Views([x], [False], mask, torch.zeros(2, 2))
    out = derive_step(METHODS["slaug"], 2)(views, gen(1))
    assert len(out.images) == 2 and out.is_copy == [True, True]
    assert all(im.shape == x.shape and not torch.equal(im, x) for im in out.images)


def test_slaug_on_copies_starts_each_slice_from_its_original_or_its_copy():
    # every pixel is air (<= 0.01), which LLA keeps as it is, so its output tells which image each
    # slice started from: the original (0.0) or the copy (0.005)
    n = 64
    orig = torch.zeros(n, 1, 8, 8)
    copy = torch.full((n, 1, 8, 8), 0.005)
    mask = torch.zeros(n, 1, 8, 8, dtype=torch.long)
    views = Views([orig, copy], [False, True], mask, torch.zeros(n, 2))
    out = derive_step(METHODS["slaug+copies"], 2)(views, gen(2))
    assert len(out.images) == 2 and out.is_copy == [True, True]
    lla = out.images[1]
    from_copy = [bool(torch.all(lla[i] == 0.005)) for i in range(n)]
    from_orig = [bool(torch.all(lla[i] == 0.0)) for i in range(n)]
    assert all(a != b for a, b in zip(from_copy, from_orig))  # each slice came from exactly one of them
    assert 16 <= sum(from_copy) <= 48  # about half
    # the same generator draws the same choice: a resumed step replays it
    again = derive_step(METHODS["slaug+copies"], 2)(views, gen(2)).images[1]
    assert torch.equal(again, lla)
    # plain slaug never reads a copy
    assert METHODS["slaug"].copies == 0 and METHODS["slaug+copies"].copies == 1


def test_shear_shift_and_elastic_move_image_and_mask_together():
    img = torch.zeros(4, 1, 32, 32)
    img[:, :, 10:20, 12:22] = 1.0
    mask = (img > 0.5).long() * 2
    (out,), m = geometric_augment([img], mask, gen(5), flip_prob=0.0, rotate_deg=0.0, scale=0.0, shear_deg=20,
                                  shift=0.1, elastic=3.0)  # fmt: skip
    assert set(m.unique().tolist()) <= {0, 2}
    assert not torch.equal(m, mask)  # the square moved or bent
    # image and mask moved together: where the mask says organ, the image is bright
    inside = out[m == 2]
    assert inside.numel() > 0 and inside.mean() > 0.8
    # all-zero settings draw nothing and change nothing
    g = gen(7)
    (same,), m2 = geometric_augment([img], mask, g, flip_prob=0.0, rotate_deg=0.0, scale=0.0)
    assert torch.equal(same, img) and torch.equal(m2, mask)


@pytest.mark.parametrize("loss", ["gin-ipa", "gin-ipa-fresh", "gin-ipa-released", "slaug", "slaug+copies"])
def test_peer_methods_train_end_to_end(tmp_path, loss):
    from styleswap.trainer.train import TrainConfig, train_segmentation
    from trainer_fixtures import write_dataset

    released = loss == "gin-ipa-released"  # z-scored input and no jitter, as its released code
    data = write_dataset(tmp_path / "d", n_cases=2, slices=4, size=16, copies=3, volume_stats=released)
    summary = train_segmentation(TrainConfig(data=[str(data)], out=str(tmp_path / "run"), steps=3, batch_size=4, channels=4,
                                             depth=3, num_res_units=1, workers=0, loss=loss, progress=False, log_every=1,
                                             checkpoint_every=3, intensity_aug="none" if released else "standard",
                                             input_norm="zscore" if released else "unit"))  # fmt: skip
    assert summary["steps"] == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    if loss.startswith("gin-ipa"):  # the consistency term is logged in the extra column
        assert all(float(r.split(",")[4]) >= 0 for r in rows)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["loss"] == loss


def test_lla_on_copies_remaps_about_half_of_them_and_never_the_original():
    from styleswap.trainer.augment import random_classwise_location_scale

    x = torch.rand(16, 1, 16, 16, generator=gen(0)) * 0.9 + 0.05
    mask = torch.zeros(16, 1, 16, 16, dtype=torch.long)
    mask[:, :, 4:12, 4:12] = 1
    out = random_classwise_location_scale(x, mask, gen(3), num_classes=2)
    changed = [not torch.equal(out[i], x[i]) for i in range(16)]
    assert 3 <= sum(changed) <= 13  # a fraction of 0.5
    assert out.min() >= 0 and out.max() <= 1
