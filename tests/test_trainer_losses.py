"""PatchNCE and segmentation loss: hand-computed values, gradient routing, ordering of losses."""

import math

import pytest
import torch

from styleswap.trainer.losses import PatchNCELoss, SegLoss, patch_nce

torch.set_num_threads(1)


def test_patch_nce_matches_hand_computed_two_patch_case():
    # two locations (H=1, W=2), 2 channels, unit vectors so normalisation is a no-op
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # rows: location 0, 1
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    tau = 0.5
    # similarity logits s_ij = q_i . k_j / tau: [[0.8, 0.0], [0.96, 0.8]] / tau; positives on the diagonal
    row0 = -0.8 / tau + math.log(math.exp(0.8 / tau) + math.exp(0.0 / tau))
    row1 = -0.8 / tau + math.log(math.exp(0.96 / tau) + math.exp(0.8 / tau))
    expected = (row0 + row1) / 2
    assert patch_nce(q[None], k[None], tau).item() == pytest.approx(expected, rel=1e-6)
    # same through the module (feature maps (B, C, H, W); sampled order does not matter)
    loss = PatchNCELoss(num_patches=2, temperature=tau, use_mlp=False)
    fq, fk = q.T.reshape(1, 2, 1, 2), k.T.reshape(1, 2, 1, 2)
    assert loss([fq], [fk], generator=torch.Generator().manual_seed(0)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("use_mlp", [False, True])
def test_identical_features_beat_shuffled(use_mlp):
    torch.manual_seed(0)
    f = torch.randn(2, 16, 8, 8)
    shuffled = f.flatten(2)[:, :, torch.randperm(64)].reshape(f.shape)
    loss = PatchNCELoss([16], num_patches=32, use_mlp=use_mlp)
    same = loss([f], [f], generator=torch.Generator().manual_seed(1))
    other = loss([f], [shuffled], generator=torch.Generator().manual_seed(1))
    assert same.item() < other.item()
    if not use_mlp:
        assert same.item() < 0.1 * math.log(32)  # near zero: positives dominate at tau=0.07


@pytest.mark.parametrize(
    "detach_keys, key_gets_grad",
    [(True, False), (False, True)],
)
def test_gradient_reaches_original_branch_only_when_keys_detached(detach_keys, key_gets_grad):
    torch.manual_seed(0)
    fq = torch.randn(2, 8, 4, 4, requires_grad=True)  # original (queries)
    fk = torch.randn(2, 8, 4, 4, requires_grad=True)  # copy (keys)
    loss = PatchNCELoss([8], num_patches=16, detach_keys=detach_keys)
    loss([fq], [fk]).backward()
    assert fq.grad is not None and fq.grad.abs().sum() > 0
    if key_gets_grad:
        assert fk.grad is not None and fk.grad.abs().sum() > 0
    else:
        assert fk.grad is None


def test_patch_nce_rejects_bad_arguments():
    with pytest.raises(ValueError):
        PatchNCELoss(num_patches=1)
    with pytest.raises(ValueError):
        PatchNCELoss(temperature=0)
    with pytest.raises(ValueError):
        PatchNCELoss(use_mlp=False)([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 4, 4)])


@pytest.mark.parametrize(
    "good, expect_low",
    [(True, True), (False, False)],
)
def test_seg_loss_rewards_correct_logits(good, expect_low):
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1
    onehot = torch.nn.functional.one_hot(target[:, 0], 2).permute(0, 3, 1, 2).float()
    logits = (onehot if good else 1 - onehot) * 20 - 10
    value = SegLoss()(logits, target).item()
    assert (value < 0.05) == expect_low


def test_batch_negatives_compare_the_same_location_across_images():
    """negatives="batch": location i of image b against location i of every image of the batch."""
    # two images, one location, 2-D features: q_0 = e1, q_1 = e2; k_0 = e1, k_1 = (e1 + e2)/sqrt2
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    k = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    t = 0.5
    c = 1 / math.sqrt(2)
    # image 0: logits (1, c)/t, positive first; image 1: logits (0, c)/t, positive second
    expect = 0.5 * (-math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(c / t)))
                    - math.log(math.exp(c / t) / (1 + math.exp(c / t))))  # fmt: skip
    assert patch_nce(q, k, t, negatives="batch").item() == pytest.approx(expect, rel=1e-5)
    # with one location per image the per-image variant has no negative: its loss is 0
    assert patch_nce(q, k, t, negatives="image").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="negatives"):
        patch_nce(q, k, t, negatives="everything")


def test_effb2_exposes_its_five_encoder_stages():
    from styleswap.trainer.model import SegNet, default_config

    net = SegNet(default_config(3, "effb2"))
    logits, feats = net(torch.zeros(1, 1, 64, 64), return_features=True)
    assert logits.shape == (1, 3, 64, 64)
    assert [f.shape[1] for f in feats] == net.feature_channels == [16, 24, 48, 120, 352]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
