"""The content check: does every copy still show the slice's anatomy? (``augment build --qc-model``)

The dataset promises "same anatomy, new style". With ``--qc-model MODEL`` (a model folder written
by ``train seg``: ``config.json`` + ``model.safetensors``) every rendered copy is segmented by that
model and scored against the slice's mask:

    qc_dice = mean over the organs present in the mask or the prediction of
              2 |pred == o  and  mask == o| / (|pred == o| + |mask == o|)

(1.0 for a slice with no organ in either; an organ in only one of them scores 0). A copy below
``--qc-min-dice`` is rendered again with the next seed of its sequence (`contract.retry_seed`:
try 0 is the copy's own seed, so a copy that passes keeps the bytes it always had), at most
``--qc-tries`` tries in all; after the last try the best-scoring try is kept (the earliest of equal
scores) and stays below the threshold: *flagged*. Each row records per copy its ``qc_dice`` and,
in ``seeds``, the seed of the try kept. No ``qc_tries`` column: the tries a copy used follow from
those two (a copy at or above the threshold stopped at the try its seed names; one below used them
all), and the manifest and card count them.

Determinism. The check runs where the copies are rendered (a render thread, process or Ray
actor), so it never serializes the build. Its network sees one copy at a time, computing on one
thread: batched CPU convolutions (oneDNN and torch's own) and multi-threaded ones change logits
by ~1e-6 with the batch's size and the thread count (measured, torch 2.14), enough to flip an
argmax pixel, hence a score, hence which try is kept. One copy on one thread gives the same score
whatever the chunk, the retries around it, ``--workers`` or the executor, so the bytes are the same
too. It computes on the CPU even when the engine uses a GPU, for the same reason.

The model is checked before anything renders (`open_check`): safetensors weights only (pickle
weights are refused by name), the dataset's label map and image size, and for a model that reads
z-scored input (``input_norm: zscore``) each case's volume mean and std (the source manifest's
``volume_stats``; a raw source is ingested first, `needs_ingested_source`). The model's weights
sha256 and the settings are part of the build's fingerprint, so a resumed build never mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.metrics import class_counts, dice_from_counts


@dataclass(frozen=True)
class CheckSettings:
    """What a render worker needs to run the check (picklable; part of `render.RenderJob`)."""

    model: str  # the model folder (resolved: best/ or final/ of a run folder)
    weights_sha256: str
    min_dice: float
    tries: int
    input_norm: str = "unit"
    #: case_id -> (mean, std) of its normalized volume; only for ``input_norm: zscore``
    volume_stats: dict[str, tuple[float, float]] | None = None

    def describe(self, spec: str) -> dict[str, Any]:
        """The check as the manifest and the fingerprint record it (``spec``: as the user named it)."""
        return {"model": spec, "weights_sha256": self.weights_sha256, "input_norm": self.input_norm,
                "min_dice": self.min_dice, "tries": self.tries,
                "seeds": "try 0: derive_seed(build seed, sample_id, copy); try t >= 1: "
                         "retry_seed(build seed, sample_id, copy, t)"}


def _model_folder(spec: str) -> tuple[Path, dict[str, Any]]:
    from styleswap.networks import read_config, resolve_model_dir

    folder = resolve_model_dir(spec)  # pickle weights refused by name, never opened
    return folder, read_config(folder)


def needs_ingested_source(qc_model: str | None) -> bool:
    """True when the check's model reads z-scored input, which needs each case's volume statistics:
    a raw source is then ingested first. Opens the model's config, so a bad ``--qc-model`` is
    refused before anything is written."""
    if not qc_model:
        return False
    _, config = _model_folder(qc_model)
    return config.get("input_norm", "unit") == "zscore"


def open_check(spec: str, min_dice: float, tries: int, labels: dict[str, int], image_size: Sequence[int] | None,
               volume_stats: dict[str, dict[str, float]] | None) -> CheckSettings:
    """Open and check ``--qc-model`` against the data it will score; one-line errors otherwise."""
    from styleswap.networks import CONFIG_NAME, WEIGHTS_NAME, load_model

    folder, config = _model_folder(spec)
    where = folder / CONFIG_NAME
    mlabels = config.get("labels")
    if not isinstance(mlabels, dict) or {str(k): v for k, v in mlabels.items()} != dict(labels):
        raise StyleSwapError(f"{where}: the model's label map {mlabels} differs from the dataset's {dict(labels)}; "
                             "the content check needs a model trained on the same labels")
    msize = config.get("image_size")
    if image_size is not None and (not isinstance(msize, list) or [int(x) for x in msize] != [int(x) for x in image_size]):
        raise StyleSwapError(f"{where}: the model reads {msize} pixel slices, the dataset's are {list(image_size)}; "
                             "train the check's model at the dataset's size")
    norm = str(config.get("input_norm", "unit"))
    stats = None
    if norm == "zscore":
        if not volume_stats:
            raise StyleSwapError(f"{where}: the model reads z-scored slices (input_norm zscore), which needs each "
                                 "volume's mean and std (manifest volume_stats); the source has none: ingest it "
                                 "again with this version")
        stats = {str(c): (float(v["mean"]), float(v["std"])) for c, v in volume_stats.items()}
    elif norm != "unit":
        raise StyleSwapError(f"{where}: unknown input_norm {norm!r} (known: unit, zscore)")
    load_model(folder)  # weights that do not fit the network are refused here, not in every worker
    return CheckSettings(str(folder), contract.sha256_file(folder / WEIGHTS_NAME), float(min_dice), int(tries),
                         norm, stats)


def mean_dice(pred: np.ndarray, mask: np.ndarray) -> float:
    """Dice averaged over the organs (label ids > 0) present in ``pred`` or ``mask``; 1.0 when
    neither shows one. Float32, computed from integer counts, so it is exact and reproducible."""
    dice = dice_from_counts(*class_counts(pred, mask, int(max(pred.max(), mask.max())) + 1))
    present = dice[~np.isnan(dice)]  # organs in neither are NaN: not scored
    return 1.0 if present.size == 0 else float(np.float32(np.mean(present)))


class ContentCheck:
    """The check in one render worker: the model, loaded once, and the retry loop."""

    def __init__(self, settings: CheckSettings, build_seed: int) -> None:
        from styleswap.networks import load_model

        self.settings, self.build_seed = settings, int(build_seed)
        self.net = load_model(settings.model, map_location="cpu").eval()

    def score(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], cases: Sequence[str]) -> list[float]:
        """``qc_dice`` of stored copies (uint8 or uint16 pixels, as written) against their masks."""
        import torch

        from styleswap.networks import normalize_input

        out = []
        with torch.inference_mode():
            for image, mask, case in zip(images, masks, cases):
                x = torch.from_numpy(contract.to_unit_float(image))[None, None]
                x = normalize_input(x, torch.tensor([self._stats(case)], dtype=torch.float32), self.settings.input_norm)
                pred = self.net(x)[0].argmax(0).numpy()  # one copy at a time: see the module docstring
                out.append(mean_dice(pred, mask))
        return out

    def _stats(self, case: str) -> tuple[float, float]:
        if self.settings.volume_stats is None:
            return (0.0, 1.0)
        try:
            return self.settings.volume_stats[case]
        except KeyError:
            raise StyleSwapError(f"case {case!r}: no volume mean and std in the source's volume_stats, which the "
                                 "content check's model (input_norm zscore) needs") from None

    def check(self, requests: list, copies: list, dtypes: Sequence[np.dtype], cases: Sequence[str],
              render: Callable[[list], list]) -> tuple[list, list, list[float]]:
        """Score every copy; re-render those below the threshold with their next seeds.

        ``requests`` and ``copies`` are the engine's (`CopyRequest`, `Copy`), ``dtypes`` and
        ``cases`` each copy's slice dtype and case; ``render`` renders a list of requests. Returns
        the kept copies, their requests (seeds) and their scores, in the same order."""
        s = self.settings

        def scores_of(reqs: list, cps: list, idx: list[int]) -> list[float]:
            stored = [contract.from_unit_float(c.image, dtypes[i]) for c, i in zip(cps, idx)]
            return self.score(stored, [r.mask for r in reqs], [cases[i] for i in idx])

        requests, copies = list(requests), list(copies)
        scores = scores_of(requests, copies, list(range(len(requests))))
        for attempt in range(1, s.tries):
            redo = [i for i, sc in enumerate(scores) if sc < s.min_dice]
            if not redo:
                break
            again = [replace(requests[i], seed=contract.retry_seed(self.build_seed, requests[i].sample_id,
                                                                  requests[i].copy_index, attempt)) for i in redo]
            rendered = render(again)
            for i, req, copy, sc in zip(redo, again, rendered, scores_of(again, rendered, redo)):
                if sc > scores[i]:  # the best try so far; an equal score keeps the earlier try
                    requests[i], copies[i], scores[i] = req, copy, sc
        return copies, requests, scores


# --- what the manifest and the card say ----------------------------------------------------------


def summarize(rows: Sequence[dict[str, Any]], build_seed: int, min_dice: float, tries: int) -> dict[str, Any]:
    """The ``qc_dice`` distribution of a dataset's rows (``sample_id``, ``seeds``, ``qc_dice``) and
    the tries its copies used (read back from the seeds: see the module docstring)."""
    values, used = [], {t: 0 for t in range(1, tries + 1)}
    for row in rows:
        for c, (seed, d) in enumerate(zip(row["seeds"], row["qc_dice"])):
            values.append(d)
            kept = next((t for t in range(tries) if contract.retry_seed(build_seed, row["sample_id"], c, t) == seed), None)
            if kept is None:
                raise StyleSwapError(f"{row['sample_id']}: copy {c} has seed {seed}, none of its {tries} tries' seeds")
            used[kept + 1 if d >= min_dice else tries] += 1
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"copies": 0}
    q = np.percentile(v, [0, 25, 50, 75, 100])
    below = int(np.count_nonzero(v < min_dice))
    return {"copies": int(v.size), "min": round(float(q[0]), 4), "q1": round(float(q[1]), 4),
            "median": round(float(q[2]), 4), "q3": round(float(q[3]), 4), "max": round(float(q[4]), 4),
            "mean": round(float(v.mean()), 4), "below_min": below, "fraction_below_min": round(below / v.size, 4),
            "re_rendered": int(v.size - used[1]), "tries_used": {str(t): n for t, n in used.items()}}


def card_lines(qc: dict[str, Any]) -> list[str]:
    """The dataset card's section on the check (``qc``: the manifest's record)."""
    s = qc.get("summary") or {}
    lines = ["## Content check", "",
             f"Every copy was segmented by the model `{qc.get('model')}` (weights sha256 `{qc.get('weights_sha256')}`) "
             "and scored against the slice's mask: `qc_dice` is the Dice averaged over the organs present in the mask "
             "or the prediction (1.0 when neither shows one). A copy below "
             f"{qc.get('min_dice')} was rendered again with its next seed, at most {qc.get('tries')} tries; the "
             "best try is kept, and the `seeds` column holds the seed of the try kept.", ""]
    if not s.get("copies"):
        return lines + ["No copies were checked.", ""]
    tries = ", ".join(f"{n} with {t}" for t, n in s["tries_used"].items())
    return lines + [
        "| copies | min | Q1 | median | Q3 | max | mean | below threshold |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['copies']} | {s['min']:.3f} | {s['q1']:.3f} | {s['median']:.3f} | {s['q3']:.3f} | {s['max']:.3f} "
        f"| {s['mean']:.3f} | {s['below_min']} ({100 * s['fraction_below_min']:.1f} %) |",
        "",
        f"Tries used: {tries}. Copies still below the threshold after the last try are kept (flagged by their "
        "`qc_dice`); `train seg --min-qc-dice X` skips copies below X.",
        "",
    ]
