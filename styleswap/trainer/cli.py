"""``train``: thin Typer commands over `styleswap.trainer.train` and `styleswap.trainer.evaluate`.

    train seg  --data DIR [--data DIR2] [--val DIR] --out runs/NAME [options]
    train eval --model runs/NAME --data DIR --out DIR [--hd95] [--tta] [--fill-holes] [--largest-component]
    train eval --model runs/NAME --data VAL --out DIR --choose    (picks --tta / --fill-holes / --largest-component on VAL)
    train eval --model runs/NAME --images DIR --labels DIR --out DIR      (raw volumes, native grid)
    train predict --model runs/NAME INPUT... --out DIR [--tta] [--fill-holes] [--largest-component] [--save-probabilities]
    train push runs/NAME --repo-id NAMESPACE/NAME [--dry-run]

Known errors (`StyleSwapError`) become one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
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
    out: OutOpt,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder to evaluate on.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Instead of --data: raw scans (NIfTI files, nnU-Net imagesTs/imagesTr, DICOM series folders), scored in their own voxel grid.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="With --images: folder of CASE.nii.gz label volumes (the model's label ids).")] = None,
    modality: Annotated[Optional[str], typer.Option(help="With --images: modality of the scans (CT or MRI), as for train predict.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Use only shards of this split.")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="Also compute HD95 (mm).")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped prediction.")] = False,
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="Give each organ the voxels it encloses in 3D (holes, islands of another organ) per case.")] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help="Keep each organ's largest 3D connected component per case (after --fill-holes).")] = False,
    choose: Annotated[bool, typer.Option("--choose", help="With --data (the source's validation set): score plain inference and every combination "
                                         "of --tta, --fill-holes and --largest-component in one pass, each in OUT/OPTION/, and write the best to OUT/choice.json.")] = False,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
) -> None:
    """Per-organ 3D Dice (and HD95) per case: metrics.json, metrics.md, predictions.png.

    --data scores a dataset folder's slices; --images/--labels scores raw volumes in their own grid.
    --choose picks the inference options on validation data, to pass to eval and predict on the target.
    """
    from styleswap.trainer.evaluate import evaluate_model, metrics_markdown

    if (images is None) != (labels is None) or (images is None) == (data is None):
        raise StyleSwapError("give either --data DIR (a dataset folder) or --images DIR --labels DIR (raw volumes)")
    if choose:
        if images is not None or tta or fill_holes or largest_component or hd95:
            raise StyleSwapError("--choose scores every inference option of a --data folder itself: "
                                 "drop --images, --tta, --fill-holes, --largest-component and --hd95")
        _choose(model, data, out, batch_size=batch_size, device=device, split=split)
        return
    if images is not None:
        from styleswap.trainer.raw_eval import evaluate_raw

        metrics = evaluate_raw(model, images, labels, out, tta=tta, fill_holes=fill_holes, largest_component=largest_component, hd95=hd95,
                               modality=modality, batch_size=batch_size, device=device)
        typer.echo(metrics_markdown(metrics))
        return
    with _our_warnings_on_stderr():
        metrics = evaluate_model(model, data, out, batch_size=batch_size, tta=tta, fill_holes=fill_holes, largest_component=largest_component,
                                 hd95=hd95, device=device, split=split)
    typer.echo(metrics_markdown(metrics))


@contextlib.contextmanager
def _our_warnings_on_stderr():
    """Echo the warnings that styleswap raised (a model made for other data), not the libraries' deprecations."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        if w.category is UserWarning and "styleswap" in str(w.filename):
            typer.echo(f"warning: {w.message}", err=True)


def _choose(model: Path, data: Path, out: Path, **kw) -> None:
    from styleswap.trainer.evaluate import choose_inference

    with _our_warnings_on_stderr():
        choice = choose_inference(model, data, out, **kw)
    typer.echo("| inference | flags | mean Dice % |\n|---|---|---:|")
    for name, option in choice["options"].items():
        mark = " (chosen)" if name == choice["chosen"] else ""
        dice = option["mean_dice"]
        typer.echo(f"| {name}{mark} | {' '.join(option['flags']) or '-'} | {'-' if dice is None else f'{100 * dice:.1f}'} |")
    typer.echo(f"chosen: {' '.join(choice['flags']) or 'no option'} ({out / 'choice.json'})")


