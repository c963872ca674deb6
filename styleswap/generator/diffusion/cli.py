"""``augment finetune`` and ``augment controlnet``: thin Typer commands over the Python API.

``register(app)`` adds both commands to the ``augment`` Typer app, and the diffusion engine's
options to its generic ``build`` command (``--style-swap/--no-style-swap``, ``--allow-pickle``), so
that the generic command carries none of them itself. Errors are `StyleSwapError`s, which the
app's ``main()`` prints as one line.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from .loading import allow_pickle as allowing_pickle
from .loading import with_allow_pickle_flag

DataOpt = Annotated[Path, typer.Option("--data", help="Source dataset folder (manifest.json + data/*.parquet).")]
OutputOpt = Annotated[Path, typer.Option("--out", "--output-dir", "-o", help="Where models, checkpoints and validation images go.")]
BaseOpt = Annotated[str, typer.Option("--base-model", help="Stable Diffusion folder or hub id, or 'tiny' (built from config here).")]
PromptOpt = Annotated[str, typer.Option("--instance-prompt", help="Instance prompt; {modality} is the row's modality.")]
StepsOpt = Annotated[int, typer.Option("--max-train-steps", help="Optimizer steps in total (a resumed run continues to this).")]
BatchOpt = Annotated[int, typer.Option("--train-batch-size")]
LrOpt = Annotated[float, typer.Option("--learning-rate")]
AccumOpt = Annotated[int, typer.Option("--gradient-accumulation-steps")]
MPOpt = Annotated[str, typer.Option("--mixed-precision", help="no | fp16 | bf16")]
GCOpt = Annotated[bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")]
CkptOpt = Annotated[int, typer.Option("--checkpointing-steps")]
LimitOpt = Annotated[Optional[int], typer.Option("--checkpoints-total-limit")]
ResumeOpt = Annotated[Optional[str], typer.Option("--resume-from-checkpoint", help="'latest' or a checkpoint folder.")]
ValOpt = Annotated[Optional[int], typer.Option("--validation-steps", help="Write a validation grid every N steps.")]
SeedOpt = Annotated[int, typer.Option("--seed")]
ResOpt = Annotated[Optional[int], typer.Option("--resolution", help="Default: the model's (64 tiny, 512 SD 1.5).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Also load model folders whose weights are pickle files (*.bin, *.pt, *.ckpt, ...) and no safetensors. Pickle can run arbitrary code: only for files you trust.")]


def _args(output_dir, max_train_steps, train_batch_size, learning_rate, gradient_accumulation_steps, mixed_precision,
          gradient_checkpointing, checkpointing_steps, checkpoints_total_limit, resume_from_checkpoint, validation_steps,
          seed, device):
    from .training import TrainArgs

    return TrainArgs(
        output_dir=output_dir, max_train_steps=max_train_steps, train_batch_size=train_batch_size,
        learning_rate=learning_rate, gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
        checkpointing_steps=checkpointing_steps, checkpoints_total_limit=checkpoints_total_limit,
        resume_from_checkpoint=resume_from_checkpoint, validation_steps=validation_steps, seed=seed, device=device,
    )


@with_allow_pickle_flag
def finetune_cmd(
    data: DataOpt,
    output_dir: OutputOpt,
    base_model: BaseOpt = "tiny",
    instance_prompt: PromptOpt = "a sks {modality} slice",
    max_train_steps: StepsOpt = 400,
    train_batch_size: BatchOpt = 4,
    learning_rate: LrOpt = 1e-4,
    gradient_accumulation_steps: AccumOpt = 1,
    mixed_precision: MPOpt = "no",
    gradient_checkpointing: GCOpt = False,
    checkpointing_steps: CkptOpt = 200,
    checkpoints_total_limit: LimitOpt = None,
    resume_from_checkpoint: ResumeOpt = None,
    validation_steps: ValOpt = None,
    seed: SeedOpt = 0,
    resolution: ResOpt = None,
    device: DeviceOpt = None,
    vae_steps: Annotated[int, typer.Option("--vae-steps", help="tiny only: VAE-learning steps (cached in OUTPUT/base).")] = 400,
    allow_pickle: PickleOpt = False,
) -> None:
    """DreamBooth-tune the U-Net on a dataset's source slices (tiny: learn the VAE first)."""
    from .finetune import finetune, learn_vae
    from .presets import build_tiny
    from .training import TrainArgs

    if base_model == "tiny":
        base = output_dir / "base"
        if not (base / "styleswap_preset.json").is_file() or not _vae_learned(base):
            build_tiny(output_dir / "tiny", resolution=resolution or 64, seed=seed)
            learn_vae(output_dir / "tiny", data, base,
                      TrainArgs(output_dir=base, max_train_steps=vae_steps, learning_rate=1e-3, train_batch_size=8,
                                seed=seed, device=device, resume_from_checkpoint="latest"))
        base_model = str(base)
    info = finetune(base_model, data, output_dir, _args(
        output_dir, max_train_steps, train_batch_size, learning_rate, gradient_accumulation_steps, mixed_precision,
        gradient_checkpointing, checkpointing_steps, checkpoints_total_limit, resume_from_checkpoint, validation_steps,
        seed, device), instance_prompt=instance_prompt, resolution=resolution)
    if "unet" in info:  # the main process of a multi-process launch reports
        typer.echo(f"tuned U-Net: {info['unet']} (base model {info['base_model']}, step {info['global_step']})")


