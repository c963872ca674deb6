"""Recognise what the user pointed us at, cheaply, before anything is decoded.

Supported layouts (tried in this order for a single path):

- ``phantom`` / ``phantom:N``: the built-in synthetic CT (no files); ``phantom-mri[:N]`` the same
  anatomy with a T2-like MRI appearance (a demo target domain).
- MSD: ``dataset.json`` with a ``training`` list of ``{"image": ..., "label": ...}``.
- nnU-Net v2 raw: ``dataset.json`` + ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``
  (and ``imagesTs``/``labelsTs`` as the ``test`` split when labels exist).
- PNG folder: ``images/`` and ``masks/`` holding the same file names.
- Loose NIfTI pairs: ``IMAGE.nii.gz:LABEL.nii.gz`` (one string, or a list of them).

Detection only lists files and reads JSON; it checks that every file a case needs exists, so a
build fails in the first second, not after an hour, when a label file is missing.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from styleswap.errors import StyleSwapError
from styleswap.volumes.io import NIFTI_ENDINGS, normalize_modality, strip_nifti

__all__ = ["CaseRef", "Layout", "detect_layout", "normalize_modality", "strip_nifti", "NIFTI_ENDINGS", "TRIED"]

TRIED = (
    "nnU-Net raw (dataset.json + imagesTr/labelsTr), MSD (dataset.json with a 'training' list), "
    "NIfTI image:label pairs, PNG folder (images/ + masks/), phantom"
)
DEFAULT_PHANTOM_CASES = 8

_PAIR_RE = re.compile(r"^(?P<image>.+?\.nii(?:\.gz)?):(?P<label>.+\.nii(?:\.gz)?)$", re.IGNORECASE)
_PHANTOM_RE = re.compile(r"^phantom(?P<mri>-mri)?(?::(?P<n>.*))?$")


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk. ``label`` is None only for PNG cases (masks listed per slice)."""

    case_id: str
    image: Path
    label: Path | None
    split: str = "train"


@dataclass
class Layout:
    kind: str  # "phantom", "nnunet", "msd", "nifti-pairs", "png"
    paths: list[str]
    cases: list[CaseRef] = field(default_factory=list)
    modality: str | None = None  # as the metadata says it, normalised (see `normalize_modality`)
    dataset_labels: dict[str, int] | None = None  # name -> source id, from dataset.json
    dataset_json: Path | None = None
    num_phantom: int = 0
    png_slices: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # case -> [(k, file)]


def detect_layout(source: str | list[str]) -> Layout:
    """The `Layout` of ``source``, or a one-line `StyleSwapError` naming the path and the problem."""
    if isinstance(source, (list, tuple)):
        items = [str(s) for s in source]
        if not items:
            raise StyleSwapError("no source given: pass a folder, IMAGE.nii.gz:LABEL.nii.gz pairs or 'phantom'")
        if len(items) > 1:
            return _nifti_pairs(items)
        source = items[0]
    source = str(source)

    m = _PHANTOM_RE.match(source)
    if m:
        return _phantom(source, m["n"], "MRI" if m["mri"] else "CT")
    if _PAIR_RE.match(source) and not Path(source).exists():
        return _nifti_pairs([source])

    path = Path(source)
    if not path.exists():
        raise StyleSwapError(f"{path}: no such file or folder")
    if path.is_file():
        hint = ""
        if strip_nifti(path.name) != path.name:
            hint = f"; a NIfTI image needs its label: pass {path}:LABEL.nii.gz"
        raise StyleSwapError(f"{path}: matches no supported layout (tried: {TRIED}){hint}")
    ds_json = path / "dataset.json"
    if ds_json.is_file():
        meta = _read_json(ds_json)
        if isinstance(meta.get("training"), list):
            return _msd(path, ds_json, meta)
        if (path / "imagesTr").is_dir():
            return _nnunet(path, ds_json, meta)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return _png_folder(path)
    raise StyleSwapError(f"{path}: matches no supported layout (tried: {TRIED})")


# --- individual layouts ----------------------------------------------------------------------------


