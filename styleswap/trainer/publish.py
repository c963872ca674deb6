"""`train push`: publish a model folder to the Hugging Face Hub with a model card.

The commit holds exactly ``config.json``, ``model.safetensors`` and ``README.md`` (the card, rendered
here): everything `train predict --model hf://NAMESPACE/NAME` needs. The card's YAML front matter
says library, tags, license and (Hub) datasets; its body the per-organ Dice table of the model's
latest `train eval` (a ``metrics.json`` in its run folder whose ``model`` is this model, or the
one ``--eval`` names), how it was trained and how to run it. Refusals and token rules are
`styleswap.hub_publish`'s, shared with `augment push`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from styleswap.errors import StyleSwapError
from styleswap.hub_publish import CARD_SOURCE, PushOp, check_license_id, check_repo_id, commit, file_op
from styleswap.trainer.artifact import ModelArtifact, open_model
from styleswap.trainer.evaluate import metrics_markdown
from styleswap.trainer.model import CONFIG_NAME, WEIGHTS_NAME

CARD_NAME = "README.md"
_CARD = CARD_SOURCE.format(program="train")


def latest_eval(artifact: ModelArtifact, explicit: str | Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest ``metrics.json`` (at most two folders below the run) that evaluated this model."""
    if explicit is not None:
        path = Path(explicit)
        path = path / "metrics.json" if path.is_dir() else path
        try:
            return path, json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StyleSwapError(f"{path}: not a readable metrics.json ({' '.join(str(e).split())})") from None
    folder = artifact.folder.resolve()
    run = folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent if folder.name in ("best", "final") else folder
    found = []
    for path in [*run.glob("*/metrics.json"), *run.glob("*/*/metrics.json")]:
        try:
            metrics = json.loads(path.read_text())
            target = Path(str(metrics.get("model", ""))).resolve()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError):
            continue
        if target == folder or (target == run and folder.name in ("best", "final")):
            found.append((path.stat().st_mtime, path, metrics))
    if not found:
        return None
    _, path, metrics = max(found, key=lambda t: t[0])
    return path, metrics


def front_matter(artifact: ModelArtifact, license: str) -> dict[str, Any]:
    data = artifact.config.get("training_data") or []
    modalities = sorted({str(d.get("modality")).lower() for d in data if d.get("modality")})
    meta: dict[str, Any] = {
        "library_name": "styleswap",
        "license": license,
        "pipeline_tag": "image-segmentation",
        "tags": ["medical", "segmentation", "styleswap", "monai", "domain-generalization", *modalities],
    }
    hub = [str(d["id"])[len("hf://"):].removeprefix("/").removeprefix("datasets/") for d in data if str(d.get("id", "")).startswith("hf:/")]
    if hub:
        meta["datasets"] = hub
    return meta


def render_card(artifact: ModelArtifact, repo_id: str, license: str, evaluation: tuple[Path, dict[str, Any]] | None) -> str:
    """The model card: YAML front matter, then what it segments, its Dice, its recipe, its use."""
    cfg, pre = artifact.config, artifact.preprocessing
    recipe = cfg.get("recipe") or {}
    labels = "\n".join(f"| {i} | {n} |" for n, i in sorted(artifact.labels.items(), key=lambda kv: kv[1]))
    lines = [
        "---", yaml.safe_dump(front_matter(artifact, license), sort_keys=False).rstrip(), "---", "",
        f"# {repo_id}", "",
        f"A 2D {cfg.get('arch', 'unet')} segmentation network (MONAI; {cfg.get('channels')} channels, depth {cfg.get('depth')}) "
        "trained with StyleSwap (single-source cross-modality segmentation by causal style intervention). "
        "It segments whole 3D scans slice by slice and writes label volumes in each scan's own voxel grid.", "",
        "| id | label |", "|---:|---|", labels, "",
        "## Evaluation", "",
    ]
    if evaluation is None:
        lines += ["No `train eval` result was found next to this model.", ""]
    else:
        path, metrics = evaluation
        where = metrics.get("images") or metrics.get("data") or "?"
        grid = "each scan's own voxel grid" if metrics.get("images") else "the dataset folder's slices, stacked per case"
        lines += [f"Per-organ 3D Dice (%) on `{where}` ({metrics.get('num_cases')} cases, measured on {grid}; "
                  f"test-time flip: {bool(metrics.get('tta'))}, holes filled: {bool(metrics.get('fill_holes'))}, "
                  f"largest component: {bool(metrics.get('largest_component'))}):", "",
                  metrics_markdown(metrics).rstrip(), ""]
    lines += ["## Training", ""]
    for d in cfg.get("training_data") or []:
        lines.append(f"- data `{d.get('id')}`: {d.get('rows')} slices, engine {d.get('engine')}, {d.get('copies')} copies, "
                     f"modality {d.get('modality')}, manifest sha256 `{d.get('manifest_sha256')}`")
    if recipe:
        lines.append("- recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
    lines += [f"- preprocessing: `{pre.to_config()['name']}` v{pre.to_config()['version']}, {pre.size} x {pre.size} px, "
              f"intensity rule {pre.intensity}, input {pre.input_norm}, trained on {pre.modality or 'unknown'} "
              "(reoriented to RAS+, padded square, resized; inverted exactly on output)",
              f"- weights: `{WEIGHTS_NAME}` (safetensors), sha256 `{artifact.sha256}`", "",
              "## Use", "", "```sh", "pip install styleswap",
              f"train predict --model hf://{repo_id} scan.nii.gz --out predictions/            # or a folder, nnU-Net imagesTs/, a DICOM series",
              f"train predict --model hf://{repo_id} mri/ --modality MRI --tta --largest-component --out predictions/", "```", "",
              "Outputs: `CASE.nii.gz` (uint8 label ids, the scan's shape and affine), `predictions.json` (organ volumes in mL), "
              "`predictions.png`. Not a medical device: for research only.", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelPushPlan:
    ops: list[PushOp]
    card: str
    license: str


def prepare_model_push(model: str | Path, repo_id: str, license: str | None, evaluation: str | Path | None = None) -> ModelPushPlan:
    """Every check of a model push, its files and its card; no network, no writes."""
    check_repo_id(repo_id, example="alice/abdomen-seg")
    lic = check_license_id(license, "")
    artifact = open_model(model)
    artifact.load()  # weights that do not fit the config are refused before anything is sent
    card = render_card(artifact, repo_id, lic, latest_eval(artifact, evaluation))
    folder = artifact.folder
    ops = [file_op(folder, folder / WEIGHTS_NAME, WEIGHTS_NAME), file_op(folder, folder / CONFIG_NAME, CONFIG_NAME),
           PushOp(_CARD, CARD_NAME, len(card.encode()))]
    return ModelPushPlan(ops, card, lic)


def push_model(model: str | Path, repo_id: str, *, license: str | None, evaluation: str | Path | None = None,
               private: bool = False, revision: str | None = None, message: str | None = None, api: Any = None) -> list[PushOp]:
    """Publish ``model`` as the Hub model repo ``repo_id`` in one commit; returns the files sent."""
    pp = prepare_model_push(model, repo_id, license, evaluation)
    commit(pp.ops, pp.card, repo_id, repo_type="model", private=private, revision=revision, api=api,
           message=message or f"Upload {Path(str(model)).name} with train push")
    return pp.ops