@app.command("predict")
@_errors_to_exit
def predict_(
    inputs: Annotated[list[str], typer.Argument(help="NIfTI files (.nii, .nii.gz), folders of them, an nnU-Net raw folder (imagesTs/ or imagesTr/, CASE_0000.nii.gz) or DICOM series folders.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Run folder (best/, then final/), best/, final/, checkpoints/step-N, a model folder, or hf://NAMESPACE/NAME.")],
    out: OutOpt,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped prediction (left/right labels swapped).")] = False,
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="Give each organ the voxels it encloses in 3D (holes, islands of another organ).")] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help="Keep each organ's largest 3D connected component (after --fill-holes).")] = False,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write CASE_probabilities.nii.gz: one volume per class, probabilities in [0, 1] (8-bit).")] = False,
    modality: Annotated[Optional[str], typer.Option(help="Modality of the scans (CT or MRI), which decides intensity normalization. Default: the DICOM tag or dataset.json, else the model's training modality.")] = None,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Segment new scans: OUT/CASE.nii.gz in each scan's own geometry, predictions.json, predictions.png.

    Each output has exactly the input's shape, affine, qform/sform codes and voxel grid, so it
    overlays the scan in 3D Slicer or ITK-SNAP. Preprocessing is the model's, as recorded in its
    config.json (the same code as augment ingest), inverted exactly on the way back.
    """
    from styleswap.trainer.predict import predict

    summary = predict(model, inputs, out, tta=tta, fill_holes=fill_holes, largest_component=largest_component, save_probabilities=save_probabilities,
                      modality=modality, batch_size=batch_size, device=device, progress=progress)
    t = summary["timing"]
    for case, c in summary["cases"].items():
        vols = ", ".join(f"{k} {v:.1f} mL" for k, v in c["volumes_ml"].items())
        typer.echo(f"{case}: {out / c['outputs'][0]} ({vols})")
    typer.echo(f"{len(summary['cases'])} case(s), {t['slices']} slices in {t['total_s']:.1f} s -> {out / 'predictions.json'}")


@app.command("push")
@_errors_to_exit
def push_(
    model: Annotated[str, typer.Argument(help="Run folder (best/, then final/), best/, final/, checkpoints/step-N or a model folder.", show_default=False)],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub model repo, NAMESPACE/NAME.")],
    license: Annotated[Optional[str], typer.Option(help="Hub license id of the model (e.g. cc-by-nc-4.0, apache-2.0, other); required.")] = None,
    evaluation: Annotated[Optional[Path], typer.Option("--eval", help="A train eval output (folder or metrics.json) for the card's Dice table. Default: the newest one in the run folder that evaluated this model.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (ignored if it exists).")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to commit to (created if missing). Default: main.")] = None,
    message: Annotated[Optional[str], typer.Option(help="Commit message.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and print the card; send nothing.")] = False,
) -> None:
    """Publish a model folder (config.json, model.safetensors, a model card) to the Hugging Face Hub.

    The token comes from HF_TOKEN or 'hf auth login' and is never printed or stored.
    """
    from styleswap.hub_publish import format_ops
    from styleswap.trainer.publish import prepare_model_push, push_model

    if dry_run:
        pp = prepare_model_push(model, repo_id, license, evaluation)
        for line in format_ops(pp.ops):
            typer.echo(line)
        typer.echo(pp.card)
        typer.echo(f"dry run: {len(pp.ops)} files would be sent to {repo_id}; nothing was sent")
        return
    ops = push_model(model, repo_id, license=license, evaluation=evaluation, private=private, revision=revision, message=message)
    typer.echo(f"pushed {len(ops)} files to https://huggingface.co/{repo_id}")


def main() -> None:
    """Console entry point: one-line errors with exit code 2 for known errors."""
    try:
        app(standalone_mode=True)
    except StyleSwapError as e:  # raised outside a command (should not happen, kept as a net)
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
