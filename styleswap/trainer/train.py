"""Training loop: (original, copy, mask) triples -> Dice(+CE) [+ PatchNCE] -> MONAI network.

Losses (``TrainConfig.loss``):

* ``erm``: DiceCE on originals only (the baseline; copies are ignored).
* ``dice``: DiceCE on the original + DiceCE on its copy.
* ``dice+infonce``: ``dice`` + ``nce_weight`` * PatchNCE between the encoder features of the
  original (queries, gradient flows) and of the copy (keys, detached), see `losses.py`.

Original and copy go through the network as one batch of 2B, after the *same* random geometric
transform (flip with left/right relabelling, rotation, scaling; the mask with nearest
interpolation), done in torch on the batch.

Everything random is a function of ``(seed, step)`` or ``(seed, epoch)``: augmentation and patch
sampling use a generator seeded per step, the data order per epoch (see `data.py`). Checkpoints
store the model, AdamW state (safetensors + JSON) and ``(step, epoch, batches consumed in the
epoch)``; on ``resume`` the epoch continues where it stopped: its first batches are skipped
without decoding. With ``workers=0`` a resumed run reaches bitwise the same weights as an
uninterrupted one on CPU (tested); with workers it is exact unless the checkpoint falls in the
last round of an epoch, where workers run dry at different times.

Run folder::

    train_config.json  metrics.csv  curves.png
    checkpoints/step-0000200/{model.safetensors, optimizer.safetensors, optimizer.json, trainer_state.json}
    best/{model.safetensors, config.json, val_metrics.json}    best validation mean Dice
    final/{model.safetensors, config.json}                     last step
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from styleswap.errors import StyleSwapError
from styleswap.safe_state import fsync_path, kill_point, load_optimizer, save_optimizer
from styleswap.trainer.artifact import describe_training
from styleswap.trainer.data import DatasetInfo, SliceStream, _seed_of, lateral_permutation, open_dataset
from styleswap.trainer.losses import PatchNCELoss, SegLoss
from styleswap.trainer.model import SegNet, default_config, parse_layers, save_model
from styleswap.trainer.schedule import LR_SCHEDULES, bias_field, intensity_augment, lr_at, organ_intensity_shift, parse_intensity_augs

LOSSES = ("erm", "dice", "dice+infonce")
CSV_FIELDS = ("step", "epoch", "loss", "seg_loss", "nce_loss", "lr", "slices_per_s", "val_mean_dice")


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    val: str | None = None
    split: str | None = None
    val_split: str | None = None  # use only this split of --val (e.g. the 'validation' split of augment ingest --split)
    loss: str = "dice+infonce"
    arch: str = "unet"
    channels: int = 16
    depth: int = 4
    num_res_units: int = 2
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    intensity_aug: str = "none"
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = 2
    buffer_size: int = 256
    nce_weight: float = 1.0
    nce_temperature: float = 0.07
    nce_patches: int = 256
    nce_layers: str | None = None
    nce_mlp: bool = True
    flip_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.1
    log_every: int = 10
    val_every: int = 200
    checkpoint_every: int = 200
    checkpoints_total_limit: int | None = 2
    mixed_precision: str = "no"
    resume: str | None = None
    progress: bool = True
    val_batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


# --- geometric augmentation ----------------------------------------------------------------------
def geometric_augment(
    images: list[torch.Tensor],
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    flip_prob: float = 0.5,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    swap: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Apply one random affine per sample, identically to every image and the mask.

    Shapes: each image (B, C, H, W) float; ``mask`` (B, 1, H, W) integer. Per sample: a
    horizontal flip with probability ``flip_prob`` (mask ids permuted by ``swap`` when flipped), a
    rotation in [-rotate_deg, rotate_deg] and an isotropic zoom in [1 - scale, 1 + scale]. Images are
    resampled bilinearly, the mask with nearest neighbour (values stay in the label set); outside
    pixels are 0 (background). Parameters are drawn on CPU from ``generator``.
    """
    b = mask.shape[0]
    u = torch.rand(b, 3, generator=generator)
    flip = u[:, 0] < flip_prob
    angle = (u[:, 1] * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (u[:, 2] * 2 - 1) * scale
    if not flip.any() and rotate_deg == 0 and scale == 0:
        return images, mask
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sx = torch.where(flip, -1.0, 1.0)
    # output (x, y) samples input at A @ (x, y): rotation/zoom, then a mirror of the x axis
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sx
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    dev = mask.device
    theta = theta.to(dev)
    grid = F.affine_grid(theta, list(mask.shape), align_corners=False)
    out = [F.grid_sample(im, grid.to(im.dtype), mode="bilinear", padding_mode="zeros", align_corners=False) for im in images]
    m = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).round().long()
    if swap is not None and flip.any():
        swapped = swap.to(dev)[m]
        m = torch.where(flip.to(dev)[:, None, None, None], swapped, m)
    return out, m