def _vae_learned(folder: Path) -> bool:
    import json

    return bool(json.loads((folder / "styleswap_preset.json").read_text()).get("vae_learned"))


@with_allow_pickle_flag
def controlnet_cmd(
    data: DataOpt,
    output_dir: OutputOpt,
    base_model: Annotated[str, typer.Option("--base-model", help="The base SD folder (for tiny: FINETUNE_OUTPUT/base).")],
    unet: Annotated[Path, typer.Option("--unet", help="The tuned U-Net folder (FINETUNE_OUTPUT/unet).")],
    conditioning: Annotated[str, typer.Option("--conditioning", "--condition", help="mask | mask+canny (Canny edges of the source slice, via controlnet-aux, on top)")] = "mask",
    prompt_set: Annotated[str, typer.Option("--prompt-set", help="Prompts of the validation grid.")] = "default",
    instance_prompt: PromptOpt = "a sks {modality} slice",
    max_train_steps: StepsOpt = 400,
    train_batch_size: BatchOpt = 4,
    learning_rate: LrOpt = 1e-4,
    gradient_accumulation_steps: AccumOpt = 1,
    mixed_precision: MPOpt = "no",
    gradient_checkpointing: GCOpt = False,
    checkpointing_steps: CkptOpt = 200,
    checkpoints_total_limit: LimitOpt = None,
    resume_from_checkpoint: ResumeOpt = None,
    validation_steps: ValOpt = None,
    seed: SeedOpt = 0,
    resolution: ResOpt = None,
    device: DeviceOpt = None,
    allow_pickle: PickleOpt = False,
) -> None:
    """Train a mask-conditioned ControlNet on top of the tuned U-Net."""
    from .controlnet import train_controlnet

    info = train_controlnet(base_model, unet, data, output_dir, _args(
        output_dir, max_train_steps, train_batch_size, learning_rate, gradient_accumulation_steps, mixed_precision,
        gradient_checkpointing, checkpointing_steps, checkpoints_total_limit, resume_from_checkpoint, validation_steps,
        seed, device), instance_prompt=instance_prompt, conditioning=conditioning, resolution=resolution,
        prompt_set=prompt_set)
    if "controlnet" in info:  # the main process of a multi-process launch reports
        typer.echo(f"ControlNet: {info['controlnet']} (step {info['global_step']})")


StyleSwapOpt = Annotated[Optional[bool], typer.Option("--style-swap/--no-style-swap", help="controlnet: render with the base U-Net (Style Swap, default) or the DreamBooth-tuned one (the ablation).")]
BuildPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="controlnet: also load model folders whose weights are pickle files (*.bin, *.pt, *.ckpt, ...) and no safetensors. Pickle can run arbitrary code: only for files you trust. Never taken from a recipe.")]


def with_build_options(build: Callable[..., Any]) -> Callable[..., Any]:
    """The generic ``augment build`` command with this engine's options added to its signature."""
    base = inspect.signature(build, eval_str=True)
    extra = [inspect.Parameter("style_swap", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=StyleSwapOpt),
             inspect.Parameter("allow_pickle", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=BuildPickleOpt)]

    @functools.wraps(build)
    def command(*args: Any, style_swap: bool | None = None, allow_pickle: bool = False, **kwargs: Any) -> Any:
        if style_swap is not None:  # an engine setting, on top of the recipe's and --engine-opt's
            kwargs["engine_opt"] = [*(kwargs.get("engine_opt") or []), f"style_swap={str(style_swap).lower()}"]
        with allowing_pickle(bool(allow_pickle)):  # for this command only, its render workers included
            return build(*args, **kwargs)

    command.__signature__ = base.replace(parameters=[*base.parameters.values(), *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command


def register(app: typer.Typer) -> None:
    """Add ``finetune`` and ``controlnet`` to the ``augment`` app, and this engine's options to ``build``."""
    app.command("finetune")(finetune_cmd)
    app.command("controlnet")(controlnet_cmd)
    for info in app.registered_commands:
        if (info.name or getattr(info.callback, "__name__", "")) == "build":
            info.callback = with_build_options(info.callback)
