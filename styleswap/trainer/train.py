"""The training loop: (original, copies, mask) -> the method's losses -> a MONAI network.

`train_segmentation` runs in parts: `_setup` (settings, data, run folder, network, optimizer,
resume), then per step: a batch from `SliceStream`, the composed augmentation (`augment`), the
method's forward/losses/backward (`methods.run_step`), the learning rate of that step
(`schedule.lr_at`), logging, validation on the source modality and checkpoints
(`styleswap.checkpoints`); then the final model.

Everything random is a function of ``(seed, step)`` or ``(seed, epoch)``: augmentation and patch
sampling use a generator seeded per step, the data order per epoch (see `data.py`). Checkpoints
store the model, AdamW state (safetensors + JSON) and ``(step, epoch, batches consumed in the
epoch)``; on ``resume`` the epoch continues where it stopped: its first batches are skipped
without decoding. With ``workers=0`` a resumed run reaches bitwise the same weights as an
uninterrupted one on CPU (tested); with workers it is exact unless the checkpoint falls in the
last round of an epoch, where workers run dry at different times.

Run folder (see `runs` for what may be written where)::

    train_config.json  metrics.csv  curves.png
    checkpoints/step-0000200/{model.safetensors, optimizer.safetensors, optimizer.json, trainer_state.json}
    best/{model.safetensors, config.json, val_metrics.json}    best validation mean Dice
    final/{model.safetensors, config.json}                     last step
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from styleswap import checkpoints
from styleswap.accelerator import make_accelerator
from styleswap.errors import StyleSwapError
from styleswap.safe_state import kill_point, load_optimizer, save_optimizer
from styleswap.trainer import runs
from styleswap.trainer.artifact import describe_training
from styleswap.trainer.augment import build_augmenter
from styleswap.trainer.config import LOSSES, TrainConfig
from styleswap.trainer.data import DatasetInfo, SliceStream, _seed_of, lateral_permutation, make_loader, open_dataset, qc_filter
from styleswap.trainer.losses import PatchNCELoss, SegLoss
from styleswap.trainer.methods import METHODS, derive_step, initial_views, run_step
from styleswap.trainer.model import SegNet, default_config, parse_layers, save_model
from styleswap.trainer.schedule import lr_at

__all__ = ["TrainConfig", "train_segmentation", "find_checkpoint", "LOSSES", "CHECKPOINT_FILES"]

CSV_FIELDS = ("step", "epoch", "loss", "seg_loss", "nce_loss", "lr", "slices_per_s", "val_mean_dice")
#: Segmentation checkpoints: ``checkpoints/step-0000200`` holding these files.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")
LAYOUT = checkpoints.Layout("step-", CHECKPOINT_FILES, digits=7)
#: The averaged weights of a run with --ema, beside the checkpoint's files.
EMA_NAME = "ema.safetensors"


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``latest`` -> newest complete ``checkpoints/step-N`` (None if there is none); else a folder path.

    Checkpoints are written under ``checkpoints/.tmp-step-N`` and renamed only when complete and
    synced (`styleswap.checkpoints.write`), so a write cut short never carries a ``step-N`` name;
    any other name, or a folder missing a file, is skipped all the same.
    """
    if resume == "latest":
        done = checkpoints.complete(Path(out) / "checkpoints", LAYOUT)
        return done[-1][1] if done else None
    path = Path(resume)
    missing = checkpoints.missing(path, LAYOUT)
    if missing:
        raise StyleSwapError(f"--resume {resume}: not a complete checkpoint folder (no {', '.join(missing)})")
    return path