def _phantom(source: str, n: str | None, modality: str = "CT") -> Layout:
    if n is None or n == "":
        num = DEFAULT_PHANTOM_CASES
    else:
        try:
            num = int(n)
        except ValueError:
            num = 0
        if num < 1:
            raise StyleSwapError(f"{source}: phantom:N needs a positive integer number of cases, got {n!r}")
    return Layout(kind="phantom", paths=[source], modality=modality, num_phantom=num)


def _nifti_pairs(items: list[str]) -> Layout:
    cases: list[CaseRef] = []
    seen: dict[str, str] = {}
    for item in items:
        m = _PAIR_RE.match(item)
        if not m:
            if Path(item).is_dir():
                raise StyleSwapError(f"{item}: a folder cannot be mixed with IMAGE.nii.gz:LABEL.nii.gz pairs")
            raise StyleSwapError(
                f"{item}: not an IMAGE.nii.gz:LABEL.nii.gz pair (matches no supported layout (tried: {TRIED}))"
            )
        image, label = Path(m["image"]), Path(m["label"])
        _require_file(image, "image")
        _require_file(label, "label", f" for {image}")
        case_id = strip_nifti(image.name)
        if case_id in seen:
            raise StyleSwapError(f"{image}: case id {case_id!r} is also the case id of {seen[case_id]}; rename one")
        seen[case_id] = str(image)
        cases.append(CaseRef(case_id, image, label))
    return Layout(kind="nifti-pairs", paths=items, cases=cases)


def _nnunet(root: Path, ds_json: Path, meta: dict) -> Layout:
    channels = meta.get("channel_names") or meta.get("modality") or {}
    modality = _single_channel_modality(ds_json, channels)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise StyleSwapError(f"{ds_json}: file_ending {ending!r} is not supported (NIfTI only: .nii.gz or .nii)")

    cases = _nnunet_split(root / "imagesTr", root / "labelsTr", ending, "train", required=True)
    if not cases:
        raise StyleSwapError(f"{root / 'imagesTr'}: no *_0000{ending} images")
    images_ts = root / "imagesTs"
    if images_ts.is_dir():
        labels_ts = root / "labelsTs"
        if labels_ts.is_dir():
            cases += _nnunet_split(images_ts, labels_ts, ending, "test", required=False)
        elif any(images_ts.glob(f"*_0000{ending}")):
            warnings.warn(f"{images_ts}: no labelsTs folder, test images skipped", stacklevel=3)
    return Layout(
        kind="nnunet",
        paths=[str(root)],
        cases=cases,
        modality=modality,
        dataset_labels=_dataset_labels(ds_json, meta.get("labels")),
        dataset_json=ds_json,
    )


def _nnunet_split(images: Path, labels: Path, ending: str, split: str, *, required: bool) -> list[CaseRef]:
    suffix = f"_0000{ending}"
    cases = []
    for image in sorted(images.glob(f"*{suffix}")):
        case_id = image.name[: -len(suffix)]
        label = labels / f"{case_id}{ending}"
        if not label.is_file():
            if required:
                raise StyleSwapError(f"{label}: missing label file for {image}")
            warnings.warn(f"{image}: no label file {label}, skipped", stacklevel=4)
            continue
        cases.append(CaseRef(case_id, image, label, split))
    return cases


def _msd(root: Path, ds_json: Path, meta: dict) -> Layout:
    modality = _single_channel_modality(ds_json, meta.get("modality") or meta.get("channel_names") or {})
    cases = []
    seen: set[str] = set()
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise StyleSwapError(f"{ds_json}: training[{i}] must be an object with 'image' and 'label'")
        image, label = _inside(root, ds_json, i, "image", entry["image"]), _inside(root, ds_json, i, "label", entry["label"])
        _require_file(image, "image")
        _require_file(label, "label", f" for {image}")
        case_id = strip_nifti(image.name)
        if case_id in seen:
            raise StyleSwapError(f"{ds_json}: case {case_id!r} is listed twice in 'training'")
        seen.add(case_id)
        cases.append(CaseRef(case_id, image, label, "train"))
    if not cases:
        raise StyleSwapError(f"{ds_json}: the 'training' list is empty")
    if meta.get("test"):
        warnings.warn(f"{ds_json}: the 'test' list has no labels, its images are skipped", stacklevel=3)
    return Layout(
        kind="msd",
        paths=[str(root)],
        cases=cases,
        modality=modality,
        dataset_labels=_dataset_labels(ds_json, meta.get("labels")),
        dataset_json=ds_json,
    )