# --- checkpoints ---------------------------------------------------------------------------------
#: What a checkpoint folder must hold to be resumed from.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete ``step-N`` checkpoint under ``root``, oldest first."""
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = _CHECKPOINT_NAME.fullmatch(p.name)
        if m and p.is_dir() and not _missing_files(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def _missing_files(folder: Path) -> list[str]:
    return [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``latest`` -> newest complete ``checkpoints/step-N`` (None if there is none); else a folder path.

    Checkpoints are written under ``checkpoints/.tmp-step-N`` and renamed only when complete and
    synced (see ``checkpoint()`` in `train_segmentation`), so a write cut short never carries a
    ``step-N`` name; any other name, or a folder missing a file, is skipped all the same.
    """
    if resume == "latest":
        done = _complete_checkpoints(out / "checkpoints")
        return done[-1][1] if done else None
    path = Path(resume)
    missing = _missing_files(path)
    if missing:
        raise StyleSwapError(f"--resume {resume}: not a complete checkpoint folder (no {', '.join(missing)})")
    return path


def _commit_checkpoint(tmp: Path, folder: Path, step: int) -> None:
    """Make the finished ``tmp`` folder the checkpoint ``folder`` of ``step``: contents synced to disk, then one rename."""
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    kill_point("checkpoint-commit", step)
    if folder.exists():  # only when re-running a step from an older checkpoint
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    fsync_path(folder.parent)


class _TrainModule(nn.Module):
    """Network + PatchNCE heads as one module, so accelerate/DDP wraps a single object."""

    def __init__(self, net: SegNet, nce: PatchNCELoss | None) -> None:
        super().__init__()
        self.net = net
        self.nce = nce

    def forward(
        self, img: torch.Tensor, aug: torch.Tensor | None, layers: list[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, 1, H, W) originals [+ copies] -> (logits_orig, logits_copy | None, PatchNCE | None).

        The whole step's forward lives here so that DDP sees every parameter in use (heads included).
        """
        if aug is None:
            return self.net(img), None, None
        b = img.shape[0]
        x = torch.cat([img, aug])
        if self.nce is None:
            logits = self.net(x)
            return logits[:b], logits[b:], None
        logits, feats = self.net(x, return_features=True)
        nce = self.nce([feats[i][:b] for i in layers], [feats[i][b:] for i in layers], generator=generator)
        return logits[:b], logits[b:], nce


# --- the loop ------------------------------------------------------------------------------------
def _batches(cfg: TrainConfig, infos: list[DatasetInfo], rank: int, world: int, epoch: int, skip: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, batches consumed in epoch, batch) from the given position."""
    while True:
        stream = SliceStream(infos, shuffle=True, buffer_size=cfg.buffer_size, seed=cfg.seed, rank=rank, world_size=world, skip_batches=skip, batch_size=cfg.batch_size)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=torch.cuda.is_available())
        k, got = skip, False
        for batch in loader:
            k, got = k + 1, True
            yield epoch, k, batch
        if not got and skip == 0:
            raise StyleSwapError(f"rank {rank} received no rows in epoch {epoch} (dataset smaller than the number of consumers?)")
        epoch, skip = epoch + 1, 0


def _write_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    for key in ("loss", "seg_loss", "nce_loss"):
        ys = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) not in (None, "")]
        if ys:
            ax[0].plot([a for a, _ in ys], [float(b) for _, b in ys], label=key)
    ax[0].set_xlabel("step"), ax[0].set_title("training loss"), ax[0].legend()
    vs = [(s, float(r["val_mean_dice"])) for s, r in zip(steps, rows) if r.get("val_mean_dice") not in (None, "")]
    if vs:
        ax[1].plot([a for a, _ in vs], [b for _, b in vs], marker="o")
    ax[1].set_xlabel("step"), ax[1].set_title("validation mean Dice (3D)"), ax[1].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train_segmentation(cfg: TrainConfig) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary (steps, best validation Dice, paths, throughput)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if cfg.loss not in LOSSES:
        raise StyleSwapError(f"unknown --loss {cfg.loss!r} (choose from {', '.join(LOSSES)})")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise StyleSwapError(f"unknown --lr-schedule {cfg.lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
    try:
        augs = parse_intensity_augs(cfg.intensity_aug)
    except ValueError as exc:
        raise StyleSwapError(f"--intensity-aug: {exc}") from None
    jitter = "standard" if "standard" in augs else "none"
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise StyleSwapError("--steps and --batch-size must be >= 1")
    if not cfg.data:
        raise StyleSwapError("no --data folder given")
    infos = [open_dataset(d, split=cfg.split) for d in cfg.data]
    labels, size = infos[0].labels, infos[0].image_size
    val_info = open_dataset(cfg.val, split=cfg.val_split) if cfg.val else None
    if val_info is not None and cfg.val_split and cfg.split is None and any(sh.split == cfg.val_split for i in infos for sh in i.shards):
        raise StyleSwapError(f"--data holds the {cfg.val_split!r} split you validate on; train on the rest with --split train")
    if val_info is not None and val_info.labels != labels:
        raise StyleSwapError(f"{cfg.val}: labels {val_info.labels} differ from the training data's {labels}")

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    mcfg = default_config(len(labels), cfg.arch, cfg.channels, cfg.depth, num_res_units=cfg.num_res_units, labels=labels, image_size=list(size))
    mcfg.update(describe_training(infos, cfg))  # preprocessing, data ids and hashes, recipe: the artifact's keys
    net = SegNet(mcfg)
    if size[0] % net.divisor or size[1] % net.divisor:
        raise StyleSwapError(f"image size {size} must be divisible by {net.divisor} for --arch {cfg.arch} --depth {cfg.depth}")
    nce = None
    if cfg.loss == "dice+infonce":
        layers = parse_layers(cfg.nce_layers, net.num_levels)
        nce = PatchNCELoss([net.feature_channels[i] for i in layers], cfg.nce_patches, cfg.nce_temperature, use_mlp=cfg.nce_mlp)
    else:
        layers = []
    module = _TrainModule(net, nce)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seg_loss = SegLoss()
    swap = lateral_permutation(labels, len(labels))

    out = Path(cfg.out)
    ckpt = find_checkpoint(out, cfg.resume) if cfg.resume else None
    module, optimizer = accelerator.prepare(module, optimizer)
    step, epoch, in_epoch, best = 0, 0, 0, -1.0
    if ckpt is not None:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state.get("model_config", {}).get("channels") != mcfg["channels"] or state["model_config"].get("arch") != mcfg["arch"]:
            raise StyleSwapError(f"{ckpt}: checkpoint network {state.get('model_config')} differs from the requested one")
        accelerator.unwrap_model(module).load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(accelerator.device)))
        load_optimizer(optimizer, ckpt)
        step, epoch, in_epoch = int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])
        best = float(state.get("best_val", -1.0))
    rows: list[dict[str, Any]] = []
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        if ckpt is not None and (out / "metrics.csv").is_file():
            with open(out / "metrics.csv") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
            for r in rows:
                r["step"] = int(r["step"])
        with open(out / "metrics.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def unwrapped() -> _TrainModule:
        return accelerator.unwrap_model(module)

    def checkpoint() -> None:
        if not main:
            return
        root = out / "checkpoints"
        folder = root / f"step-{step:07d}"
        tmp = root / f".tmp-{folder.name}"
        for stale in root.glob(".tmp-step-*"):  # left by a run killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped().state_dict().items()}, str(tmp / "model.safetensors"))
        kill_point("checkpoint-write", step)
        save_optimizer(optimizer, tmp)
        (tmp / "config.json").write_text(json.dumps(mcfg, indent=2))
        state = {"step": step, "epoch": epoch, "batches_in_epoch": in_epoch, "best_val": best, "model_config": mcfg, "seed": cfg.seed}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        _commit_checkpoint(tmp, folder, step)  # a kill before this leaves only .tmp-step-N, never picked
        if cfg.checkpoints_total_limit:
            for _, old in _complete_checkpoints(root)[: -cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

    def validate() -> float | None:
        nonlocal best
        if val_info is None:
            return None
        value = None
        if main:
            from styleswap.trainer.evaluate import evaluate_info

            metrics, _ = evaluate_info(unwrapped().net, val_info, batch_size=cfg.val_batch_size, device=accelerator.device, overlay_slices=0)
            value = metrics["mean_dice"] if metrics["mean_dice"] is not None else 0.0
            if value > best:
                best = value
                save_model(unwrapped().net, out / "best")
                (out / "best" / "val_metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
        accelerator.wait_for_everyone()
        return value

    batches = _batches(cfg, infos, rank, world, epoch, in_epoch)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (main and cfg.progress), desc="train", dynamic_ncols=True)
    module.train()
    t_last, seen_last = time.perf_counter(), 0
    slices_per_s = 0.0
    while step < cfg.steps:
        epoch, in_epoch, batch = next(batches)
        img = batch["image"].to(accelerator.device, non_blocking=True)
        mask = batch["mask"].to(accelerator.device, non_blocking=True)
        gen = torch.Generator().manual_seed(_seed_of(cfg.seed, "step", step, rank))
        if cfg.loss == "erm":
            (img,), mask = geometric_augment([img], mask, gen, flip_prob=cfg.flip_prob, rotate_deg=cfg.rotate_deg, scale=cfg.scale, swap=swap)
        else:
            aug = batch["augmented"].to(accelerator.device, non_blocking=True)
            (img, aug), mask = geometric_augment([img, aug], mask, gen, flip_prob=cfg.flip_prob, rotate_deg=cfg.rotate_deg, scale=cfg.scale, swap=swap)
            if "organ" in augs:
                aug = organ_intensity_shift(aug, mask, gen, len(labels))
            if "bias" in augs:
                aug = bias_field(aug, gen)
            aug = intensity_augment(aug, gen, jitter)
        img = intensity_augment(img, gen, jitter)
        b = img.shape[0]
        with accelerator.autocast():
            logits_o, logits_c, nce_value = module(img, None if cfg.loss == "erm" else aug, layers, gen)
            seg = seg_loss(logits_o, mask)
            if logits_c is not None:
                seg = seg + seg_loss(logits_c, mask)
            loss = seg if nce_value is None else seg + cfg.nce_weight * nce_value
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        for group in optimizer.param_groups:  # a pure function of the step: resume needs no scheduler state
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.lr_schedule, cfg.warmup_steps)
        optimizer.step()
        step += 1
        seen_last += b * world
        if not math.isfinite(loss.item()):
            raise StyleSwapError(f"loss became {loss.item()} at step {step}; lower --lr or use --mixed-precision no")
        bar.update(1)
        log_now = step % cfg.log_every == 0 or step == cfg.steps
        val_now = val_info is not None and (step % cfg.val_every == 0 or step == cfg.steps)
        if log_now:
            now = time.perf_counter()
            slices_per_s = seen_last / max(now - t_last, 1e-9)
            t_last, seen_last = now, 0
            bar.set_postfix(loss=f"{loss.item():.4f}", slices_s=f"{slices_per_s:.1f}")
        val = validate() if val_now else None
        if main and (log_now or val_now):
            row = {
                "step": step,
                "epoch": epoch,
                "loss": f"{loss.item():.6f}",
                "seg_loss": f"{seg.item():.6f}",
                "nce_loss": "" if nce_value is None else f"{nce_value.item():.6f}",
                "lr": optimizer.param_groups[0]["lr"],
                "slices_per_s": f"{slices_per_s:.2f}",
                "val_mean_dice": "" if val is None else f"{val:.6f}",
            }
            rows.append(row)
            with open(out / "metrics.csv", "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow(row)
            if val_now or step == cfg.steps:
                _write_curves(rows, out / "curves.png")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        kill_point("step", step)
        if val_now:  # evaluation time is not training throughput
            t_last = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        save_model(unwrapped().net, out / "final")
        if val_info is None:  # nothing to select on: the last weights are the best we know
            shutil.rmtree(out / "best", ignore_errors=True)
            shutil.copytree(out / "final", out / "best")
        _write_curves(rows, out / "curves.png")
    return {"steps": step, "best_val_mean_dice": best if best >= 0 else None, "out": str(out), "slices_per_s": slices_per_s}
