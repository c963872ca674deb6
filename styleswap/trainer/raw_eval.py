"""`train eval --images DIR --labels DIR`: per-organ 3D Dice (and HD95) in each scan's own voxel grid.

Each image is segmented exactly as `train predict` would (`predict.segment_scan`) and compared
with its label volume voxel for voxel on the scan's grid, so the figures compare with tools that
measure there (nnU-Net, MONAI, challenge evaluators), not with the resized slices of a dataset
folder. The label file of case ``CASE`` is ``LABELS/CASE.nii.gz`` (or ``.nii``); it must share the
image's grid and hold the model's label ids. Metric conventions are those of `evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from styleswap.errors import StyleSwapError
from styleswap.trainer.artifact import open_model
from styleswap.trainer.evaluate import confusion_matrix, dice_from_confusion, hd95_per_organ, summarize, write_metrics
from styleswap.trainer.predict import segment_scan
from styleswap.volumes import geometry
from styleswap.volumes.io import NIFTI_ENDINGS, check_same_grid, make_label_map, read_nifti, read_voxels
from styleswap.volumes.scans import find_scans, load_scan


def label_file(labels_dir: Path, case_id: str) -> Path:
    for ending in NIFTI_ENDINGS:
        path = labels_dir / f"{case_id}{ending}"
        if path.is_file():
            return path
    raise StyleSwapError(f"{labels_dir / (case_id + '.nii.gz')}: missing label file for case {case_id!r}")


def evaluate_raw(
    model: str | Path,
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    tta: bool = False,
    fill_holes: bool = False,
    largest_component: bool = False,
    hd95: bool = False,
    modality: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on raw image volumes against raw label volumes; writes metrics.json,
    metrics.md and predictions.png (image | ground truth | prediction) to ``out``."""
    artifact = open_model(model)
    labels_dir = Path(labels)
    if not labels_dir.is_dir():
        raise StyleSwapError(f"{labels_dir}: --labels must be a folder of CASE.nii.gz label volumes")
    refs = find_scans([images])
    pairs = [(ref, label_file(labels_dir, ref.case_id)) for ref in refs]  # every label found before any work
    ncls = int(artifact.config["num_classes"])
    label_map = make_label_map(None, None, artifact.labels)  # the model's ids, anything else refused
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = artifact.load(str(dev))
    case_dice, case_hd, case_confusion, overlays = {}, {}, {}, {}
    for ref, lpath in pairs:
        lab_img = read_nifti(lpath)
        scan = load_scan(ref)
        check_same_grid(SimpleNamespace(shape=scan.voxels.shape, affine=scan.affine), lab_img, ref.path, lpath)
        gt = label_map.apply(read_voxels(lab_img, lpath), lpath)
        seg = segment_scan(net, artifact, scan, modality=modality, batch_size=batch_size, device=dev, tta=tta,
                           fill_holes=fill_holes, largest_component=largest_component, progress=progress)
        case_confusion[ref.case_id] = confusion = confusion_matrix(seg.labels, gt, ncls)
        case_dice[ref.case_id] = dice_from_confusion(confusion)
        if hd95:
            case_hd[ref.case_id] = hd95_per_organ(seg.labels, gt, ncls, list(geometry.voxel_sizes(scan.affine)))
        ornt = geometry.canonical_orientation(scan.affine)
        gt_canon = geometry.to_canonical(gt, ornt)
        overlays[ref.case_id] = [(k, image, geometry.display_slices(gt_canon, [k])[0], pred) for k, image, pred in seg.overview]
        del scan, seg, gt
    metrics = summarize(case_dice, artifact.organs, case_hd if hd95 else None, case_confusion)
    metrics.update(grid="native (each scan's own voxels)", tta=tta, fill_holes=fill_holes, largest_component=largest_component,
                   model=str(artifact.folder), model_id=artifact.spec, weights_sha256=artifact.sha256, images=str(images), labels=str(labels))
    return write_metrics(metrics, overlays, out)


__all__ = ["evaluate_raw", "label_file"]