_PNG_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<k>\d+)$")


def _png_folder(root: Path) -> Layout:
    images = {p.name for p in (root / "images").iterdir() if p.suffix.lower() == ".png"}
    masks = {p.name for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise StyleSwapError(f"{root / 'images'}: no .png files")
    missing = sorted(images - masks)
    if missing:
        raise StyleSwapError(f"{root / 'masks' / missing[0]}: missing mask for {root / 'images' / missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(masks - images)
    if extra:
        raise StyleSwapError(f"{root / 'masks' / extra[0]}: mask without an image in {root / 'images'}")
    slices: dict[str, list[tuple[int, str]]] = {}
    for name in sorted(images):
        stem = name[: -len(".png")]
        m = _PNG_SLICE_RE.match(stem)
        case_id, k = (m["case"], int(m["k"])) if m else (stem, 0)
        slices.setdefault(case_id, []).append((k, name))
    for case_id, items in slices.items():
        ks = [k for k, _ in items]
        if len(set(ks)) != len(ks):
            dup = sorted(n for k, n in items if ks.count(k) > 1)
            raise StyleSwapError(f"{root / 'images'}: {dup[0]} and {dup[1]} give the same case and slice index")
        items.sort()
    cases = [CaseRef(case_id, root / "images", None) for case_id in slices]
    return Layout(kind="png", paths=[str(root)], cases=cases, png_slices=slices)


# --- helpers -----------------------------------------------------------------------------------------


def _inside(root: Path, ds_json: Path, i: int, key: str, rel: object) -> Path:
    """``root / rel`` for a path listed in dataset.json, refused when it is absolute or climbs out
    of the dataset folder with ``..``: a dataset.json (often downloaded) names files of its own
    folder only, never others on this machine. Links inside the folder are its owner's choice."""
    if not isinstance(rel, str) or not rel.strip():
        raise StyleSwapError(f"{ds_json}: training[{i}] {key} must be a relative path, got {rel!r}")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or Path(rel).drive or ".." in parts:
        raise StyleSwapError(f"{ds_json}: training[{i}] {key} {rel!r} leads outside {root}; paths must stay inside the dataset folder")
    return root / rel


def _require_file(path: Path, what: str, context: str = "") -> None:
    if not path.is_file():
        missing = "missing label file" if what == "label" else f"missing {what} file"
        raise StyleSwapError(f"{path}: {missing}{context}")


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{path}: not valid JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise StyleSwapError(f"{path}: expected a JSON object")
    return meta


def _single_channel_modality(ds_json: Path, channels: object) -> str | None:
    if not isinstance(channels, dict) or not channels:
        return None
    if len(channels) > 1:
        raise StyleSwapError(
            f"{ds_json}: {len(channels)} input channels {sorted(channels.values())}; only single-channel data is supported"
        )
    return normalize_modality(next(iter(channels.values())))


def _dataset_labels(ds_json: Path, raw: object) -> dict[str, int] | None:
    """dataset.json labels as name -> id, accepting nnU-Net (name: id) and MSD ("id": name) styles."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise StyleSwapError(f"{ds_json}: 'labels' must be an object")
    out: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, str) and str(key).strip().isdigit():  # MSD: {"1": "liver"}
            name, ident = value, int(key)
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: {"liver": 1}
            name, ident = str(key), value
        else:
            raise StyleSwapError(
                f"{ds_json}: label {key!r} -> {value!r} is not a single integer id (region-based labels?); "
                "pass --labels NAME=ID,..."
            )
        out[name] = ident
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