class _TrainModule(nn.Module):
    """Network + PatchNCE heads as one module, so accelerate/DDP wraps a single object."""

    def __init__(self, net: SegNet, nce: PatchNCELoss | None) -> None:
        super().__init__()
        self.net = net
        self.nce = nce
        self.__dict__["_fwd"] = net  # kept out of the module tree: state_dict keys stay those of net

    def compile(self) -> None:
        """Run the network's forward through ``torch.compile`` (inductor; ~1.6x per step on CPU at
        192 px); the weights stay those of ``net``, so checkpoints and evaluation are unchanged."""
        self.__dict__["_fwd"] = torch.compile(self.net)

    def forward(
        self, img: torch.Tensor, aug: torch.Tensor | None, layers: list[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, 1, H, W) originals [+ copies] -> (logits_orig, logits_copy | None, PatchNCE | None).

        The whole step's forward lives here so that DDP sees every parameter in use (heads included).
        """
        if aug is None:
            return self._fwd(img), None, None
        b = img.shape[0]
        x = torch.cat([img, aug])
        if self.nce is None:
            logits = self._fwd(x)
            return logits[:b], logits[b:], None
        logits, feats = self._fwd(x, return_features=True)
        nce = self.nce([feats[i][:b] for i in layers], [feats[i][b:] for i in layers], generator=generator)
        return logits[:b], logits[b:], nce


@dataclass
class _Run:
    """What `_setup` prepares for the loop."""

    cfg: TrainConfig
    infos: list[DatasetInfo]
    val_info: DatasetInfo | None
    labels: dict[str, int]
    mcfg: dict[str, Any]
    module: Any
    optimizer: Any
    accelerator: Any
    layers: list[int]
    out: Path
    step: int = 0
    epoch: int = 0
    in_epoch: int = 0
    best: float = -1.0
    ema: Any = None  # torch.optim.swa_utils.AveragedModel of the network when --ema is on
    fresh: bool = True  # the run folder was new (a failure before the first checkpoint removes it)


def _setup(cfg: TrainConfig) -> _Run:
    cfg.validate()
    method = METHODS[cfg.loss]
    infos = [open_dataset(d, split=cfg.split) for d in cfg.data]
    labels, size = infos[0].labels, infos[0].image_size
    val_info = open_dataset(cfg.val, split=cfg.val_split) if cfg.val else None
    if val_info is not None and cfg.val_split and cfg.split is None and any(sh.split == cfg.val_split for i in infos for sh in i.shards):
        raise StyleSwapError(f"--data holds the {cfg.val_split!r} split you validate on; train on the rest with --split train")
    if val_info is not None and val_info.labels != labels:
        raise StyleSwapError(f"{cfg.val}: labels {val_info.labels} differ from the training data's {labels}")
    if method.copies:
        for d in infos:
            if d.copies == 0:
                raise StyleSwapError(f"{d.root}: has no style-intervened copies, which --loss {cfg.loss} trains on "
                                     "(on originals alone it would be ERM under another name: use --loss erm, or "
                                     "build copies with 'augment build --source ...')")
    if cfg.input_norm == "zscore":
        for d in infos + ([val_info] if val_info else []):
            if not d.volume_stats:
                raise StyleSwapError(f"{d.root}: --input-norm zscore needs each volume's mean and std (manifest "
                                     "volume_stats), which this dataset lacks; ingest it again with this version")
    qc_note = qc_filter(infos, cfg.min_qc_dice)  # refuses --min-qc-dice on data without qc_dice; None when off
    data_ids = [runs.data_identity(d.root) for d in infos]
    val_id = runs.data_identity(val_info.root) if val_info else None
    previous = runs.prepare(cfg, data_ids, val_id)

    accelerator = make_accelerator(cfg.mixed_precision, cpu=not torch.cuda.is_available())
    if qc_note and accelerator.is_main_process:
        print(qc_note, file=sys.stderr)  # once, at start
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    mcfg = default_config(len(labels), cfg.arch, cfg.channels, cfg.depth, num_res_units=cfg.num_res_units, labels=labels,
                          image_size=list(size), input_norm=cfg.input_norm, modality=infos[0].modality or None)  # fmt: skip
    mcfg.update(describe_training(infos, cfg))  # preprocessing, data ids and hashes, recipe: the artifact's keys
    net = SegNet(mcfg)
    if size[0] % net.divisor or size[1] % net.divisor:
        raise StyleSwapError(f"image size {size} must be divisible by {net.divisor} for --arch {cfg.arch} --depth {cfg.depth}")
    nce, layers = None, []
    if cfg.loss == "dice+infonce":
        layers = parse_layers(cfg.nce_layers, net.num_levels)
        nce = PatchNCELoss([net.feature_channels[i] for i in layers], cfg.nce_patches, cfg.nce_temperature, use_mlp=cfg.nce_mlp,
                           negatives=cfg.nce_negatives)
    module = _TrainModule(net, nce)
    if cfg.compile:
        module.compile()
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    run = _Run(cfg, infos, val_info, labels, mcfg, module, optimizer, accelerator, layers, Path(cfg.out))
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        run.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    ckpt = find_checkpoint(run.out, cfg.resume) if cfg.resume and previous is not None else None
    if cfg.resume and previous is None and cfg.resume != "latest":
        ckpt = find_checkpoint(run.out, cfg.resume)
    if ckpt is not None:
        _restore(run, ckpt)
    run.fresh = previous is None
    if accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / runs.CONFIG_NAME).write_text(json.dumps(runs.record(cfg, data_ids, val_id, previous, run.step), indent=2))
    return run


def _restore(run: _Run, ckpt: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{ckpt / 'trainer_state.json'}: unreadable ({e})") from None
    saved = state.get("model_config", {})
    if saved.get("channels") != run.mcfg["channels"] or saved.get("arch") != run.mcfg["arch"]:
        raise StyleSwapError(f"{ckpt}: checkpoint network {saved} differs from the requested one")
    runs.check_steps(run.cfg, int(state["step"]), ckpt)
    try:
        weights = load_file(str(ckpt / "model.safetensors"), device=str(run.accelerator.device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise StyleSwapError(f"{ckpt / 'model.safetensors'}: cannot read the weights ({' '.join(str(e).split())})") from None
    run.accelerator.unwrap_model(run.module).load_state_dict(weights)
    if run.ema is not None:
        if not (ckpt / EMA_NAME).is_file():
            raise StyleSwapError(f"{ckpt}: holds no {EMA_NAME}; the run was not trained with --ema")
        run.ema.load_state_dict(load_file(str(ckpt / EMA_NAME), device=str(run.accelerator.device)))
    load_optimizer(run.optimizer, ckpt)
    run.step, run.epoch, run.in_epoch = int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])
    run.best = float(state.get("best_val", -1.0))


def _batches(cfg: TrainConfig, infos: list[DatasetInfo], rank: int, world: int, epoch: int, skip: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, batches consumed in epoch, batch) from the given position."""
    method = METHODS[cfg.loss]
    while True:
        stream = SliceStream(infos, shuffle=True, buffer_size=cfg.buffer_size, seed=cfg.seed, rank=rank, world_size=world,
                             skip_batches=skip, batch_size=cfg.batch_size, with_copies=method.copies > 0,
                             copies=max(1, method.copies), min_qc_dice=cfg.min_qc_dice)  # fmt: skip
        stream.set_epoch(epoch)
        k, got = skip, False
        for batch in make_loader(stream, cfg.batch_size, cfg.workers):
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


def _checkpoint(run: _Run) -> None:
    from safetensors.torch import save_file

    net = run.accelerator.unwrap_model(run.module)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        kill_point("checkpoint-write", run.step)
        save_optimizer(run.optimizer, tmp)
        if run.ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in run.ema.state_dict().items()}, str(tmp / EMA_NAME))
        (tmp / "config.json").write_text(json.dumps(run.mcfg, indent=2))
        state = {"step": run.step, "epoch": run.epoch, "batches_in_epoch": run.in_epoch, "best_val": run.best,
                 "model_config": run.mcfg, "seed": run.cfg.seed}  # fmt: skip
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))

    checkpoints.write(run.out / "checkpoints", LAYOUT, run.step, fill, keep=run.cfg.checkpoints_total_limit)
    run.fresh = False


