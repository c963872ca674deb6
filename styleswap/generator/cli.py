"""The ``augment`` program: ingest medical data, build style-intervened datasets, look, verify.

Commands are thin: they parse options and call the importable API (`build.run_build`,
`dataset.verify`, ...). `main()` turns known errors into one line on stderr with exit code 2
(exit code 1 for a dataset that fails verification).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from styleswap.errors import StyleSwapError, VerificationError, one_line

app = typer.Typer(
    name="augment",
    help="Turn medical volumes into datasets of style-intervened slices (the StyleSwap generator).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options shared by ingest and build.
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (must be new, empty, or a dataset of this tool with --overwrite).")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="Remap source label ids to the project's labels, e.g. 'liver=5,spleen=1,kidney_right=2,kidney_left=3'. Unmapped ids become background.")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Slice size in pixels (square) after padding and resizing. (default: 192)")]
KeepEmptyOpt = Annotated[Optional[float], typer.Option(help="Fraction of slices without foreground to keep (0..1). (default: 0.1)")]
ModalityOpt = Annotated[Optional[str], typer.Option(help="Source modality (CT or MRI); decides intensity normalization. Default: from dataset.json.")]
IntensityOpt = Annotated[Optional[str], typer.Option(help="Intensity rule: percentile (clip each volume to its 0.5..99.5 percentiles; CT in HU: abdominal window) or standard (the GIN-IPA / SLAug protocol: CT in HU windowed, other CT its full range, MRI clipped at the 99.5th percentile). (default: percentile)")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Shard format: parquet or hdf5. (default: parquet)")]
RowsOpt = Annotated[Optional[int], typer.Option(help="Rows (source slices) per shard. (default: 256)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Build seed; every copy's seed derives from it, the sample id and the copy index. (default: 0)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset of this tool in --out.")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Hold whole cases out as the 'validation' split, chosen by --seed: val=0.2 (a fraction of the cases), val=3 (a number) or val=CASE,CASE. Train on the rest with 'train seg --split train', validate with '--val DIR --val-split validation'.")]
PreviewOpt = Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png next to the shards.")]


def _flags(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def ingest(
    source: Annotated[list[str], typer.Argument(help="An nnU-Net raw or MSD dataset folder, a folder with images/ and masks/ PNGs, IMAGE.nii.gz:LABEL.nii.gz pairs, or 'phantom[:N]'.")],
    out: OutOpt,
    labels: LabelsOpt = None,
    size: SizeOpt = None,
    keep_empty: KeepEmptyOpt = None,
    modality: ModalityOpt = None,
    intensity: IntensityOpt = None,
    fmt: FormatOpt = None,
    rows_per_shard: RowsOpt = None,
    seed: SeedOpt = None,
    split: SplitOpt = None,
    overwrite: OverwriteOpt = False,
    preview: PreviewOpt = True,
) -> None:
    """Preprocess medical volumes into a dataset folder of original slices (no copies).

    Volumes are reoriented to RAS+ and shown the radiological way (anterior up, the patient's
    right on the image's left), normalized per modality, padded to square and resized.
    """
    from styleswap.generator.build import command_line, run_build
    from styleswap.generator.recipe import make_config

    src: Any = source[0] if len(source) == 1 else source
    cfg = make_config(
        {"source": src, "engine": "none", "copies": 0},
        _flags(out=str(out), labels=labels, size=size, keep_empty=keep_empty, modality=modality, intensity=intensity, format=fmt,
               rows_per_shard=rows_per_shard, seed=seed, split=split, overwrite=overwrite, preview=preview),
    )
    manifest = run_build(cfg, command=command_line())
    _summary(out, manifest)


@app.command()
def build(
    recipe: Annotated[Optional[Path], typer.Argument(help="A YAML recipe (see manifests/). Flags override its values.")] = None,
    source: Annotated[Optional[str], typer.Option(help="'phantom[:N]', a raw source (as for ingest) or a dataset folder made by 'augment ingest'.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Dataset folder to write.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="Style intervention: gin, bezier, controlnet or none. (default: gin)")] = None,
    copies: Annotated[Optional[int], typer.Option("--copies", "-k", help="Style-intervened copies per source slice. (default: 4)")] = None,
    engine_opt: Annotated[Optional[list[str]], typer.Option("--engine-opt", "-e", help="Engine setting KEY=VALUE (YAML value), repeatable.")] = None,
    fmt: FormatOpt = None,
    rows_per_shard: RowsOpt = None,
    workers: Annotated[Optional[int], typer.Option(help="Render processes on this machine (or Ray actors); the output bytes do not depend on it. Default: one per core (up to 8) for gin and bezier with 1000 copies or more to make from an ingested dataset, else 1.")] = None,
    seed: SeedOpt = None,
    labels: LabelsOpt = None,
    size: SizeOpt = None,
    keep_empty: KeepEmptyOpt = None,
    modality: ModalityOpt = None,
    intensity: IntensityOpt = None,
    license: Annotated[Optional[str], typer.Option(help="License of the data, recorded in the dataset card.")] = None,
    overwrite: OverwriteOpt = False,
    preview: Annotated[Optional[bool], typer.Option("--preview/--no-preview", help="Write preview.png next to the shards.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where trained models (controlnet) and ingested sources are cached. (default: models/cache)")] = None,
    executor: Annotated[str, typer.Option("--executor", help="Who renders: local (processes on this machine) or ray (Ray Data actors, one per --workers; needs 'styleswap\\[ray]'). Same bytes either way.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="--executor ray: a Ray cluster ('auto', 'ray://HOST:10001'). Default: a local instance with --workers CPUs.")] = None,
    qc_model: Annotated[Optional[Path], typer.Option("--qc-model", help="Content check: a model folder from 'train seg' (same labels and size) segments every copy; its Dice against the mask goes into the qc_dice column.")] = None,
    qc_min_dice: Annotated[Optional[float], typer.Option("--qc-min-dice", help="With --qc-model: copies below this Dice are rendered again with their next seed. (default: 0.8)")] = None,
    qc_tries: Annotated[Optional[int], typer.Option("--qc-tries", help="With --qc-model: tries per copy, the first included; the best is kept. (default: 3)")] = None,
) -> None:
    """Render K style-intervened copies of every source slice into shards + manifest.json.

    Several processes: `torchrun --nproc_per_node N -m styleswap.generator.cli build ...` or
    `accelerate launch -m styleswap.generator.cli build ...` split the shards between ranks
    (one per GPU); the result is byte-identical to one process.
    """
    from styleswap.generator.build import command_line, run_build
    from styleswap.generator.recipe import load_recipe, make_config

    base = load_recipe(recipe) if recipe else {}
    settings = base.get("engine_settings")
    if settings is None:
        settings = base["engine_settings"] = {}
    if engine_opt and isinstance(settings, dict):
        settings = dict(settings)
        for item in engine_opt:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise StyleSwapError(f"--engine-opt expects KEY=VALUE, got {item!r}")
            settings[key.strip()] = yaml.safe_load(value)
        base["engine_settings"] = settings
    cfg = make_config(
        base,
        _flags(source=source, out=str(out) if out else None, engine=engine, copies=copies, format=fmt,
               rows_per_shard=rows_per_shard, workers=workers, seed=seed, labels=labels, size=size,
               keep_empty=keep_empty, modality=modality, intensity=intensity, license=license, preview=preview,
               overwrite=overwrite or None, cache_dir=str(cache_dir) if cache_dir else None,
               qc_model=str(qc_model) if qc_model else None, qc_min_dice=qc_min_dice, qc_tries=qc_tries),
        recipe_path=recipe,
    )
    if not recipe and out is None:
        raise StyleSwapError("give a recipe (augment build manifests/demo.yaml) or --out")
    if executor not in ("local", "ray"):
        raise StyleSwapError(f"--executor must be local or ray, got {executor!r}")
    if ray_address and executor != "ray":
        raise StyleSwapError("--ray-address needs --executor ray")
    chosen = None
    if executor == "ray":
        from styleswap.generator.executors.ray_actors import RayExecutor

        chosen = RayExecutor(address=ray_address)  # one line naming the extra when Ray is missing
    manifest = run_build(cfg, command=command_line(), executor=chosen)
    _summary(Path(cfg.out), manifest)


@app.command()
def preview(
    folder: Annotated[Path, typer.Argument(help="A dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("preview.png"),
    rows: Annotated[int, typer.Option(help="Slices to show (one row each).")] = 6,
    seed: Annotated[int, typer.Option(help="Which slices to sample.")] = 0,
) -> None:
    """Draw a grid: per sampled slice, the original, its mask in fixed organ colours, its copies."""
    from styleswap.generator.dataset import read_manifest
    from styleswap.generator.preview_dataset import write_preview

    manifest = read_manifest(folder)
    path = write_preview(folder, manifest, out, rows=rows, seed=seed)
    typer.echo(f"wrote {path}")


@app.command()
def verify(folder: Annotated[Path, typer.Argument(help="A dataset folder.")]) -> None:
    """Re-read every shard and check row counts and sha256 against manifest.json (exit 1 if not)."""
    from styleswap.generator.dataset import verify as verify_folder

    summary = verify_folder(folder)
    typer.echo(f"ok: {summary['shards']} shards, {summary['rows']} rows match {folder}/manifest.json")


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A dataset folder (checked with 'augment verify' first).")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo, NAMESPACE/NAME.")],
    license: Annotated[Optional[str], typer.Option(help="Hub license id (e.g. cc-by-4.0, other). Default: the one recorded at build time; required.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (ignored if it exists).")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to commit to (created if missing). Default: main.")] = None,
    message: Annotated[Optional[str], typer.Option(help="Commit message.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and print the card; send nothing.")] = False,
) -> None:
    """Publish a dataset folder to the Hugging Face Hub (token from HF_TOKEN or 'hf auth login')."""
    from styleswap.generator.push import format_ops, prepare_push, push_dataset

    if dry_run:
        pp = prepare_push(folder, repo_id, license)
        for line in format_ops(pp.ops):
            typer.echo(line)
        typer.echo(pp.card)
        typer.echo(f"dry run: {len(pp.ops)} files would be sent to datasets/{repo_id}; nothing was sent")
        return
    ops = push_dataset(folder, repo_id, license=license, private=private, revision=revision, message=message)
    typer.echo(f"pushed {len(ops)} files to https://huggingface.co/datasets/{repo_id}")


@app.command()
def convert(
    folder: Annotated[Path, typer.Argument(help="A dataset folder.")],
    to: Annotated[str, typer.Option("--to", help="Target format: hdf5 or parquet.")],
    out: OutOpt,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert a dataset between Parquet and HDF5, losslessly, with the same shard boundaries."""
    from styleswap.generator.convert import convert_dataset

    manifest = convert_dataset(folder, out, to, overwrite=overwrite)
    _summary(out, manifest)


def _summary(out: Path, manifest: Any) -> None:
    c, engine = manifest.counts, manifest.engine.name if manifest.engine else "?"
    typer.echo(
        f"wrote {out}: {c.slices} slices from {c.cases} cases, {manifest.copies} copies each "
        f"({engine}), {len(manifest.shards)} {manifest.format} shard(s)"
    )


def _register_plugins() -> None:
    """Commands (and `build` options) of optional parts of the generator (the diffusion stack)
    join the same app."""
    import importlib.util

    if importlib.util.find_spec("styleswap.generator.diffusion.cli") is None:
        return
    from styleswap.generator.diffusion.cli import register

    register(app)


_register_plugins()


def main() -> None:
    try:
        app(standalone_mode=False)
    except VerificationError as e:
        typer.echo(f"verify failed: {one_line(e)}", err=True)
        sys.exit(1)
    except StyleSwapError as e:
        typer.echo(f"error: {one_line(e)}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
