"""Losses: Dice + cross-entropy for segmentation, and CUT's patch-wise InfoNCE (PatchNCE).

PatchNCE (Park et al., "Contrastive Learning for Unpaired Image-to-Image Translation", 2020),
as used here: for each image, ``P`` spatial locations are sampled (the same locations in the
original and in its copy, which share geometry). The query is the original's feature vector at a
location, the positive key the copy's feature at the same location, and the negatives the copy's
features at the other ``P - 1`` sampled locations of the same image. With L2-normalised vectors
and temperature ``tau`` the loss of image ``b`` is the cross-entropy of the ``P x P`` logits
``q_b @ k_b.T / tau`` against the diagonal::

    loss = mean_{b, i} [ -log( exp(q_bi . k_bi / tau) / sum_j exp(q_bi . k_bj / tau) ) ]

(CUT concatenates the positive logit with the negatives and masks the diagonal with -10/tau,
which is the same quantity up to a term of exp(-10/0.07) ~ 0.)

``negatives="batch"`` takes the negatives from the other images of the batch instead, at the same
location (the InfoNCE of the causal style-intervention paper's released code, arXiv 2411.05223,
used there on bottleneck features with a 2-layer projection and temperature 0.2): the logits of
location ``i`` are the ``B x B`` matrix ``q_.i @ k_.i.T / tau`` against its diagonal.

Which side is detached: the *keys* (the copy's features) are detached by default, as in CUT, so
the InfoNCE gradient reaches the network only through the *original* branch (the copy branch is
still trained by its own Dice term). ``detach_keys=False`` lets it flow through both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn


class SegLoss(nn.Module):
    """MONAI ``DiceCELoss`` on logits and integer label maps.

    Shapes: ``logits`` (B, C, H, W); ``target`` (B, 1, H, W) integer ids in [0, C). Returns a scalar.
    Dice is computed per image and class (background included) with softmax probabilities, and
    averaged; CE is the mean over pixels. Both weights 1.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, ...) label ids, got {tuple(target.shape)}")
        return self.loss(logits.float(), target)


class PatchProjector(nn.Module):
    """CUT's per-layer projection head: Linear-ReLU-Linear applied to each sampled vector.

    Shapes: (..., in_channels) -> (..., out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, out_channels), nn.ReLU(inplace=True), nn.Linear(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sample_locations(height: int, width: int, num_patches: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``min(num_patches, H*W)`` distinct flat indices into an (H, W) grid (shared across the batch)."""
    perm = torch.randperm(height * width, generator=generator)
    return perm[: min(num_patches, height * width)].to(device)


NEGATIVES = ("image", "batch")


def patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.07, negatives: str = "image") -> torch.Tensor:
    """InfoNCE over sampled patch vectors, negatives from the same image (or the same location of
    the other images of the batch: ``negatives="batch"``).

    Shapes: ``query``, ``key`` (B, P, D) (not necessarily normalised; they are L2-normalised here).
    Returns the mean over B*P of the cross-entropy of ``q @ k.T / temperature`` against the diagonal.
    """
    if query.shape != key.shape or query.ndim != 3:
        raise ValueError(f"query and key must both be (B, P, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(key.float(), dim=-1)
    if negatives == "batch":  # (P, B, D): each location compares the batch's images with each other
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    logits = torch.bmm(q, k.transpose(1, 2)) / temperature  # (B, P, P)
    b, p, _ = logits.shape
    target = torch.arange(p, device=logits.device).expand(b, p)
    return F.cross_entropy(logits.reshape(b * p, p), target.reshape(b * p))


class PatchNCELoss(nn.Module):
    """PatchNCE between encoder features of originals (queries) and copies (keys).

    Args:
        channels: channel count of each feature map passed to ``forward`` (one per layer); needed
            only for the projection heads.
        num_patches: locations sampled per layer (CUT: 256).
        temperature: softmax temperature (CUT: 0.07).
        use_mlp: project sampled vectors with a small MLP (CUT's ``netF``) before the loss.
        mlp_dim: width of the projection.
        detach_keys: stop the gradient on the keys (the copy side); see the module docstring.
        negatives: ``image`` (CUT: other locations of the same image) or ``batch`` (the same
            location in the other images of the batch).

    ``forward(feats_q, feats_k)``: two sequences of (B, C_l, H_l, W_l) maps (same shapes pairwise).
    Returns the mean over layers of `patch_nce`.
    """

    def __init__(
        self,
        channels: Sequence[int] = (),
        num_patches: int = 256,
        temperature: float = 0.07,
        use_mlp: bool = True,
        mlp_dim: int = 256,
        detach_keys: bool = True,
        negatives: str = "image",
    ) -> None:
        super().__init__()
        if num_patches < 2:
            raise ValueError(f"num_patches must be >= 2 (one positive and at least one negative), got {num_patches}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_patches = num_patches
        self.temperature = temperature
        self.detach_keys = detach_keys
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives
        self.heads = nn.ModuleList([PatchProjector(c, mlp_dim) for c in channels]) if use_mlp else None

    def forward(
        self,
        feats_q: Sequence[torch.Tensor],
        feats_k: Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if len(feats_q) != len(feats_k) or not feats_q:
            raise ValueError(f"need the same non-zero number of query and key layers, got {len(feats_q)} and {len(feats_k)}")
        if self.heads is not None and len(self.heads) != len(feats_q):
            raise ValueError(f"built with {len(self.heads)} projection heads, got {len(feats_q)} layers")
        losses = []
        for i, (fq, fk) in enumerate(zip(feats_q, feats_k)):
            if fq.shape != fk.shape:
                raise ValueError(f"layer {i}: query {tuple(fq.shape)} and key {tuple(fk.shape)} differ")
            b, c, h, w = fq.shape
            ids = sample_locations(h, w, self.num_patches, generator, fq.device)
            q = fq.flatten(2).transpose(1, 2)[:, ids]  # (B, P, C)
            k = fk.flatten(2).transpose(1, 2)[:, ids]
            if self.heads is not None:
                q, k = self.heads[i](q.float()), self.heads[i](k.float())
            if self.detach_keys:
                k = k.detach()
            losses.append(patch_nce(q, k, self.temperature, self.negatives))
        return torch.stack(losses).mean()
