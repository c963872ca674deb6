"""Training methods (``train seg --loss``): which views a step feeds the network, and its losses.

=============  ====================================  ===============================================
method         views (after `augment`)               loss
=============  ====================================  ===============================================
erm            the original                          Dice + CE
dice           original, one copy                    Dice + CE on each
dice+infonce   original, one copy                    ``dice`` + w * PatchNCE(original -> copy)
gin-ipa        three copies; copies 1 and 2          Dice + CE on blend 1 + w * KL(each view's
               blended by a random smooth field      prediction || their mean) (GIN-IPA: Ouyang et
               and its complement (IPA)              al., IEEE TMI 2022, arXiv:2111.12525)
gin-ipa-fresh  as gin-ipa, but three GIN images of   as gin-ipa
               the original drawn on the fly
gin-ipa-       as gin-ipa-fresh, GIN and the field   as gin-ipa
released       as the authors' released code
slaug          global (GLA) and class-wise (LLA)     Dice + CE on GLA, then on GLA and LLA fused by
               location-scale images of the          the GLA loss's smoothed input saliency (SBF)
               original, made on the fly             (SLAug: Su et al., AAAI 2023, arXiv:2211.14805)
=============  ====================================  ===============================================

The copies of ``gin-ipa`` are the dataset's own (``augment build --engine gin``): each step draws
three different stored copies per slice, so the network sees as many textures of a slice as the
build rendered. ``gin-ipa-fresh`` trains as the paper does: every step draws three new random GIN
networks per slice (the shared ``styleswap.gin``, with the engine's defaults) and applies them to
the original after the geometry, so no texture is ever seen twice. ``gin-ipa-released`` computes
them as the paper's released code does (`styleswap.gin.gin_forward_released`: on the z-scored
slice, unclipped) and blends them by its field (a smooth Gaussian field rescaled to [0, 1], where
``gin-ipa`` takes a log-normal one), so the row measures the peer as its authors ran it, not only
as its paper describes it. ``slaug+copies`` puts our
interventions under SLAug's: location-scale remaps intensities only, a GIN copy also changes
texture, so half the slices start from a texture the source never had. Every random draw comes from
the step's generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from styleswap.gin import gin_forward, gin_forward_released
from styleswap.trainer.augment import Views, classwise_location_scale, global_location_scale, smooth_field
from styleswap.trainer.model import normalize_input, zscore_inverse

Backward = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Method:
    name: str
    #: stored copies drawn per slice (0: the method does not read the ``augmented`` column)
    copies: int
    uses_original: bool


METHODS = {
    "erm": Method("erm", 0, True),
    "dice": Method("dice", 1, True),
    "dice+infonce": Method("dice+infonce", 1, True),
    "gin-ipa": Method("gin-ipa", 3, False),
    "gin-ipa-fresh": Method("gin-ipa-fresh", 0, True),
    "gin-ipa-released": Method("gin-ipa-released", 0, True),
    "slaug": Method("slaug", 0, True),
    "slaug+copies": Method("slaug+copies", 1, True),
}


def initial_views(method: Method, batch: dict[str, Any], device: torch.device) -> Views:
    """The batch's images in the order the method wants them, before augmentation."""
    images, is_copy = [], []
    if method.uses_original:
        images.append(batch["image"].to(device, non_blocking=True))
        is_copy.append(False)
    if method.copies:
        copies = batch["augmented"].to(device, non_blocking=True)  # (B, copies, H, W)
        images += [copies[:, i : i + 1] for i in range(method.copies)]
        is_copy += [True] * method.copies
    return Views(images, is_copy, batch["mask"].to(device, non_blocking=True), batch["stats"])


def derive_step(method: Method, num_classes: int):
    """The method's own augmentation step (None if it has none), run after the geometry."""
    if method.name in ("slaug", "slaug+copies"):
        def slaug(views: Views, generator: torch.Generator) -> Views:
            x = views.images[0]
            if len(views.images) == 2:  # slaug+copies: per slice, the original or its copy
                use_copy = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
                x = torch.where(use_copy.view(-1, 1, 1, 1), views.images[1], x)
            return replace(views, images=[global_location_scale(x, generator), classwise_location_scale(x, views.mask, generator, num_classes)],
                           is_copy=[True, True])  # fmt: skip

        return slaug
    if method.name == "gin-ipa":
        def ipa(views: Views, generator: torch.Generator) -> Views:
            return replace(views, images=ipa_blend(*views.images, generator))

        return ipa
    if method.name in ("gin-ipa-fresh", "gin-ipa-released"):
        released = method.name == "gin-ipa-released"

        def fresh_gin_ipa(views: Views, generator: torch.Generator) -> Views:
            x = views.images[0]  # (B, 1, H, W), the original after the geometry
            b = x.shape[0]
            seeds = torch.randint(2**62, (3 * b,), generator=generator).tolist()  # one network per image
            with torch.no_grad():
                if released:  # GIN of the z-scored slice, put back in the slice's units for the Normalize step
                    z = normalize_input(x, views.stats, "zscore")[:, 0].repeat(3, 1, 1)
                    gin = zscore_inverse(gin_forward_released(z, seeds).unsqueeze(1), views.stats.repeat(3, 1))
                else:
                    gin = gin_forward(x[:, 0].repeat(3, 1, 1), seeds).unsqueeze(1)  # float32 inside
            images = ipa_blend(*gin.to(x.dtype).split(b), generator, log_normal=not released)
            return replace(views, images=images, is_copy=[True, True, True])

        return fresh_gin_ipa
    return None


