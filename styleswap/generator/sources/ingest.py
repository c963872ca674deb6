"""The one entry point from raw data to preprocessed slices: `open_source`.

``open_source`` checks cheaply what it can (layout, file existence, the ``labels`` argument,
the modality) and returns a `SourceStream`; ``SourceStream.slices()`` then reads one volume at a
time, so memory does not grow with the number of cases. Training data (``augment build``) and
evaluation data (``augment ingest``) both come through here, so they are preprocessed identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from styleswap.contract import DEFAULT_LABELS
from styleswap.errors import StyleSwapError
from styleswap.generator.sources import pngs, slicing
from styleswap.generator.sources.base import SourceSlice, Volume
from styleswap.generator.sources.layouts import CaseRef, Layout, detect_layout, normalize_modality
from styleswap.volumes import intensity
from styleswap.volumes.geometry import voxel_sizes
from styleswap.volumes.io import LabelMap, canonical_voxels, check_finite, check_same_grid, make_label_map, read_nifti


@dataclass
class SourceStream:
    """A validated source. ``info`` is JSON-able and goes into manifest.json; its
    ``normalization.per_case`` fills in while streaming (each case's window or percentiles, and the
    normalized volume's mean and std)."""

    info: dict
    _produce: Callable[[], Iterator[SourceSlice]] = field(repr=False)

    def slices(self) -> Iterator[SourceSlice]:
        """Every kept slice, case by case (one volume in memory at a time). Restartable."""
        return self._produce()


def open_source(
    source: str | list[str],
    *,
    labels: str | dict[str, int] | None = None,
    size: int = 192,
    keep_empty: float = 0.1,
    modality: str | None = None,
    seed: int = 0,
    project_labels: dict[str, int] = DEFAULT_LABELS,
    intensity_rule: str = "percentile",
    split: str | None = None,
) -> SourceStream:
    """Recognise ``source`` (phantom[:N], nnU-Net raw or MSD folder, ``IMAGE:LABEL`` NIfTI pairs,
    PNG folder), validate the arguments, and return a stream of preprocessed slices.

    ``intensity_rule``: ``percentile`` or ``standard`` (see `intensity`). ``split`` moves some
    training cases to the ``validation`` split (see `split_cases`)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise StyleSwapError(f"--size must be an integer >= 8, got {size!r}")
    if intensity_rule not in intensity.RULES:
        raise StyleSwapError(f"--intensity must be one of {', '.join(intensity.RULES)}, got {intensity_rule!r}")
    if not 0.0 <= float(keep_empty) <= 1.0:
        raise StyleSwapError(f"--keep-empty must be in [0, 1], got {keep_empty!r}")
    layout = detect_layout(source)
    label_map = make_label_map(labels, layout.dataset_labels, project_labels, layout.dataset_json)
    mod = _resolve_modality(layout, modality)
    validation = split_cases(_case_ids(layout), split, int(seed)) if split else []
    if validation:
        layout.cases = [replace(c, split="validation") if c.case_id in validation else c for c in layout.cases]

    per_case: dict[str, dict] = {}
    info = {
        "layout": layout.kind,
        "paths": list(layout.paths),
        "modality": mod,
        "labels": dict(project_labels),
        "label_remap": label_map.describe(),
        "normalization": {
            "rule": pngs.RULE if layout.kind == "png" else intensity.describe_rule(rule=intensity_rule),
            "per_case": per_case,
        },
        "orientation": (
            {"note": "PNG slices are used as displayed (no geometry to reorient by)"}
            if layout.kind == "png"
            else dict(slicing.ORIENTATION)
        ),
        "geometry": f"padded to square (centered), resized to {size}x{size}: image bilinear (antialiased), mask nearest",
        "size": size,
        "keep_empty": float(keep_empty),
        "seed": int(seed),
        "num_cases": layout.num_phantom if layout.kind == "phantom" else len(layout.cases),
        "splits": _split_counts(layout, validation),
    }
    if split:
        info["validation_split"] = {"rule": split, "seed": int(seed), "cases": validation,
                                    "note": "whole cases, chosen from the training cases by the seed"}
    if layout.kind == "png":
        info["spacing_note"] = "PNG has no geometry: spacing unknown, recorded as (1.0, 1.0, 1.0)"

    common = dict(size=size, keep_empty=float(keep_empty), seed=int(seed))

    def produce() -> Iterator[SourceSlice]:
        if layout.kind == "png":
            root = Path(layout.paths[0])
            for case in layout.cases:
                yield from pngs.png_case_slices(
                    root, case.case_id, layout.png_slices[case.case_id], label_map,
                    modality=mod, split=case.split, normalization=per_case, **common,
                )
            return
        for volume in _volumes(layout, label_map, mod, int(seed)):
            if volume.case_id in validation:  # phantoms have no CaseRef to carry it
                volume.split = "validation"
            yield from _volume_slices(volume, per_case, intensity_rule, **common)

    return SourceStream(info=info, _produce=produce)


def _volume_slices(volume: Volume, per_case: dict, rule: str, *, size: int, keep_empty: float, seed: int) -> Iterator[SourceSlice]:
    image01, desc = intensity.normalize_intensity(volume.image, volume.modality, rule=rule)
    per_case[volume.case_id] = {**desc, **intensity.volume_stats(image01)}
    volume.image = image01  # drop the raw intensities: one float copy of the volume at a time
    yield from slicing.slice_volume(
        volume.case_id, image01, volume.label, volume.spacing,
        size=size, keep_empty=keep_empty, seed=seed, modality=volume.modality, split=volume.split,
    )


def _volumes(layout: Layout, label_map: LabelMap, modality: str, seed: int) -> Iterator[Volume]:
    if layout.kind == "phantom":
        from styleswap.generator.sources.phantom import generate_cases  # lazy: only phantom builds need it

        for volume in generate_cases(layout.num_phantom, seed=seed, modality=layout.modality or "CT"):
            # Phantom ids are project ids already; the check guards against a project label set
            # that differs from the phantom's.
            volume.label = label_map.apply(volume.label, f"phantom case {volume.case_id}")
            yield volume
        return
    for case in layout.cases:
        yield load_case(case, label_map, modality)


def load_case(case: CaseRef, label_map: LabelMap, modality: str) -> Volume:
    """Read, validate, reorient to RAS+ (image and label identically) and remap one case."""
    if case.label is None:
        raise StyleSwapError(f"{case.image}: missing label file")
    img = read_nifti(case.image)
    lab = read_nifti(case.label)
    check_same_grid(img, lab, case.image, case.label)
    image, affine = canonical_voxels(img, case.image)
    image = np.ascontiguousarray(image, dtype=np.float32)
    check_finite(image, case.image)
    label = label_map.apply(canonical_voxels(lab, case.label)[0], case.label)
    spacing = voxel_sizes(affine)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise StyleSwapError(f"{case.image}: voxel spacing {spacing} must be positive")
    return Volume(
        case_id=case.case_id,
        image=image,
        label=np.ascontiguousarray(label),
        spacing=spacing,
        modality=modality,
        split=case.split,
        path=str(case.image),
    )


def _resolve_modality(layout: Layout, modality: str | None) -> str:
    if layout.kind == "phantom":  # the phantom's modality is part of its name
        return layout.modality or "CT"
    if modality:  # the user's word wins; known aliases are spelled the project's way
        return normalize_modality(modality) or modality.strip()
    if layout.modality:
        return layout.modality
    where = {
        "nnunet": f"{layout.dataset_json}: channel_names['0'] is not CT or MR-like",
        "msd": f"{layout.dataset_json}: modality['0'] is not CT or MR-like",
        "nifti-pairs": f"{layout.paths[0]}: NIfTI pairs carry no modality",
        "png": f"{layout.paths[0]}: PNG folders carry no modality",
    }[layout.kind]
    raise StyleSwapError(f"{where}; pass --modality CT or --modality MRI")


def _case_ids(layout: Layout) -> list[str]:
    """The training cases' ids, before any is read."""
    if layout.kind == "phantom":
        from styleswap.generator.sources.phantom import phantom_case_id

        return [phantom_case_id(i, layout.modality or "CT") for i in range(layout.num_phantom)]
    return [c.case_id for c in layout.cases if c.split == "train"]


def split_cases(case_ids: list[str], spec: str, seed: int) -> list[str]:
    """The cases ``--split`` moves to ``validation``, sorted: ``val=0.2`` (that fraction of the
    training cases, rounded, at least one), ``val=3`` (that many) or ``val=ID,ID,...`` (those).
    Chosen by a generator seeded from the build seed alone, so the same seed gives the same split."""
    name, sep, value = str(spec).partition("=")
    if not sep or name.strip() not in ("val", "validation") or not value.strip():
        raise StyleSwapError(f"--split {spec!r}: expected val=FRACTION (e.g. val=0.2), val=N or val=CASE,CASE,...")
    value, ids = value.strip(), sorted(case_ids)
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None:
        chosen = sorted({v.strip() for v in value.split(",") if v.strip()})
        unknown = [c for c in chosen if c not in ids]
        if unknown:
            raise StyleSwapError(f"--split: case(s) {', '.join(unknown)} are not training cases of the source ({len(ids)} cases)")
        k = len(chosen)
    else:
        k = int(number) if number >= 1 and number == int(number) else round(number * len(ids)) if 0 < number < 1 else -1
        if k < 0:
            raise StyleSwapError(f"--split {spec!r}: a fraction must be in (0, 1) and a count a whole number >= 1")
        k = max(k, 1)
        picked = slicing.case_rng(seed, "\x00validation split").choice(len(ids), size=min(k, len(ids)), replace=False)
        chosen = sorted(ids[i] for i in picked)
    if k >= len(ids):
        raise StyleSwapError(f"--split {spec!r}: {k} validation case(s) of {len(ids)} leaves no training case")
    return chosen


def _split_counts(layout: Layout, validation: list[str]) -> dict[str, int]:
    if layout.kind == "phantom":
        counts = {"train": layout.num_phantom - len(validation)}
        return {**counts, "validation": len(validation)} if validation else counts
    counts: dict[str, int] = {}
    for case in layout.cases:
        counts[case.split] = counts.get(case.split, 0) + 1
    return counts


__all__ = ["SourceStream", "open_source"]