def _validate(run: _Run) -> float | None:
    if run.val_info is None:
        return None
    value = None
    if run.accelerator.is_main_process:
        from styleswap.trainer.evaluate import evaluate_info

        net = _inference_net(run)
        metrics, _ = evaluate_info(net, run.val_info, batch_size=run.cfg.val_batch_size, device=run.accelerator.device, overlay_slices=0)
        value = metrics["mean_dice"] if metrics["mean_dice"] is not None else 0.0
        if value > run.best:
            run.best = value
            save_model(net, run.out / "best")
            (run.out / "best" / "val_metrics.json").write_text(json.dumps({"step": run.step, **metrics}, indent=2))
    run.accelerator.wait_for_everyone()
    return value


def _inference_net(run: _Run) -> SegNet:
    """The network that validation and the saved models use: the averaged one under --ema."""
    return run.ema.module if run.ema is not None else run.accelerator.unwrap_model(run.module).net


def _metrics_rows(run: _Run) -> list[dict[str, Any]]:
    """metrics.csv rewritten to the rows up to the resumed step (a killed run may have logged past it)."""
    rows: list[dict[str, Any]] = []
    path = run.out / "metrics.csv"
    if run.step and path.is_file():
        with open(path) as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= run.step]
        for r in rows:
            r["step"] = int(r["step"])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows


