"""The end of every build: staged shards -> ``data/<split>-i-of-N``, preview, card, manifest.json.

Whichever executor rendered the shards, `commit` runs once, in the main process: it checks that
the receipts in the staging folder are every shard of the plan, links the shards to their final
names, writes the preview and the dataset card, and writes ``manifest.json`` last (the commit
point). The staging folder is removed afterwards by `staging.OutputFolder.close`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.contract import Counts, EngineRecord, Manifest, SplitInfo
from styleswap.errors import StyleSwapError
from styleswap.generator import card, dataset, qc, shards
from styleswap.generator.plan import BuildPlan, ShardSpec, jsonable
from styleswap.generator.staging import RowStats, clear_previous, finished_shards
from styleswap.safe_state import kill_point


def commit(plan: BuildPlan, staging: Path, command: str | None) -> Manifest:
    """Move the staged shards to their final names, then preview, card, and manifest.json last."""
    cfg = plan.cfg
    out = Path(cfg.out)
    writers, stats, sha256 = staged_writers(staging, cfg.format, cfg.rows_per_shard, plan.shards)
    if stats.rows == 0:
        raise StyleSwapError(f"{_source_name(cfg.source)}: the source yielded no slices (check --keep-empty and the labels)")
    # what is there is a dataset being replaced (--overwrite) or what a killed finish left
    # (`staging.OutputFolder` refused anything else)
    clear_previous(out)
    ordered = sorted(writers, key=lambda w: _split_order(w.split))
    entries = shards.finalize_shards(out, ordered, sha256)
    info = plan.source_info
    labels = info.get("labels", contract.DEFAULT_LABELS)
    manifest = Manifest(
        tool=contract.TOOL,
        format_version=contract.format_version((contract.QC_COLUMN,) if plan.qc else ()),
        command=command or "",
        recipe=jsonable(cfg.recorded()),
        source=info,
        labels=labels,
        engine=EngineRecord(cfg.engine, plan.engine_info),
        copies=cfg.copies,
        seed=cfg.seed,
        format=cfg.format,
        rows_per_shard=cfg.rows_per_shard,
        image_size=stats.shape,
        splits={w.split: SplitInfo(num_rows=sum(e.num_rows for e in entries if e.split == w.split),
                                   num_shards=sum(1 for e in entries if e.split == w.split)) for w in ordered},
        counts=_counts(stats, labels),
        qc=_qc_record(plan, out, entries),
        volume_stats=_volume_stats(info),
        versions=dataset.package_versions(),
        shards=entries,
    )
    if cfg.preview:
        from styleswap.generator.preview_dataset import write_preview

        write_preview(out, manifest, out / "preview.png")
    card.write_card(out, manifest, license=cfg.license, description=cfg.description)
    kill_point("manifest")
    manifest.write(out)  # the commit point
    return manifest


def staged_writers(staging: Path, fmt: str, rows_per_shard: int, plan: list[ShardSpec] | None = None
                   ) -> tuple[list[shards.ShardWriter], RowStats, dict[Path, str]]:
    """The finished staged shards as writers for `shards.finalize_shards`, their rows' stats, and
    their receipts' sha256 by path.

    Checks they are every shard of ``plan``, or without one, shards ``0..n-1`` of each split.
    """
    done = finished_shards(staging)
    if plan is None:
        plan = [ShardSpec(split, index, r["num_rows"]) for (split, index), r in sorted(done.items())]
    writers: dict[str, shards.ShardWriter] = {}
    stats, sha256 = RowStats(), {}
    for spec in plan:
        w = writers.setdefault(spec.split, shards.ShardWriter(staging, spec.split, fmt, rows_per_shard))
        r = done.get(spec.key)
        if r is None or r["num_rows"] != spec.rows or spec.index != len(w.done):
            raise StyleSwapError(f"{staging}: shard {spec.index} of {spec.split} is missing or incomplete ({spec.rows} "
                                 "rows expected); delete that folder to build from scratch")
        w.done.append((staging / r["name"], spec.rows))
        sha256[staging / r["name"]] = r["sha256"]
        stats.merge_json(r["stats"])
    return list(writers.values()), stats, sha256


def _counts(stats: RowStats, labels: dict[str, int]) -> Counts:
    names = {v: k for k, v in labels.items()}
    return Counts(slices=stats.rows, cases=len(stats.cases),
                  slices_with_label={names.get(k, str(k)): n for k, n in sorted(stats.label_slices.items())})


def _qc_record(plan: BuildPlan, out: Path, entries: list[contract.ShardEntry]) -> dict[str, Any] | None:
    """The content check's settings and its ``qc_dice`` distribution, read back from the shards
    (so a resumed build counts the shards it did not render itself)."""
    if plan.qc is None:
        return None
    rows = [r for e in entries for r in contract.ShardReader(contract.shard_file(out, e.path)).iter_rows(
        ["sample_id", "seeds", contract.QC_COLUMN], decode=False)]
    cfg = plan.cfg
    return {**plan.qc.describe(str(cfg.qc_model)),
            "summary": qc.summarize(rows, cfg.seed, cfg.qc_min_dice, cfg.qc_tries)}


def _volume_stats(info: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """Each case's normalized-volume mean and std (for a per-volume z-score in the trainer): from
    the ingest just streamed, or carried over from an ingested source."""
    if info.get("layout") == "styleswap-dataset":
        return info.get("volume_stats")
    per_case = (info.get("normalization") or {}).get("per_case") or {}
    stats = {c: {"mean": d["mean"], "std": d["std"]} for c, d in per_case.items() if "mean" in d}
    return stats or None


def _split_order(split: str) -> tuple[int, str]:
    return ({"train": 0, "validation": 1, "test": 2}.get(split, 3), split)


def _source_name(src: str | list[str]) -> str:
    return src if isinstance(src, str) else " ".join(src)


def command_line() -> str:
    """The command that runs, as the manifest records it."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
