"""``train``: thin Typer commands over `styleswap.trainer.train` and `styleswap.trainer.evaluate`.

    train seg  --data DIR [--data DIR2] [--val DIR] --out runs/NAME [options]
    train eval --model runs/NAME --data DIR --out DIR [--hd95] [--tta] [--largest-component]

Known errors (`StyleSwapError`) become one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from styleswap.errors import StyleSwapError, one_line
from styleswap.trainer.config import REQUIRED, TrainConfig

app = typer.Typer(help="Train and evaluate segmentation networks on StyleSwap dataset folders.", no_args_is_help=True, add_completion=False)

OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]


def _errors_to_exit(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StyleSwapError as e:
            typer.echo(f"error: {one_line(e)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _seg_options() -> list[inspect.Parameter]:
    """``train seg``'s options, one per `TrainConfig` field: the default and help are the config's."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        typ = hints[f.name]
        flags = list(f.metadata.get("flags") or ())
        dashed = "--" + f.name.replace("_", "-")
        if typ is bool:
            flags = flags or [f"{dashed}/--no-{f.name.replace('_', '-')}"]
        required = f.default is REQUIRED
        default = ... if required else f.default
        if f.name == "checkpoints_total_limit":  # 0 on the command line means "keep all"
            typ = int
        elif typ == list[str]:
            typ = list[str]
        opt = typer.Option(*(flags or [dashed]), help=f.metadata.get("help", ""), show_default=not required,
                           metavar=f.metadata.get("metavar"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[typ, opt]))
    return params


def seg(**options) -> None:
    """Train a 2D segmentation network on (original, copy, mask) triples."""
    from styleswap.trainer.train import train_segmentation

    options["checkpoints_total_limit"] = options["checkpoints_total_limit"] or None
    summary = train_segmentation(TrainConfig(**options))
    typer.echo(f"trained {summary['steps']} steps -> {summary['out']} (best val mean Dice: {summary['best_val_mean_dice']})")


seg.__signature__ = inspect.Signature(_seg_options())
app.command("seg")(_errors_to_exit(seg))


@app.command("eval")
@_errors_to_exit
def eval_(
    model: Annotated[Path, typer.Option("--model", help="Run folder (best/ or final/ is used) or a model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder to evaluate on.")],
    out: OutOpt,
    split: Annotated[Optional[str], typer.Option(help="Use only shards of this split.")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="Also compute HD95 (mm).")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped prediction.")] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help="Keep each organ's largest 3D connected component per case.")] = False,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
) -> None:
    """Per-organ 3D Dice (and HD95) per case: metrics.json, metrics.md, predictions.png."""
    from styleswap.trainer.evaluate import evaluate_model, metrics_markdown

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        metrics = evaluate_model(model, data, out, batch_size=batch_size, tta=tta, largest_component=largest_component, hd95=hd95, device=device, split=split)
    for w in caught:
        if w.category is UserWarning and "styleswap" in str(w.filename):  # ours; not the libraries' deprecations
            typer.echo(f"warning: {w.message}", err=True)
    typer.echo(metrics_markdown(metrics))


def main() -> None:
    """Console entry point: one-line errors with exit code 2 for known errors."""
    try:
        app(standalone_mode=True)
    except StyleSwapError as e:  # raised outside a command (should not happen, kept as a net)
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
