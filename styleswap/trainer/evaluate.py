"""3D per-organ evaluation of a segmentation model on a dataset folder.

Slices are grouped by ``case_id`` (their ``slice_index`` orders them), and Dice is computed per
organ over the whole case volume. Since Dice over a volume only needs per-class sums
(``|P & G|``, ``|P|``, ``|G|``), each case's confusion matrix, which holds them, is accumulated
slice by slice; volumes are kept only for post-processing and HD95.

Conventions (tested):

* An organ absent from both the prediction and the ground truth of a case has Dice NaN for that
  case and is excluded from means (not counted as 1.0).
* An organ absent from the ground truth but predicted has Dice 0 (a false positive is an error).
* ``per_organ[name]``: mean / std (population, ``ddof=0``) / n over the cases where it is defined.
* ``per_case[case]["mean"]``: mean over that case's defined organs.
* ``mean_dice``: mean over organs of ``per_organ[name]["mean"]`` (the papers' "average Dice");
  ``mean_dice_std``: std over cases of ``per_case[case]["mean"]``.
* ``confusion`` (and ``per_case[case]["confusion"]``): voxel counts, row = ground-truth class,
  column = predicted class, background first, summed over cases: where an organ's voxels went
  when they were missed (to background, or to another organ), which Dice alone does not say.
* HD95 (optional, mm, ``monai.metrics.compute_hausdorff_distance`` with the case's spacing): NaN
  when the organ is missing from the prediction or from the ground truth.
* Background (id 0) is never scored.

JSON has no NaN: undefined values are written as ``null``.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.metrics import (  # noqa: F401 (raw_eval and tests import them from here)
    class_counts,
    confusion_matrix,
    counts_from_confusion,
    dice_from_confusion,
    dice_from_counts,
)
from styleswap.trainer.data import DatasetInfo, SliceStream, lateral_permutation, make_loader, open_dataset
from styleswap.trainer.model import SegNet, load_model, normalize_input, resolve_model_dir


def dice_per_organ(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each organ (ids 1..C-1) between two label volumes; shape (C-1,), NaN if undefined."""
    return dice_from_counts(*class_counts(pred, gt, num_classes))


