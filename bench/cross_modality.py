#!/usr/bin/env python
"""Cross-modality benchmark (the paper's main experiment) in both directions, through the two CLIs.

    python bench/cross_modality.py [--direction ct2mr|mr2ct] [--protocol fast|standard]
                                   [--seeds 0,1] [--rows 0,4] [--short] [--workdir DIR]

1. Split the source cases (CT for ``ct2mr``, the MRI of ``abdomen-mr-dev`` for ``mr2ct``) into
   train and validation (symlinked nnU-Net folders in the workdir; the validation cases pick the
   checkpoint and the inference options, as a user without target data would).
2. ``augment ingest`` source-train, source-val and the target (all slices kept so the 3D Dice
   covers whole volumes); ``augment build`` the copies of source-train that the rows read (`BUILDS`).
3. ``train seg`` every row and seed with the same budget (steps, batch size, network).
4. ``train eval`` each on source validation as is, with test-time flips, with largest-component
   post-processing and with both; the best of these on the source is the row's inference,
   measured on the target (the plain target figure is reported too). Print a Markdown table
   (mean and spread over seeds), write ``results.json`` (and each run's entry to ``rows/``).

``--collect`` trains nothing: it makes one table of runs that earlier invocations trained in the
same workdir (one seed each, say), after checking that their steps, batch size, seed and loss are
this invocation's.

Protocols:

* ``fast`` (default): 128 x 128, ingest's percentile intensity rule, 10 % of organ-free slices in
  training, networks read [0, 1].
* ``standard``: the preprocessing and evaluation of the GIN-IPA / SLAug code behind the published
  figures: 192 x 192; CT clipped to its window (our CT is windowed to 8-bit already: full range),
  MRI clipped at the 99.5th percentile (``augment ingest --intensity standard``); every volume
  z-scored when the network reads it (``train seg --input-norm zscore``); training on slices that
  contain an organ; 3D Dice per target volume and organ (background excluded), averaged over organs
  and volumes. The forward pass is compiled (``--compile``) so that 192 px fits the same budget.

The target is only measured. Skips with a message (exit 0) when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
#: direction -> (source folder, source modality, target folder, target modality, default validation cases)
DIRECTIONS = {
    "ct2mr": ("abdomen-ct", "CT", "abdomen-mr-dev", "MRI", 6),
    "mr2ct": ("abdomen-mr-dev", "MRI", "abdomen-ct", "CT", 2),
}
#: protocol -> (slice size, ingest flags of every dataset, extra ingest flags of the training data, train seg flags)
PROTOCOLS = {
    "fast": (128, [], [], []),
    "standard": (192, ["--intensity", "standard"], ["--keep-empty", "0"], ["--input-norm", "zscore", "--compile"]),
}

#: (row name, training dataset keys, --loss, --intensity-aug or None for the benchmark's). Every
#: row gets the same budget and the same training recipe (`RECIPE`); our rows differ only in the
#: copies they see and the loss. The peers' rows (5, 6, 8, 9) are their methods as their papers define
#: them, in our trainer with our network and budget: SLAug makes its own images on the fly from
#: the originals, GIN-IPA blends three of the stored GIN copies (row 6) or, as its paper, three GIN
#: images drawn fresh every step (row 8), or computes them as its released code (row 9: GIN of the
#: z-scored slice, unclipped, so the standard protocol only, and no jitter, which clips); the others
#: get the photometric jitter only (our per-organ maps would be a third method on top). Row 7 is
#: SLAug on top of our copies: its images start from the original or, half the time, a GIN or
#: Bezier copy. Rows 10 and 11 are rows 4 and 7 with their GIN copies computed as GIN-IPA's released
#: code does.
ROWS = [
    ("ERM (source only)", ("src-train",), "erm", None),
    ("GIN + Dice", ("src-gin",), "dice", None),
    ("GIN + Dice + InfoNCE", ("src-gin",), "dice+infonce", None),
    ("Bezier + Dice + InfoNCE", ("src-bezier",), "dice+infonce", None),
    ("GIN + Bezier + Dice + InfoNCE", ("src-gin", "src-bezier"), "dice+infonce", None),
    ("SLAug (GLA + LLA + SBF), peer", ("src-train",), "slaug", "standard"),
    ("GIN-IPA, peer", ("src-gin",), "gin-ipa", "standard"),
    ("SLAug on originals and GIN + Bezier copies (peer + ours)", ("src-gin", "src-bezier"), "slaug+copies", "standard"),
    ("GIN-IPA with fresh GIN every step, peer", ("src-train",), "gin-ipa-fresh", "standard"),
    ("GIN-IPA as its released code computes GIN and the blend, peer", ("src-train",), "gin-ipa-released", "none"),
    ("GIN as released + Bezier + Dice + InfoNCE", ("src-gin-released", "src-bezier"), "dice+infonce", None),
    ("SLAug on originals and GIN as released + Bezier copies", ("src-gin-released", "src-bezier"), "slaug+copies", "standard"),
]
#: The copies each dataset key holds: ``augment build`` flags on top of the source, copies and seed.
#: ``src-gin-released`` is row 4's GIN computed as GIN-IPA's released code does (rows 10 and 11: does
#: what lifted row 9 over row 8 lift stored copies too?).
BUILDS = {
    "src-gin": ["--engine", "gin"],
    "src-bezier": ["--engine", "bezier"],
    "src-gin-released": ["--engine", "gin", "--engine-opt", "computation=released"],
}


def copies_read(key_lists) -> list[str]:
    """The `BUILDS` keys that some run reads (each item: one run's training dataset keys), in `BUILDS` order."""
    read = set().union(*key_lists)
    return [k for k in BUILDS if k in read]


#: Losses that read z-scored slices (``--input-norm zscore``): the standard protocol's rows only.
ZSCORE_ONLY = ("gin-ipa-released",)
#: The best row: what the short CI mode checks against ERM.
BEST = 4
#: The training recipe of every row, chosen in a sweep measured on CT validation and MRI dev
#: (README, "The CT-to-MRI benchmark"): cosine learning rate, photometric jitter on originals and
#: copies, wider zoom/rotation, PatchNCE at weight 0.1 (at 1.0 it cost GIN about 7 points).
RECIPE = ["--lr", "1e-3", "--lr-schedule", "cosine", "--scale", "0.25", "--rotate", "20", "--channels", "16", "--depth", "4"]
#: ``--intensity-aug`` of every row: photometric jitter on originals and copies, and on copies a
#: random intensity map per organ (organ/bias act on copies only, so the ERM row gets the jitter).
INTENSITY_AUG = "standard,organ"
#: The inference options that runs of earlier versions scored on source validation, a folder each
#: (``train eval --choose`` now scores these and --fill-holes in one pass).
POSTPROCESS = [(), ("--tta",), ("--largest-component",), ("--tta", "--largest-component")]


def _bin(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [name]


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        tail = log.read_text().splitlines()[-15:]
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)


def split_cases(src: Path, dst: Path, cases: list[str]) -> Path:
    """An nnU-Net raw folder holding only ``cases`` (symlinks), with its own dataset.json."""
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    meta = json.loads((src / "dataset.json").read_text())
    ending = meta.get("file_ending", ".nii.gz")
    for c in cases:
        for img in sorted((src / "imagesTr").glob(f"{c}_*{ending}")):
            os.symlink(img.resolve(), dst / "imagesTr" / img.name)
        os.symlink((src / "labelsTr" / f"{c}{ending}").resolve(), dst / "labelsTr" / f"{c}{ending}")
    meta["numTraining"] = len(cases)
    (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dst


def list_cases(src: Path) -> list[str]:
    meta = json.loads((src / "dataset.json").read_text())
    ending = meta.get("file_ending", ".nii.gz")
    return sorted(p.name[: -len(ending)] for p in (src / "labelsTr").glob(f"*{ending}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direction", choices=sorted(DIRECTIONS), default="ct2mr", help="ct2mr: train on CT, measure MRI; mr2ct: the reverse")
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="fast", help="fast (128 px) or standard (the published protocol, 192 px)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, each row trained once per seed (default: --seed)")
    ap.add_argument("--short", action="store_true", help="CI mode: 12 cases, 64 x 64, 1000 steps, ERM and the best row")
    ap.add_argument("--steps", type=int, default=None, help="training steps per row (default 5500, 45 min of the best row on 2 cores; --short: 1000)")
    ap.add_argument("--nce-weight", type=float, default=0.1, help="PatchNCE weight of the InfoNCE rows")
    ap.add_argument("--intensity-aug", default=INTENSITY_AUG, help=f"train seg --intensity-aug of every row (default {INTENSITY_AUG})")
    ap.add_argument("--train-args", default="", help="extra train seg arguments for every row (quoted), e.g. '--channels 24'")
    ap.add_argument("--size", type=int, default=None, help="slice size (default: the protocol's; --short: 64)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--copies", type=int, default=None, help="copies per slice (default 8; --short: 2)")
    ap.add_argument("--val-cases", type=int, default=None, help="source cases held out for validation (default: ct2mr 6, mr2ct 2; --short: 2)")
    ap.add_argument("--train-cases", type=int, default=None, help="source training cases (default all; --short: 12)")
    ap.add_argument("--keep-empty", type=float, default=None,
                    help="share of organ-free slices in the training data (default: the protocol's, standard 0, fast ingest's "
                         "0.1); use its own --workdir, as the datasets are rebuilt")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="default: bench/results/cross_modality/DIRECTION-PROTOCOL")
    ap.add_argument("--rows", default=None, help="comma-separated row indices to run (default all)")
    ap.add_argument("--tag", default="", help="suffix for the run folders of this invocation (ablations of the same rows)")
    ap.add_argument("--check-margin", type=float, default=None, help="exit 1 unless the best row beats ERM by this much mean Dice (0-1)")
    ap.add_argument("--qc-model", type=Path, default=None,
                    help="content check of the copies: a source-only model (e.g. an earlier ERM row's run folder) scores every "
                         "copy at build time and weak ones are re-rendered (augment build --qc-model); use its own --workdir")
    ap.add_argument("--qc-min-dice", type=float, default=0.5, help="with --qc-model: the build's --qc-min-dice and the rows' "
                                                                    "train seg --min-qc-dice")
    ap.add_argument("--prepare-only", action="store_true", help="ingest and build the datasets, train nothing")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: one table of the --rows and --seeds already trained and evaluated in --workdir "
                         "(e.g. one seed per earlier invocation); refuses a run that is missing or had another budget")
    args = ap.parse_args()

    src_name, src_mod, tgt_name, tgt_mod, default_val = DIRECTIONS[args.direction]
    src, tgt = DATA / src_name, DATA / tgt_name
    if not src.is_dir() or not tgt.is_dir():
        print(f"skipped: {DATA} ({src_name}, {tgt_name}) is absent; the benchmark needs the shared data")
        return 0
    short = args.short
    proto_size, ingest_flags, train_ingest_flags, proto_train = PROTOCOLS[args.protocol]
    if args.rows and "zscore" not in proto_train and any(ROWS[int(i)][2] in ZSCORE_ONLY for i in args.rows.split(",")):
        ap.error(f"--rows {args.rows}: --loss {', '.join(ZSCORE_ONLY)} reads z-scored slices, its row needs --protocol standard")
    if args.keep_empty is not None:
        train_ingest_flags = ["--keep-empty", str(args.keep_empty)]
    steps = args.steps or (1000 if short else 5500)
    size = args.size or (64 if short else proto_size)
    copies = args.copies or (2 if short else 8)
    n_val = args.val_cases or (2 if short else default_val)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    W = (args.workdir or REPO / "bench" / "results" / "cross_modality" / f"{args.direction}-{args.protocol}").resolve()
    W.mkdir(parents=True, exist_ok=True)
    log = W / "commands.log"
    augment, train = _bin("augment"), _bin("train")

    cases = list_cases(src)
    val_cases = cases[-n_val:]  # fixed, documented hold-out: the last cases by name
    train_cases = cases[: len(cases) - n_val]
    if args.train_cases or short:
        train_cases = train_cases[: args.train_cases or 12]
    if not args.collect:
        split_cases(src, W / "src" / "train", train_cases)
        split_cases(src, W / "src" / "val", val_cases)

    # Every dataset is ingested with the build seed 0: the data stay the same whatever seeds train on them.
    common = ["--size", str(size), "--seed", "0", "--overwrite", "--no-preview", *ingest_flags]
    every_row = [r for r in ROWS if "zscore" in proto_train or r[2] not in ZSCORE_ONLY]  # those the protocol can run
    picked = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ([ROWS[0], ROWS[BEST]] if short else every_row)
    ds = {k: W / k for k in ("src-train", "src-val", "target", *BUILDS)}
    if not args.collect:
        run(augment + ["ingest", str(W / "src" / "train"), "--out", str(ds["src-train"]), "--modality", src_mod, *common, *train_ingest_flags], log)
        run(augment + ["ingest", str(W / "src" / "val"), "--out", str(ds["src-val"]), "--modality", src_mod, "--keep-empty", "1", *common], log)
        run(augment + ["ingest", str(tgt), "--out", str(ds["target"]), "--modality", tgt_mod, "--keep-empty", "1", *common], log)
        # the content check (issue 15): the model is trained on the source only, so the target stays unseen
        qc_build = ["--qc-model", str(args.qc_model.resolve()), "--qc-min-dice", str(args.qc_min_dice)] if args.qc_model else []
        for key in copies_read(keys for _, keys, _, _ in picked):  # only the copies the rows read
            run(augment + ["build", "--source", str(ds["src-train"]), *BUILDS[key], "--copies", str(copies),
                           "--out", str(ds[key]), "--seed", "0", "--workers", str(args.workers),
                           "--overwrite", *qc_build], log)  # fmt: skip

    if args.prepare_only:
        print(f"datasets ready under {W}")
        return 0
    extra = args.train_args.split()
    qc_train = ["--min-qc-dice", str(args.qc_min_dice)] if args.qc_model else []
    recipe = RECIPE + ["--intensity-aug", args.intensity_aug] + proto_train + extra
    budget = {"steps": steps, "batch_size": args.batch_size, "size": size, "copies": copies, "recipe": " ".join(recipe),
              "nce_weight": args.nce_weight, "seeds": seeds, "direction": args.direction, "protocol": args.protocol,
              "train_cases": len(train_cases), "val_cases": val_cases, "target_cases": len(list_cases(tgt)),
              "train_ingest": " ".join(ingest_flags + train_ingest_flags) or "ingest's defaults",
              "qc_model": str(args.qc_model) if args.qc_model else None,
              "qc_min_dice": args.qc_min_dice if args.qc_model else None}  # fmt: skip
    every = max(steps // 10, 10)
    runs = []
    for name, keys, loss, row_aug in picked:
        row_recipe = recipe if row_aug is None else [*RECIPE, "--intensity-aug", row_aug, *proto_train, *extra]
        if qc_train and any(k in BUILDS for k in keys):
            row_recipe = [*row_recipe, *qc_train]
        for seed in seeds:
            slug = f"{'+'.join(keys)}-{loss.replace('+', '-')}-s{seed}{args.tag}".replace("src-", "")
            if args.collect:
                runs.append(collect_row(name, keys, loss, seed, slug, W, row_recipe, steps, args))
            else:
                runs.append(evaluate_row(name, keys, loss, seed, slug, ds, W, log, train, row_recipe, steps, args, every))
    results = summarize_rows(runs)

    lines = [
        "| method | seeds | mean Dice % | spread | " + " | ".join(ORGANS) + " | inference (chosen on source val) | plain mean Dice % | train s |",
        "|---|---|---:|---:|" + "---:|" * len(ORGANS) + "---|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['row']} | {','.join(str(x) for x in r['seeds'])} | {pct(r['mean_dice'])} | {spread(r)} | "
                     + " | ".join(pct(r["per_organ"][o]) for o in ORGANS)
                     + f" | {r['inference']} | {pct(r['mean_dice_plain'])} | {seconds(r['train_seconds'])} |")  # fmt: skip
    table = "\n".join(lines)
    note = (f"\n{args.direction} ({args.protocol} protocol): source {src_name} ({len(train_cases)} train, {len(val_cases)} validation "
            f"cases), target {tgt_name} ({budget['target_cases']} cases, 3D Dice per case, only measured). Budget per row and seed: "
            f"{steps} steps x batch {args.batch_size} at {size}x{size}, {copies} copies per slice, `train seg {' '.join(recipe)}` "
            f"(InfoNCE weight {args.nce_weight}). Spread: half the range over seeds.")  # fmt: skip
    own_aug = [f"{name}: `--intensity-aug {row_aug}`" for name, _, _, row_aug in picked if row_aug]
    if own_aug:  # the peers' rows replace the recipe's jitter with their own (see ROWS)
        note += " Rows with their own jitter: " + "; ".join(own_aug) + "."
    if args.direction == "mr2ct":
        note += " The MRI source holds 8 volumes (the published protocol trains on 20)."
    print("\n" + table + note)
    out_json = {"budget": budget, "short": short, "rows": results, "runs": runs}
    suffix = (args.tag or "") + (f"-rows{args.rows.replace(',', '_')}" if args.rows else "")
    (W / f"results{suffix}.json").write_text(json.dumps(out_json, indent=2))
    (W / f"results{suffix}.md").write_text(table + "\n" + note + "\n")
    if args.check_margin is not None:
        by_name = {r["row"]: r["mean_dice"] or 0.0 for r in results}
        gap = by_name[ROWS[BEST][0]] - by_name[ROWS[0][0]]
        print(f"{ROWS[BEST][0]} - ERM = {100 * gap:+.1f} points (required: >= {100 * args.check_margin:.1f})")
        if gap < args.check_margin:
            return 1
    return 0


def evaluate_row(name, keys, loss, seed, slug, ds, W, log, train, recipe, steps, args, every) -> dict:
    """Train one row with one seed, choose its inference on source validation, measure the target."""
    out = W / "runs" / slug
    resumed = any((out / "checkpoints").glob("step-*"))  # an earlier invocation trained part of it
    t = time.perf_counter()
    data = [a for k in keys for a in ("--data", str(ds[k]))]
    nce = ["--nce-weight", str(args.nce_weight)] if "infonce" in loss else []
    run(train + ["seg", *data, "--val", str(ds["src-val"]), "--out", str(out), "--loss", loss, *recipe, *nce,
                 "--steps", str(steps), "--batch-size", str(args.batch_size), "--seed", str(seed),
                 "--workers", str(args.workers), "--val-every", str(every), "--checkpoint-every", str(every),
                 "--log-every", str(max(every // 5, 1)), "--no-progress", "--resume", "latest"], log)  # fmt: skip
    # a resumed run's wall time covers only this invocation's part: estimate the whole from its rate
    train_s = rate_seconds(out, steps, args.batch_size) if resumed else time.perf_counter() - t
    # inference options are chosen on source validation, like the checkpoint; the target only measures
    run(train + ["eval", "--model", str(out), "--data", str(ds["src-val"]), "--out", str(W / "choose-src-val" / slug), "--choose"], log)
    chosen = choose_inference(source_val_dice(W, slug))
    for flags in {(), chosen}:
        run(train + ["eval", "--model", str(out), "--data", str(ds["target"]), "--out", str(W / "eval" / (slug + "".join(flags))),
                     *flags], log)  # fmt: skip
    result = row_result(name, keys, loss, seed, slug, W, train_s, recipe)
    (W / "rows").mkdir(exist_ok=True)
    (W / "rows" / f"{slug}.json").write_text(json.dumps(result, indent=2))  # what --collect reads back
    return result


def source_val_dice(W: Path, slug: str) -> dict[tuple[str, ...], float]:
    """Mean Dice on source validation per inference option (its flags), simplest first, as `train eval --choose` wrote it."""
    choice = W / "choose-src-val" / slug / "choice.json"
    if choice.is_file():
        return {tuple(o["flags"]): o["mean_dice"] or 0.0 for o in json.loads(choice.read_text())["options"].values()}
    # runs of an earlier benchmark: one evaluation folder per option
    return {f: json.loads((W / "eval-src-val" / (slug + "".join(f)) / "metrics.json").read_text())["mean_dice"] or 0.0
            for f in POSTPROCESS}


def choose_inference(val: dict[tuple[str, ...], float]) -> tuple[str, ...]:
    """The option set with the best mean Dice on source validation (`source_val_dice`): the first
    best, as both layouts list the options simplest first (`train eval --choose` makes the same choice)."""
    return max(val, key=val.get)


def row_result(name, keys, loss, seed, slug, W: Path, train_s: float | None, recipe) -> dict:
    """One run's entry of results.json, from its evaluation folders."""
    val = source_val_dice(W, slug)
    chosen = choose_inference(val)
    tgt = {f: json.loads((W / "eval" / (slug + "".join(f)) / "metrics.json").read_text()) for f in {(), chosen}}
    m = tgt[chosen]
    return {"row": name, "seed": seed, "data": list(keys), "loss": loss, "run": str(W / "runs" / slug),
            "train_seconds": None if train_s is None else round(train_s, 1),
            "recipe": " ".join(recipe), "mean_dice": m["mean_dice"], "mean_dice_std": m["mean_dice_std"],
            "per_organ": {o: m["per_organ"].get(o, {}).get("mean") for o in ORGANS},
            "per_case": {c: v.get("mean") for c, v in m["per_case"].items()},
            "inference": " ".join(chosen) or "plain", "mean_dice_plain": tgt[()]["mean_dice"],
            "source_val_dice": {(" ".join(f) or "plain"): v for f, v in val.items()},
            # where each organ's voxels went (evaluations from before train eval counted it have none)
            **({"confusion": m["confusion"], "per_case_confusion": {c: v["confusion"] for c, v in m["per_case"].items()}}
               if "confusion" in m else {})}  # fmt: skip


def collect_row(name, keys, loss, seed, slug, W: Path, recipe, steps, args) -> dict:
    """A run trained and evaluated by an earlier invocation, checked against this budget."""
    run_dir = W / "runs" / slug
    if not (run_dir / "train_config.json").is_file() or not (W / "eval" / slug / "metrics.json").is_file():
        sys.exit(f"--collect: {name}, seed {seed}: no trained and evaluated run {run_dir} (run it first, without --collect)")
    cfg = json.loads((run_dir / "train_config.json").read_text())
    want = {"steps": steps, "batch_size": args.batch_size, "seed": seed, "loss": loss}
    got = {k: cfg.get(k) for k in want}
    if got != want:
        sys.exit(f"--collect: {run_dir} was trained with {got}, this table's budget is {want}")
    recorded = W / "rows" / f"{slug}.json"
    if recorded.is_file():
        return json.loads(recorded.read_text())
    # runs of a benchmark older than rows/*.json: the same choice, made again from the same files
    return row_result(name, keys, loss, seed, slug, W, rate_seconds(run_dir, steps, args.batch_size), recipe)


def rate_seconds(run_dir: Path, steps: int, batch_size: int) -> float | None:
    """Training time of a run from the median logged rate (robust to an interrupted or shared interval)."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    with metrics.open() as f:
        rates = [float(r["slices_per_s"]) for r in csv.DictReader(f) if r.get("slices_per_s")]
    return steps * batch_size / statistics.median(rates) if rates else None


def summarize_rows(runs: list[dict]) -> list[dict]:
    """One entry per row: means over its seeds (and half the range as the spread)."""
    out: dict[str, dict] = {}
    for r in runs:
        out.setdefault(r["row"], {"row": r["row"], "runs": []})["runs"].append(r)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    rows = []
    for row in out.values():
        rs = row["runs"]
        dice = [r["mean_dice"] or 0.0 for r in rs]
        rows.append({"row": row["row"], "seeds": [r["seed"] for r in rs], "data": rs[0]["data"], "loss": rs[0]["loss"],
                     "mean_dice": mean(dice), "dice_by_seed": dice, "spread": (max(dice) - min(dice)) / 2,
                     "per_organ": {o: mean([r["per_organ"][o] for r in rs]) for o in ORGANS},
                     "inference": " / ".join(r["inference"] for r in rs), "mean_dice_plain": mean([r["mean_dice_plain"] for r in rs]),
                     "train_seconds": mean([r["train_seconds"] for r in rs]),
                     "source_val_dice": [r["source_val_dice"] for r in rs]})  # fmt: skip
    return rows


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def seconds(x) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def spread(r: dict) -> str:
    return "-" if len(r["seeds"]) < 2 else f"±{100 * r['spread']:.1f}"


if __name__ == "__main__":
    sys.exit(main())
