"""The training loop shared by the VAE, DreamBooth and ControlNet stages.

- accelerate for devices and ``--mixed-precision no|fp16|bf16`` (the trained model stays float32;
  autocast runs the forward pass in half precision; frozen models are cast to the half dtype).
- gradient accumulation (``--gradient-accumulation-steps``), optional gradient checkpointing.
- ``optimizer``: ``adamw`` (the default, as in diffusers' examples; fused where torch has the
  kernel) or ``sgd`` (plain SGD, no momentum: no optimizer state at all). Tuning SD 1.5's whole
  U-Net in fp32 holds weights, gradients and AdamW's two moments, 4 x 3.4 GB, before any
  activation; with ``sgd`` 2 x 3.4 GB. ``sgd`` exists so the full-size path can be tested on a
  machine without that memory (tests/test_diffusion_sd15_random.py), not for real tuning.
- checkpoints every ``--checkpointing-steps`` optimizer steps in ``<output>/checkpoint-<step>/``:
  ``model.safetensors``, ``optimizer.safetensors`` + ``optimizer.json`` and ``state.json`` (no
  pickles anywhere). At most ``--checkpoints-total-limit`` are kept (oldest removed first).
  A checkpoint is written to a temporary folder and renamed, so a crash leaves no half checkpoint.
- ``--resume-from-checkpoint latest|<path>`` restores model and optimizer and continues both the
  step count and the data order: the order is an endless stream of per-epoch permutations seeded
  by ``(seed, epoch)``, and micro-batch ``m`` always takes positions ``m*B .. m*B+B-1`` of it; the
  noise and timesteps of micro-batch ``m`` come from a generator seeded by ``(seed, m)``. A resumed
  run therefore sees exactly the batches an uninterrupted run would have seen.
- a validation image every ``--validation-steps`` steps in ``<output>/validation/``.
- tqdm with the loss; the final model is saved by the stage (``save_pretrained``, safetensors).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from styleswap.accelerator import make_accelerator
from styleswap.errors import StyleSwapError
from styleswap import checkpoints
from styleswap.safe_state import META as OPTIMIZER_META
from styleswap.safe_state import TENSORS as OPTIMIZER_TENSORS
from styleswap.safe_state import load_optimizer, save_optimizer

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "sgd")
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainArgs:
    output_dir: Path
    max_train_steps: int = 500
    train_batch_size: int = 4
    learning_rate: float = 1e-4
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int | None = None
    seed: int = 0
    max_grad_norm: float = 1.0
    adam_weight_decay: float = 1e-2
    optimizer: str = "adamw"
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.mixed_precision not in MIXED_PRECISION:
            raise StyleSwapError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise StyleSwapError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps"):
            if int(getattr(self, name)) < 1:
                raise StyleSwapError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise StyleSwapError("--checkpoints-total-limit must be >= 1")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def make_optimizer(args: TrainArgs, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (fused where torch has the kernel for the parameters' device), or stateless SGD."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    try:  # one fused kernel per tensor: about 4x faster than the per-tensor loop on a CPU
        return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.adam_weight_decay, fused=True)
    except RuntimeError:  # torch < 2.4 on a CPU, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.adam_weight_decay)


def training_device(args: TrainArgs) -> torch.device:
    """The device `train` will run on (its Accelerator's), so a stage can encode its frozen inputs
    there first (SD's VAE takes seconds per 512 x 512 slice on a CPU, milliseconds on a GPU)."""
    if args.device == "cpu" or (args.device is None and not torch.cuda.is_available()):
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


def batch_indices(n: int, batch_size: int, micro_step: int, seed: int) -> list[int]:
    """Indices of micro-batch ``micro_step`` in the endless stream of seeded epoch permutations."""
    out: list[int] = []
    pos = micro_step * batch_size
    perm_epoch, perm = -1, None
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        if epoch != perm_epoch:
            perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(n), epoch
        out.append(int(perm[off]))
        pos += 1
    return out


def step_generator(seed: int, micro_step: int) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, micro_step, 7]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator().manual_seed(s)


# --- checkpoints ---------------------------------------------------------------------------------


#: A diffusion stage's checkpoint: its weights, the optimizer and the step (one writer for both
#: halves: `styleswap.checkpoints`, written to a temporary folder, synced, renamed).
LAYOUT = checkpoints.Layout(CHECKPOINT_PREFIX, ("model.safetensors", OPTIMIZER_TENSORS, OPTIMIZER_META, "state.json"))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder a kill cut short never carries the name)."""
    return [p for _, p in checkpoints.complete(Path(output_dir), LAYOUT)]


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, optimizer, extra: dict, limit: int | None) -> Path:
    from safetensors.torch import save_model

    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / "model.safetensors"))
        save_optimizer(optimizer, tmp)
        (tmp / "state.json").write_text(json.dumps({"global_step": step, **extra}, indent=2))

    return checkpoints.write(Path(output_dir), LAYOUT, step, fill, keep=limit)


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        cps = list_checkpoints(output_dir)
        return cps[-1] if cps else None  # like diffusers: "latest" with none starts fresh
    p = Path(resume)
    if not p.is_absolute() and not p.exists():
        p = Path(output_dir) / resume
    if not (p / "state.json").is_file():
        raise StyleSwapError(f"--resume-from-checkpoint {resume}: no checkpoint at {p}")
    return p


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    global_step: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    seconds_per_step: float | None = None
    resumed_from: str | None = None
    is_main_process: bool = True  # only the main process saves the result


LossFn = Callable[[torch.nn.Module, list[int], torch.Generator], torch.Tensor]


def train(
    args: TrainArgs,
    model: torch.nn.Module,
    loss_fn: LossFn,
    n_items: int,
    validate_fn: Callable[[torch.nn.Module, int], None] | None = None,
    stage: str = "train",
    extra_state: dict | None = None,
    on_device: Callable[[torch.device, torch.dtype], None] | None = None,
) -> TrainResult:
    """Train ``model`` (its ``requires_grad`` parameters) for ``args.max_train_steps`` steps.

    ``loss_fn(model, indices, generator)`` returns the loss of one micro-batch; ``on_device`` is
    called once with the accelerator's device and the frozen-model dtype so the stage can move
    its frozen models. Returns the step count reached, the losses of this run and timing.
    """
    from tqdm.auto import tqdm

    if n_items < 1:
        raise StyleSwapError(f"{stage}: no training items")
    cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    accelerator = make_accelerator(args.mixed_precision, cpu)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(args, params)

    start_step = 0
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    if resume is not None:
        from safetensors.torch import load_model

        load_model(model, str(resume / "model.safetensors"))
        load_optimizer(optimizer, resume)
        start_step = int(json.loads((resume / "state.json").read_text())["global_step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    if on_device is not None:
        on_device(accelerator.device, weight_dtype(args.mixed_precision))

    losses: list[float] = []
    bar = tqdm(
        total=args.max_train_steps, initial=min(start_step, args.max_train_steps), desc=stage,
        disable=not args.progress or not accelerator.is_local_main_process,
    )
    accum = args.gradient_accumulation_steps
    # Under `accelerate launch` rank r takes every W-th micro-batch of the one seeded stream, so W
    # processes see W times the data per step, and a resumed run continues the same stream.
    rank, world = accelerator.process_index, accelerator.num_processes
    t0, timed = None, 0
    step = start_step
    while step < args.max_train_steps:
        total = 0.0
        for k in range(accum):
            micro = (step * accum + k) * world + rank
            idx = batch_indices(n_items, args.train_batch_size, micro, args.seed)
            with accelerator.autocast():
                loss = loss_fn(model, idx, step_generator(args.seed, micro))
            if not torch.isfinite(loss):
                raise StyleSwapError(f"{stage}: loss is {loss.item()} at step {step}; lower --learning-rate")
            accelerator.backward(loss / accum)
            total += float(loss.detach()) / accum
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if t0 is None:
            t0 = time.perf_counter()  # the first step includes warm-up: not timed
        else:
            timed += 1
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        unwrapped = accelerator.unwrap_model(model)
        if step % args.checkpointing_steps == 0 and accelerator.is_main_process:
            save_checkpoint(
                args.output_dir, step, unwrapped, optimizer,
                {"stage": stage, "seed": args.seed, **(extra_state or {})}, args.checkpoints_total_limit,
            )
        if (validate_fn is not None and args.validation_steps and step % args.validation_steps == 0
                and accelerator.is_main_process):
            unwrapped.eval()
            # Under --mixed-precision the frozen models are half precision and the trained one is
            # not: the validation pipelines run under the same autocast as training (as diffusers).
            with torch.no_grad(), accelerator.autocast():
                validate_fn(unwrapped, step)
            unwrapped.train()
    bar.close()
    sps = (time.perf_counter() - t0) / timed if timed else None
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    model.eval()
    main = accelerator.is_main_process
    accelerator.free_memory()
    return TrainResult(step, start_step, losses, sps, str(resume) if resume else None, main)


def stage_record(result: TrainResult, args: TrainArgs, data_hash: str, **fields: Any) -> dict[str, Any]:
    """What a stage writes next to its model: its own ``fields``, then how it was trained."""
    return {
        **fields,
        "data_hash": data_hash,
        "global_step": result.global_step,
        "start_step": result.start_step,
        "seconds_per_step": result.seconds_per_step,
        "final_loss": result.losses[-1] if result.losses else None,
        "train_args": args.to_json(),
    }


def barrier() -> None:
    """Wait for every process of an `accelerate launch` (a no-op in a single process): ranks must
    not read a stage's output before the main process has written it."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def image_grid(rows: list[list[np.ndarray]]) -> "Image.Image":
    """A PNG-able grid of float images in [0, 1], each (H, W) or (H, W, 3)."""
    from PIL import Image

    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.zeros((len(rows) * h, ncol * w, 3), np.float32)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            im = np.asarray(im, dtype=np.float32)
            if im.ndim == 2:
                im = np.repeat(im[..., None], 3, axis=-1)
            canvas[i * h : (i + 1) * h, j * w : (j + 1) * w] = im[:h, :w]
    return Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8))