def summarize(case_dice: dict[str, np.ndarray], organ_names: list[str], case_hd95: dict[str, np.ndarray] | None = None,
              case_confusion: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """metrics dict from per-case Dice vectors, and optionally HD95 vectors and (C, C) confusion
    matrices (see the module docstring for the conventions)."""
    cases = sorted(case_dice)
    if not cases:
        raise StyleSwapError("no cases to evaluate")
    table = np.stack([case_dice[c] for c in cases])  # (cases, organs)
    per_organ, organ_means = {}, []
    for j, name in enumerate(organ_names):
        col = table[:, j]
        ok = col[~np.isnan(col)]
        entry = {"mean": float(ok.mean()) if ok.size else None, "std": float(ok.std()) if ok.size else None, "n": int(ok.size)}
        if case_hd95 is not None:
            h = np.array([case_hd95[c][j] for c in cases], dtype=np.float64)
            h = h[np.isfinite(h)]
            entry["hd95_mean"] = float(h.mean()) if h.size else None
            entry["hd95_std"] = float(h.std()) if h.size else None
        per_organ[name] = entry
        if ok.size:
            organ_means.append(ok.mean())
    case_means = np.array([np.nanmean(r) if np.any(~np.isnan(r)) else np.nan for r in table])
    valid_case_means = case_means[~np.isnan(case_means)]
    per_case = {}
    for i, c in enumerate(cases):
        row: dict[str, Any] = {n: _num(table[i, j]) for j, n in enumerate(organ_names)}
        row["mean"] = _num(case_means[i])
        if case_hd95 is not None:
            row["hd95"] = {n: _num(case_hd95[c][j]) for j, n in enumerate(organ_names)}
        if case_confusion is not None:
            row["confusion"] = np.asarray(case_confusion[c]).tolist()
        per_case[c] = row
    metrics = {
        "mean_dice": float(np.mean(organ_means)) if organ_means else None,
        "mean_dice_std": float(valid_case_means.std()) if valid_case_means.size else None,
        "num_cases": len(cases),
        "organs": organ_names,
        "per_organ": per_organ,
        "per_case": per_case,
    }
    if case_confusion is not None:
        total = sum(np.asarray(case_confusion[c], np.int64) for c in cases)
        metrics["confusion"] = {"classes": ["background", *organ_names], "rows": "ground truth", "columns": "prediction",
                                "voxels": total.tolist()}
    return metrics


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


@torch.no_grad()
def predict_probs(model: SegNet, images: torch.Tensor, tta: bool = False, swap: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W) images -> (B, C, H, W) softmax probabilities.

    ``tta`` averages the softmax of the image and of its horizontal mirror (flipped back, with
    left/right channels swapped by ``swap``, see `lateral_permutation`). No vertical flip: the
    networks never see upside-down anatomy in training.
    """
    probs = torch.softmax(model(images).float(), dim=1)
    return with_flip(model, images, probs, swap) if tta else probs


@torch.no_grad()
def with_flip(model: SegNet, images: torch.Tensor, probs: torch.Tensor, swap: torch.Tensor | None) -> torch.Tensor:
    """The test-time flip of `predict_probs`, given the plain ``probs`` already computed for ``images``."""
    flipped = torch.softmax(model(images.flip(-1)).float(), dim=1).flip(-1)
    if swap is not None:
        flipped = flipped[:, swap.to(flipped.device)]
    return (probs + flipped) / 2  # halving is exact: the argmax is that of the sum


@torch.no_grad()
def predict_labels(model: SegNet, images: torch.Tensor, tta: bool = False, swap: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W) images -> (B, H, W) label ids: the argmax of `predict_probs`."""
    return predict_probs(model, images, tta, swap).argmax(dim=1)


class Inference(NamedTuple):
    """How a prediction is made: the test-time flip, then the post-processing of each case volume."""

    tta: bool = False
    fill_holes: bool = False
    largest_component: bool = False

    @property
    def flags(self) -> list[str]:
        """Its `train eval` / `train predict` flags."""
        return [flag for flag, on in zip(("--tta", "--fill-holes", "--largest-component"), self) if on]

    @property
    def name(self) -> str:
        """``plain``, ``tta``, ``tta+fill-holes+largest-component`` ...: its flags, joined."""
        return "+".join(f[2:] for f in self.flags) or "plain"

    @property
    def postprocesses(self) -> bool:
        return self.fill_holes or self.largest_component

    def postprocess(self, volume: np.ndarray, num_classes: int) -> np.ndarray:
        """A case's (D, H, W) label volume after this option's post-processing: holes first, so that
        an enclosed blob joins its organ before the components are counted."""
        if self.fill_holes:
            volume = fill_holes(volume, num_classes)
        if self.largest_component:
            volume = keep_largest_component(volume, num_classes)
        return volume


#: What `train eval --choose` scores on the source's validation set, simplest first (ties go to it).
INFERENCE_OPTIONS: list[Inference] = sorted((Inference(*o) for o in itertools.product((False, True), repeat=3)),
                                            key=lambda o: (sum(o), [not on for on in o]))


def keep_largest_component(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Per organ, keep only the largest 3D connected component (26-connectivity) of ``volume``.

    ``volume`` (D, H, W) label ids; the voxels of smaller components become background. Each
    abdominal organ here is one connected body, so stray islands are false positives; this is
    the usual post-processing of cross-modality segmentation (it uses no target labels).
    """
    from scipy import ndimage

    out = volume.copy()
    structure = np.ones((3, 3, 3), bool)
    for c in range(1, num_classes):
        comp, n = ndimage.label(volume == c, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp > 0) & (comp != sizes.argmax())] = 0
    return out


def fill_holes(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Per organ (in label order), give its id to every voxel it encloses in 3D.

    A voxel is enclosed when no face-connected path of the organ's non-voxels joins it to the
    volume's border: background inside the organ, or a blob of another organ (a network that takes
    liver texture for kidney marks kidney islands inside the liver). Organs are solid: these are errors.
    """
    from scipy import ndimage

    out = volume.copy()
    for c in range(1, num_classes):
        organ = volume == c
        if organ.any():
            out[ndimage.binary_fill_holes(organ) & ~organ] = c
    return out


def evaluate_info(
    model: SegNet,
    info: DatasetInfo,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool = False,
    fill_holes: bool = False,
    largest_component: bool = False,
    hd95: bool = False,
    overlay_slices: int = 3,
    workers: int = 0,
) -> tuple[dict[str, Any], dict[str, list]]:
    """Run the model over every slice of ``info`` and score per case in 3D.

    ``fill_holes`` and ``largest_component`` post-process each case's stacked prediction (slices
    stacked by ``slice_index``; see `Inference.postprocess`) before scoring. Returns (metrics,
    overlays) where overlays maps case -> up to ``overlay_slices`` tuples ``(slice_index, image (H, W)
    float, gt (H, W), pred (H, W))`` with the most ground-truth foreground.
    """
    option = Inference(tta, fill_holes, largest_component)
    return evaluate_options(model, info, [option], batch_size=batch_size, device=device, hd95=hd95,
                            overlay_slices=overlay_slices, workers=workers)[option]


def evaluate_options(
    model: SegNet,
    info: DatasetInfo,
    options: list[Inference],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    hd95: bool = False,
    overlay_slices: int = 3,
    workers: int = 0,
) -> dict[Inference, tuple[dict[str, Any], dict[str, list]]]:
    """`evaluate_info` for several inference options in one pass over the data.

    Each batch goes through the network once, and once more mirrored if an option flips (the flip
    reuses the plain softmax); the post-processing options work on the stacked case volumes of the
    same prediction. Each option's figures are those `evaluate_info` gives it alone.
    """
    ncls = int(model.config["num_classes"])
    if info.num_classes > ncls:
        raise StyleSwapError(
            f"{info.root}: {info.num_classes} labels in manifest.json but the model has {ncls} classes"
        )
    organ_names = [n for n, _ in sorted(info.labels.items(), key=lambda kv: kv[1])][1:]
    organ_names += [f"class_{i}" for i in range(len(organ_names) + 1, ncls)]
    swap = lateral_permutation(info.labels, ncls)
    input_norm = model.config.get("input_norm", "unit")
    if input_norm == "zscore" and not info.volume_stats:
        raise StyleSwapError(f"{info.root}: the model reads per-volume z-scores, but manifest.json has no volume_stats; "
                             "ingest the data again with this version")
    options = [Inference(*o) for o in dict.fromkeys(options)]
    flips = sorted({o.tta for o in options})  # the predictions to make: plain, mirrored or both
    stacks = {o.tta for o in options if o.postprocesses or hd95}  # whose case volumes are kept
    stream = SliceStream([info], shuffle=False, num_classes=ncls, with_copies=False)
    loader = make_loader(stream, batch_size, workers)
    confusions = {t: defaultdict(lambda: np.zeros((ncls, ncls), np.int64)) for t in flips}
    volumes: dict[bool, dict[str, list]] = {t: defaultdict(list) for t in stacks}
    overlays: dict[bool, dict[str, list]] = {t: defaultdict(list) for t in flips}
    spacing: dict[str, list[float]] = {}
    was_training = model.training
    n_slices = 0
    model.eval()
    try:
        for batch in loader:
            x = normalize_input(batch["image"].to(device), batch["stats"], input_norm)
            probs = predict_probs(model, x)
            preds = {t: (with_flip(model, x, probs, swap) if t else probs).argmax(dim=1).cpu().numpy() for t in flips}
            gt = batch["mask"][:, 0].numpy()
            n_slices += len(gt)
            for i, case in enumerate(batch["case_id"]):
                sl = int(batch["slice_index"][i])
                if hd95:
                    spacing[case] = batch["spacing"][i].tolist()
                for t, pred in preds.items():
                    confusions[t][case] += confusion_matrix(pred[i], gt[i], ncls)
                    if t in stacks:
                        volumes[t][case].append((sl, pred[i].astype(np.uint8), gt[i].astype(np.uint8)))
                    if overlay_slices:
                        ov = overlays[t][case]
                        ov.append((int((gt[i] > 0).sum()), sl, batch["image"][i, 0].numpy(), gt[i], pred[i]))
                        ov.sort(key=lambda o: (-o[0], o[1]))
                        del ov[overlay_slices:]
    finally:
        model.train(was_training)
    stacked = {t: {c: _stack(v) for c, v in volumes[t].items()} for t in stacks}
    results = {}
    for option in options:
        t = option.tta
        case_confusion, case_overlays, case_stacks = dict(confusions[t]), dict(overlays[t]), stacked.get(t, {})
        if option.postprocesses:
            case_stacks = {}
            for case, (ids, pred_v, gt_v) in stacked[t].items():
                pred_v = option.postprocess(pred_v, ncls)
                case_stacks[case] = (ids, pred_v, gt_v)
                case_confusion[case] = confusion_matrix(pred_v, gt_v, ncls)
                if case in case_overlays:  # show the post-processed prediction
                    post = dict(zip(ids, pred_v))
                    case_overlays[case] = [(n, i, im, g, post[i]) for n, i, im, g, _ in case_overlays[case]]
        case_dice = {c: dice_from_confusion(v) for c, v in case_confusion.items()}
        metrics = summarize(case_dice, organ_names, _hd95(case_stacks, spacing, ncls) if hd95 else None, case_confusion)
        metrics["num_slices"] = n_slices
        metrics.update(option._asdict())
        results[option] = metrics, {c: [o[1:] for o in sorted(v, key=lambda o: o[1])] for c, v in case_overlays.items()}
    return results


def _stack(items: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """One case's ``(slice_index, pred, gt)`` slices -> (slice ids, pred (D, H, W), gt (D, H, W)) in slice order."""
    items = sorted(items, key=lambda t: t[0])
    return [t[0] for t in items], np.stack([t[1] for t in items]), np.stack([t[2] for t in items])


def _hd95(stacked: dict[str, tuple], spacing: dict[str, list[float]], ncls: int) -> dict[str, np.ndarray]:
    out = {}
    for case, (_, pred_v, gt_v) in stacked.items():
        row, col, thick = spacing[case]
        out[case] = hd95_per_organ(pred_v, gt_v, ncls, [thick, row, col])
    return out


def hd95_per_organ(pred_v: np.ndarray, gt_v: np.ndarray, ncls: int, spacing: list[float]) -> np.ndarray:
    """HD95 in mm of each organ (ids 1..C-1) between two 3D label volumes; ``spacing`` per array
    axis. NaN where the organ is missing from either side."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    pred = torch.from_numpy(np.ascontiguousarray(pred_v)).long()[None, None]  # (1, 1, D, H, W)
    gt = torch.from_numpy(np.ascontiguousarray(gt_v)).long()[None, None]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-organ and MONAI deprecation warnings: handled below
        hd = compute_hausdorff_distance(
            one_hot(pred, ncls), one_hot(gt, ncls), include_background=False, percentile=95, spacing=list(spacing)
        )
    vals = hd[0].double().numpy()
    pres_p = np.array([(pred == k).any().item() for k in range(1, ncls)])
    pres_g = np.array([(gt == k).any().item() for k in range(1, ncls)])
    vals[~(pres_p & pres_g)] = np.nan  # undefined when either side is empty
    return vals


def colorize(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grayscale float image in [0, 1] + label map -> RGB uint8 with `contract.LABEL_COLORS`."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None] * 255.0, 3, axis=-1)
    for lid, color in contract.LABEL_COLORS.items():
        sel = labels == lid
        if sel.any():
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.array(color, dtype=np.float64)
    return rgb.astype(np.uint8)


def write_overlays(overlays: dict[str, list], path: str | Path, max_cases: int = 4) -> Path:
    """A grid PNG: one row per (case, slice); columns image | ground truth | prediction."""
    from PIL import Image, ImageDraw

    rows = []
    for case in sorted(overlays)[:max_cases]:
        for sl, image, gt, pred in overlays[case]:
            gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            row = np.concatenate([np.repeat(gray[..., None], 3, -1), colorize(image, gt), colorize(image, pred)], axis=1)
            im = Image.fromarray(row)
            ImageDraw.Draw(im).text((2, 2), f"{case} #{sl}  | GT | pred", fill=(255, 255, 0))
            rows.append(np.asarray(im))
    if not rows:
        raise StyleSwapError("nothing to draw")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return Path(path)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A Markdown table: one row per organ, then the mean."""

    def f(x: float | None, scale: float = 100.0, nd: int = 1) -> str:
        return "n/a" if x is None else f"{x * scale:.{nd}f}"

    has_hd = any("hd95_mean" in v for v in metrics["per_organ"].values())
    head = "| organ | Dice % (mean) | Dice % (std) | cases |" + (" HD95 mm |" if has_hd else "")
    sep = "|---|---:|---:|---:|" + ("---:|" if has_hd else "")
    lines = [head, sep]
    for name, v in metrics["per_organ"].items():
        line = f"| {name} | {f(v['mean'])} | {f(v['std'])} | {v['n']} |"
        if has_hd:
            line += f" {f(v.get('hd95_mean'), 1.0, 2)} |"
        lines.append(line)
    lines.append(f"| **mean** | **{f(metrics['mean_dice'])}** | {f(metrics['mean_dice_std'])} | {metrics['num_cases']} |" + (" |" if has_hd else ""))
    if "confusion" in metrics:
        lines += ["", *confusion_markdown(metrics["confusion"])]
    return "\n".join(lines) + "\n"


def confusion_markdown(confusion: dict[str, Any]) -> list[str]:
    """Where each organ's ground-truth voxels went, in % of its voxels: a row per organ, a column per predicted class."""
    classes, voxels = confusion["classes"], np.asarray(confusion["voxels"], np.float64)
    lines = ["Ground truth (rows) predicted as (columns), % of the organ's voxels over all cases:", "",
             "| ground truth | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for k in range(1, len(classes)):
        total = voxels[k].sum()
        cells = [f"{100 * v / total:.1f}" if total else "n/a" for v in voxels[k]]
        lines.append(f"| {classes[k]} | " + " | ".join(cells) + " |")
    return lines


def evaluate_model(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    tta: bool = False,
    fill_holes: bool = False,
    largest_component: bool = False,
    hd95: bool = False,
    device: str | None = None,
    split: str | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a trained model folder on a dataset folder; writes metrics.json, metrics.md, predictions.png.

    ``out_dir`` must be new, empty or an earlier evaluation (metrics.json + metrics.md): a folder
    of other files is refused before anything runs. A model trained on another slice size or
    modality than the data's is evaluated, with a warning on stderr (cross-modality evaluation is
    the point of the project; a size mismatch usually is not)."""
    _check_out(out_dir, "metrics.json", "metrics.md")
    model, info, dev = _open(model_dir, data_dir, device, split)
    metrics, overlays = evaluate_info(model, info, batch_size=batch_size, device=dev, tta=tta, fill_holes=fill_holes,
                                      largest_component=largest_component, hd95=hd95, workers=workers)
    metrics["model"] = str(resolve_model_dir(model_dir))
    metrics["data"] = str(Path(data_dir))
    return write_metrics(metrics, overlays, out_dir)


def choose_inference(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    device: str | None = None,
    split: str | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Score every `INFERENCE_OPTIONS` entry in one pass (meant for the source's validation set) and choose.

    Writes ``out_dir``/OPTION/ (an evaluation each, as `evaluate_model`) and ``out_dir``/choice.json
    (last): every option's flags and mean Dice, and the chosen one, the best, ties going to the one
    with fewer flags, so an option is only chosen when it helps. ``out_dir`` must be new, empty or an earlier choice."""
    _check_out(out_dir, "choice.json")
    model, info, dev = _open(model_dir, data_dir, device, split)
    results = evaluate_options(model, info, INFERENCE_OPTIONS, batch_size=batch_size, device=dev, workers=workers)
    out = Path(out_dir)
    scores = {}
    for option in INFERENCE_OPTIONS:
        metrics, overlays = results[option]
        metrics["model"], metrics["data"] = str(resolve_model_dir(model_dir)), str(Path(data_dir))
        scores[option] = write_metrics(metrics, overlays, out / option.name)["mean_dice"]
    chosen = max(INFERENCE_OPTIONS, key=lambda o: scores[o] or 0.0)  # the first best: the simplest
    choice = {"chosen": chosen.name, "flags": chosen.flags,
              "options": {o.name: {"flags": o.flags, "mean_dice": d} for o, d in scores.items()},
              "model": str(resolve_model_dir(model_dir)), "data": str(Path(data_dir))}
    (out / "choice.json").write_text(json.dumps(choice, indent=2))
    return choice


def _check_out(out_dir: str | Path, *ours: str) -> None:
    """Refuse, before anything runs, an output folder that holds other files than an earlier run of ours."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not all((out / name).is_file() for name in ours):
        names = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise StyleSwapError(f"{out}: not empty and not an evaluation of this tool (holds {names}); choose a new or empty --out")


def _open(model_dir: str | Path, data_dir: str | Path, device: str | None, split: str | None) -> tuple[SegNet, DatasetInfo, torch.device]:
    """The model on its device and the dataset, warning when they were made for other slices or another modality."""
    info = open_dataset(data_dir, split=split)
    folder = resolve_model_dir(model_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(folder, map_location="cpu").to(dev)
    trained = model.config.get("image_size")
    if trained and tuple(trained) != tuple(info.image_size):
        warnings.warn(f"{folder}: trained on {trained[0]}x{trained[1]} slices, {info.root} holds "
                      f"{info.image_size[0]}x{info.image_size[1]}; scores may suffer (ingest with --size {trained[0]})", stacklevel=3)
    if model.config.get("modality") and info.modality and model.config["modality"] != info.modality:
        warnings.warn(f"{folder}: trained on {model.config['modality']}, evaluated on {info.modality} ({info.root})", stacklevel=3)
    return model, info, dev


def write_metrics(metrics: dict[str, Any], overlays: dict[str, list], out_dir: str | Path) -> dict[str, Any]:
    """``out_dir``/metrics.json, metrics.md and predictions.png (see `write_overlays`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.md").write_text(metrics_markdown(metrics))
    write_overlays(overlays, out / "predictions.png")
    return metrics