def train_segmentation(cfg: TrainConfig) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary (steps, best validation Dice, paths, throughput)."""
    run = _setup(cfg)
    try:
        return _loop(run)
    except BaseException:
        if run.fresh and run.accelerator.is_main_process:  # nothing worth keeping: no checkpoint yet
            runs.remove_run_files(run.out)
        raise


def _loop(run: _Run) -> dict[str, Any]:
    from tqdm.auto import tqdm

    cfg, accelerator = run.cfg, run.accelerator
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    method = METHODS[cfg.loss]
    swap = lateral_permutation(run.labels, len(run.labels))
    augment = build_augmenter(cfg, swap, len(run.labels), derive_step(method, len(run.labels)))
    seg_loss = SegLoss()
    rows = _metrics_rows(run) if main else []
    batches = _batches(cfg, run.infos, rank, world, run.epoch, run.in_epoch)
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not (main and cfg.progress), desc="train", dynamic_ncols=True)
    run.module.train()
    t_last, seen_last, slices_per_s = time.perf_counter(), 0, 0.0
    while run.step < cfg.steps:
        run.epoch, run.in_epoch, batch = next(batches)
        gen = torch.Generator().manual_seed(_seed_of(cfg.seed, "step", run.step, rank))
        views = augment(initial_views(method, batch, accelerator.device), gen)
        run.optimizer.zero_grad(set_to_none=True)
        terms = run_step(method, run.module, views, seg_loss, accelerator.backward, accelerator.autocast, layers=run.layers,
                         nce_weight=cfg.nce_weight, consistency_weight=cfg.consistency_weight, generator=gen)  # fmt: skip
        for group in run.optimizer.param_groups:  # a pure function of the step: resume needs no scheduler state
            group["lr"] = lr_at(run.step, cfg.steps, cfg.lr, cfg.lr_schedule, cfg.warmup_steps)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update_parameters(accelerator.unwrap_model(run.module).net)
        run.step += 1
        seen_last += batch["mask"].shape[0] * world
        loss = terms["loss"].item()
        if not math.isfinite(loss):
            raise StyleSwapError(f"loss became {loss} at step {run.step}; lower --lr or use --mixed-precision no")
        bar.update(1)
        log_now = run.step % cfg.log_every == 0 or run.step == cfg.steps
        val_now = run.val_info is not None and (run.step % cfg.val_every == 0 or run.step == cfg.steps)
        if log_now:
            now = time.perf_counter()
            slices_per_s = seen_last / max(now - t_last, 1e-9)
            t_last, seen_last = now, 0
            bar.set_postfix(loss=f"{loss:.4f}", slices_s=f"{slices_per_s:.1f}")
        val = _validate(run) if val_now else None
        if main and (log_now or val_now):
            extra = terms.get("nce", terms.get("consistency"))
            row = {"step": run.step, "epoch": run.epoch, "loss": f"{loss:.6f}", "seg_loss": f"{terms['seg'].item():.6f}",
                   "nce_loss": "" if extra is None else f"{extra.item():.6f}", "lr": run.optimizer.param_groups[0]["lr"],
                   "slices_per_s": f"{slices_per_s:.2f}", "val_mean_dice": "" if val is None else f"{val:.6f}"}  # fmt: skip
            rows.append(row)
            with open(run.out / "metrics.csv", "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow(row)
            if val_now or run.step == cfg.steps:
                _write_curves(rows, run.out / "curves.png")
        if main and (run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps):
            _checkpoint(run)
        kill_point("step", run.step)
        if val_now:  # evaluation time is not training throughput
            t_last = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        save_model(_inference_net(run), run.out / "final")
        if run.val_info is None:  # nothing to select on: the last weights are the best we know
            shutil.rmtree(run.out / "best", ignore_errors=True)
            shutil.copytree(run.out / "final", run.out / "best")
        _write_curves(rows, run.out / "curves.png")
    return {"steps": run.step, "best_val_mean_dice": run.best if run.best >= 0 else None, "out": str(run.out),
            "slices_per_s": slices_per_s}  # fmt: skip
