"""`train predict`: segment new scans and write the labels in each scan's own voxel grid.

For every input scan (NIfTI file, folder, nnU-Net raw folder, DICOM series; see
`styleswap.volumes.scans`), one volume at a time:

1. read and validate it with the readers `augment ingest` uses;
2. prepare it exactly as the model's training data was prepared (`styleswap.volumes.preprocess`,
   named with its settings in the model's config.json), ``batch_size`` axial slices at a time;
3. run the network on each batch (``--tta``: average with the mirrored input, left/right swapped);
4. resize the class probabilities back, cut the padding, undo the display transform and write the
   argmax through the RAS+ view into an array in the scan's stored voxel order;
5. optionally keep each organ's largest 3D component; write ``CASE.nii.gz`` (uint8 label ids,
   the scan's shape, affine, qform/sform codes and units) under a temporary name, then rename.

Then ``predictions.json`` (inputs, model id and weights hash, options, per-case organ volumes in mL
and timing) and ``predictions.png`` (a few slices per case with the overlay). Memory holds one
scan in its stored dtype, its uint8 labels (and, with ``--save-probabilities``, one uint8 volume
per class) and one batch of slices: it does not grow with the number of scans.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from styleswap.errors import StyleSwapError
from styleswap.trainer.artifact import ModelArtifact, open_model
from styleswap.trainer.data import lateral_permutation
from styleswap.trainer.evaluate import Inference, colorize, predict_probs
from styleswap.volumes import geometry
from styleswap.volumes.io import normalize_modality, read_nifti
from styleswap.volumes.preprocess import PreparedScan
from styleswap.volumes.scans import Scan, ScanRef, find_scans, load_scan

#: Slices shown per case in predictions.png, and cases shown at most.
OVERVIEW_SLICES, OVERVIEW_CASES, PANEL = 3, 12, 192
NIFTI_INTENT_LABEL = "label"


@dataclass
class Segmentation:
    """One scan's result: labels (and probabilities) in the scan's stored voxel order."""

    labels: np.ndarray
    probs: np.ndarray | None
    info: dict[str, Any]
    overview: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (k, image, labels) display


def resolve_modality(scan: Scan, flag: str | None, model_modality: str | None) -> tuple[str, str]:
    """``(modality, where it came from)``: --modality, else what the data says, else the model's
    training data (a cross-modality model is usually run on another modality: say it)."""
    if flag:
        return normalize_modality(flag) or flag.strip(), "--modality"
    if scan.modality:
        return scan.modality, "DICOM Modality tag" if scan.ref.kind == "dicom" else "dataset.json"
    if model_modality:
        return model_modality, "model's training data (pass --modality to override)"
    raise StyleSwapError(f"{scan.ref.path}: modality unknown (the model records none); pass --modality CT or --modality MRI")


def segment_scan(
    model: torch.nn.Module,
    artifact: ModelArtifact,
    scan: Scan,
    *,
    modality: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool = False,
    fill_holes: bool = False,
    largest_component: bool = False,
    probabilities: bool = False,
    progress: bool = True,
) -> Segmentation:
    """Segment one scan (see the module docstring); nothing is written."""
    from tqdm.auto import tqdm

    ncls = int(artifact.config["num_classes"])
    mod, mod_from = resolve_modality(scan, modality, artifact.preprocessing.modality)
    times = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0}
    t = time.perf_counter()
    prep = PreparedScan(scan.voxels, scan.affine, artifact.preprocessing, mod, chunk=batch_size)
    times["preprocess_s"] += time.perf_counter() - t
    labels = np.zeros(scan.voxels.shape, dtype=np.uint8)
    probs = np.zeros(scan.voxels.shape + (ncls,), dtype=np.uint8) if probabilities else None
    swap = lateral_permutation(artifact.labels, ncls) if tta else None
    foreground = np.zeros(prep.nz, dtype=np.int64)
    bar = tqdm(total=prep.nz, desc=scan.ref.case_id, unit="slice", disable=not progress, leave=False, dynamic_ncols=True)
    for k0, k1 in prep.chunks():
        t0 = time.perf_counter()
        x = prep.network_input(k0, k1).to(device)
        t1 = time.perf_counter()
        p = predict_probs(model, x, tta, swap).cpu()
        t2 = time.perf_counter()
        shown = prep.write_back(k0, k1, p, labels, probs)
        foreground[k0:k1] = (shown > 0).reshape(k1 - k0, -1).sum(axis=1)
        t3 = time.perf_counter()
        times["preprocess_s"] += t1 - t0
        times["network_s"] += t2 - t1
        times["postprocess_s"] += t3 - t2
        bar.update(k1 - k0)
    bar.close()
    post = Inference(tta, fill_holes, largest_component)
    if post.postprocesses:
        t = time.perf_counter()
        labels = post.postprocess(labels, ncls)
        if probs is not None and largest_component:  # voxels dropped from the labels are background there too
            probs[labels == 0, 1:] = 0
        times["postprocess_s"] += time.perf_counter() - t
    counts = sum(np.bincount(labels[i : i + 16].ravel(), minlength=ncls) for i in range(0, labels.shape[0], 16))  # no volume-sized int64 copy
    names = {i: n for n, i in artifact.labels.items()}
    info = {
        "shape": list(scan.voxels.shape),
        "spacing_mm": [round(v, 6) for v in geometry.voxel_sizes(scan.affine)],
        "orientation": "".join(nib.aff2axcodes(scan.affine)),
        "modality": {"value": mod, "from": mod_from},
        "normalization": prep.normalization,
        "slices": prep.nz,
        "volumes_ml": {names.get(i, f"class_{i}"): round(float(counts[i]) * scan.voxel_volume_ml, 3) for i in range(1, ncls)},
        **({"zscore": prep.stats} if prep.stats else {}),
        "seconds": {k: round(v, 4) for k, v in times.items()},
    }
    seg = Segmentation(labels, probs, info)
    canon = geometry.to_canonical(labels, prep.ornt)
    for k in sorted(np.argsort(-foreground, kind="stable")[:OVERVIEW_SLICES].tolist()):
        seg.overview.append((k, prep.display_image(k, k + 1)[0], geometry.display_slices(canon, [k])[0]))
    return seg


# --- writing ---------------------------------------------------------------------------------------


def write_nifti(array: np.ndarray, scan: Scan, path: Path, *, intent: str | None = None, scale: float | None = None) -> Path:
    """``array`` on ``scan``'s grid as NIfTI at ``path``: the scan's header (qform, sform and their
    codes, units, dim info) with the array's dtype; written to a temporary name, then renamed."""
    if scan.header is not None and isinstance(scan.header, (nib.Nifti1Header, nib.Nifti2Header)):
        hdr = scan.header.copy()
        cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_dtype(array.dtype)
        img = cls(array, scan.affine, header=hdr)
        img.set_qform(scan.header.get_qform(), code=int(scan.header["qform_code"]))
        img.set_sform(scan.header.get_sform(), code=int(scan.header["sform_code"]))
    else:  # DICOM (or another reader): the geometry is the scanner's
        img = nib.Nifti1Image(array, scan.affine)
        img.set_qform(scan.affine, code=1)
        img.set_sform(scan.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(scale if scale is not None else 1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    if intent:
        img.header.set_intent(intent)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_overview(rows: list[tuple[str, list[tuple[int, np.ndarray, np.ndarray]]]], path: Path) -> Path:
    """predictions.png: one row per case, ``OVERVIEW_SLICES`` axial slices with the label overlay."""
    from PIL import Image, ImageDraw

    lines = []
    for case, shots in rows[:OVERVIEW_CASES]:
        panels = []
        for k, image, labels in shots:
            rgb = colorize(image, labels)
            side = max(rgb.shape[:2])
            sq = geometry.pad_to_square(rgb.transpose(2, 0, 1), 0).transpose(1, 2, 0)
            im = Image.fromarray(np.ascontiguousarray(sq)).resize((PANEL, PANEL * sq.shape[0] // side), Image.NEAREST)
            ImageDraw.Draw(im).text((2, 2), f"{case} z={k}", fill=(255, 255, 0))
            panels.append(np.asarray(im))
        if panels:
            lines.append(np.concatenate(panels, axis=1))
    if not lines:
        raise StyleSwapError("nothing to draw")
    width = max(r.shape[1] for r in lines)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in lines], axis=0)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(obj: Any, path: Path) -> Path:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_output_folder(out: Path, inputs: list[str | Path], refs: list[ScanRef]) -> Path:
    """Refuse an output folder that is a link, a file, inside (or equal to) an input folder, or
    that would overwrite an input scan."""
    out = Path(out)
    if out.is_symlink():
        raise StyleSwapError(f"{out}: output folder is a symbolic link; pass its real path")
    if out.exists() and not out.is_dir():
        raise StyleSwapError(f"{out}: exists and is not a folder")
    target = out.resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if folder.is_dir() and (target == folder or target.is_relative_to(folder)):
            raise StyleSwapError(f"{out}: output folder is inside the input folder {item}; write predictions elsewhere")
    for ref in refs:
        if (target / f"{ref.case_id}.nii.gz").resolve() == ref.path.resolve():
            raise StyleSwapError(f"{out}: writing {ref.case_id}.nii.gz there would overwrite the input {ref.path}")
    return out


def precheck(refs: list[ScanRef]) -> None:
    """Header-level checks of every input before the first prediction (4D, voxel type, memory, a
    DICOM folder with two series): a bad file late in a long list fails in the first second."""
    from styleswap.volumes.dicom import series_files

    for ref in refs:
        if ref.kind == "dicom":
            series_files(ref.path)
        else:
            read_nifti(ref.path)


def predict(
    model: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    *,
    tta: bool = False,
    fill_holes: bool = False,
    largest_component: bool = False,
    save_probabilities: bool = False,
    modality: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every scan of ``inputs`` with ``model``; write ``OUT/CASE.nii.gz`` (and
    ``CASE_probabilities.nii.gz``), ``predictions.json`` and ``predictions.png``. Returns the JSON."""
    if batch_size < 1:
        raise StyleSwapError(f"--batch-size must be >= 1, got {batch_size}")
    artifact = open_model(model)
    refs = find_scans(list(inputs))
    out = check_output_folder(Path(out), list(inputs), refs)
    precheck(refs)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = artifact.load(str(dev))
    start = time.perf_counter()
    cases: dict[str, Any] = {}
    overview = []
    for ref in refs:
        t = time.perf_counter()
        scan = load_scan(ref)
        read_s = time.perf_counter() - t
        seg = segment_scan(net, artifact, scan, modality=modality, batch_size=batch_size, device=dev, tta=tta,
                           fill_holes=fill_holes, largest_component=largest_component, probabilities=save_probabilities,
                           progress=progress)
        t = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        files = [write_nifti(seg.labels, scan, out / f"{ref.case_id}.nii.gz", intent=NIFTI_INTENT_LABEL).name]
        if seg.probs is not None:
            files.append(write_nifti(seg.probs, scan, out / f"{ref.case_id}_probabilities.nii.gz", scale=1 / 255).name)
        seg.info["seconds"].update(read_s=round(read_s, 4), write_s=round(time.perf_counter() - t, 4))
        cases[ref.case_id] = {"input": str(ref.path), "outputs": files, **seg.info}
        overview.append((ref.case_id, seg.overview))
        del scan, seg  # one scan in memory at a time
    total = time.perf_counter() - start
    slices = sum(c["slices"] for c in cases.values())
    summary = {
        "model": artifact.describe(),
        "inputs": [str(i) for i in inputs],
        "options": {"tta": tta, "fill_holes": fill_holes, "largest_component": largest_component, "save_probabilities": save_probabilities,
                    "modality": modality, "batch_size": batch_size, "device": str(dev)},
        "labels": artifact.labels,
        "cases": cases,
        "timing": {"total_s": round(total, 3), "slices": slices, "slices_per_s": round(slices / max(total, 1e-9), 2),
                   **{k: round(sum(c["seconds"].get(k, 0.0) for c in cases.values()), 3)
                      for k in ("read_s", "preprocess_s", "network_s", "postprocess_s", "write_s")}},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    write_overview(overview, out / "predictions.png")
    write_json(summary, out / "predictions.json")
    return summary