# --- SBF and IPA ---------------------------------------------------------------------------------
def saliency_map(grad: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """SBF's fusion weights from the gradient of the loss w.r.t. the input (B, C, H, W): its RMS
    over channels, averaged on a ``grid`` x ``grid`` grid, upsampled bilinearly (smooth, and with no
    overshoot, unlike a cubic), rescaled to [0, 1] per image."""
    s = grad.pow(2).mean(dim=1, keepdim=True).sqrt()
    s = F.interpolate(F.adaptive_avg_pool2d(s, grid), size=s.shape[-2:], mode="bilinear", align_corners=True)
    lo = s.amin(dim=(2, 3), keepdim=True)
    hi = s.amax(dim=(2, 3), keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def ipa_field(b: int, size, generator: torch.Generator, grid: int = 6, log_normal: bool = True) -> torch.Tensor:
    """GIN-IPA's blending weights: a log-normal random field on a ``grid`` x ``grid`` lattice of
    control points, upsampled smoothly, rescaled to [0, 1] per image; (B, 1, H, W).

    ``log_normal=False`` leaves out the exponential, as the released code in effect does (its
    control points are normalised to unit L2 norm over the batch, so the exponential of such small
    values is nearly linear): weights spread evenly over [0, 1] instead of a few bright bumps on a dark
    field."""
    f = smooth_field(torch.randn(b, 1, grid, grid, generator=generator), size)
    f = torch.exp(f) if log_normal else f
    lo = f.amin(dim=(2, 3), keepdim=True)
    hi = f.amax(dim=(2, 3), keepdim=True)
    return (f - lo) / (hi - lo).clamp_min(1e-12)


def ipa_blend(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, generator: torch.Generator,
              log_normal: bool = True) -> list[torch.Tensor]:
    """IPA: two GIN images blended by a random field and its complement, and the third as it is."""
    blend = ipa_field(a.shape[0], a.shape[-2:], generator, log_normal=log_normal).to(a.device, a.dtype)
    return [a * blend + b * (1 - blend), a * (1 - blend) + b * blend, c]


# --- the step ------------------------------------------------------------------------------------
def run_step(method: Method, module, views: Views, seg_loss, backward: Backward, autocast, *, layers: list[int],
             nce_weight: float, consistency_weight: float, generator: torch.Generator) -> dict[str, torch.Tensor]:  # fmt: skip
    """Forward, losses and backward of one step; returns the loss terms (``loss``, ``seg``, and
    ``nce`` or ``consistency`` where the method has one), detached."""
    mask = views.mask
    if method.name in ("erm", "dice", "dice+infonce"):
        img = views.images[0]
        aug = views.images[1] if method.name != "erm" else None
        with autocast():
            logits_o, logits_c, nce = module(img, aug, layers, generator)
            seg = seg_loss(logits_o, mask)
            if logits_c is not None:
                seg = seg + seg_loss(logits_c, mask)
            loss = seg if nce is None else seg + nce_weight * nce
        backward(loss)
        return _detached(loss=loss, seg=seg, nce=nce)
    if method.name in ("gin-ipa", "gin-ipa-fresh", "gin-ipa-released"):
        b = views.images[0].shape[0]
        with autocast():
            logits, _, _ = module(torch.cat(views.images), None, layers)
            seg = seg_loss(logits[:b], mask)  # as the reference code: the first blend carries the labels
            logp = F.log_softmax(logits.float(), dim=1)
            p_mean = logp.exp().view(3, b, *logp.shape[1:]).mean(0).repeat(3, 1, 1, 1)
            consistency = (p_mean * (p_mean.clamp_min(1e-12).log() - logp)).mean()
            loss = seg + consistency_weight * consistency
        backward(loss)
        return _detached(loss=loss, seg=seg, consistency=consistency)
    if method.name in ("slaug", "slaug+copies"):
        gla, lla = views.images
        gla = gla.detach().requires_grad_(True)
        with autocast():
            seg_gla = seg_loss(module(gla, None, layers)[0], mask)
        backward(seg_gla)  # parameter gradients of the GLA pass, and the input saliency
        weight = saliency_map(gla.grad.detach())
        fused = gla.detach() * weight + lla * (1 - weight)
        with autocast():
            seg_sbf = seg_loss(module(fused, None, layers)[0], mask)
        backward(seg_sbf)
        return _detached(loss=seg_gla + seg_sbf, seg=seg_gla + seg_sbf)
    raise ValueError(f"unknown method {method.name!r}")


def _detached(**terms: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items() if v is not None}
