#!/usr/bin/env python
"""The cross-modality benchmark on one large GPU: both directions, several methods and seeds, side by side.

Three steps, because the GPU machine holds only what travels with the repository (64 MiB) and
cannot reach ../shared/data:

    # 1. here: ingest the standard protocol's datasets and fetch the wheels the GPU image lacks
    python bench/gpu/cross_modality.py prepare --carry .gpu-carry          # ~50 MiB, git-excluded
    # 2. on the GPU machine (repository root; its own python3 with torch): < 9 minutes
    python3 bench/gpu/cross_modality.py run --carry .gpu-carry --out $OUT
    # 3. here: score the MRI -> CT models on all 30 CT volumes (too big to travel), print the table
    python bench/gpu/cross_modality.py finish --results DIR_OF_OUT_FILES

``run`` builds the copies that `CONFIGS` read on the machine's CPUs, starts every (direction,
method, seed) of `CONFIGS` as its own ``train seg`` process on the GPU (bf16, all at once), and stops
any run still going when the time budget ends (reported as unfinished, never as a result). Each
run's checkpoint and inference options (`train eval --choose`: flip, fill holes, largest component) are chosen on
the source's validation cases; the CT -> MRI target is measured there; the MRI -> CT models come
back (their safetensors files stored a few to a zip file, the configs in results.json) and ``finish`` measures
them here. ``run --dry`` does the whole thing on the CPU with two training cases, 64 px, 20 steps and three
runs, so the script is proven before GPU time is spent on it (tests/test_gpu_scripts.py).

The target modality is only measured; nothing is chosen by it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cpu_bench():
    """bench/cross_modality.py (stdlib only at import): the CPU benchmark's case split and builds."""
    spec = importlib.util.spec_from_file_location("cpu_cross_modality", REPO / "bench" / "cross_modality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The copies each dataset key holds (``augment build`` flags), the CPU benchmark's own table; `run`
#: builds those that CONFIGS read. SLAug's copies are GIN computed as GIN-IPA's released code (CPU
#: row 11, level with row 9 at the lead MRI -> CT).
CPU_BENCH = _cpu_bench()
BUILDS = CPU_BENCH.BUILDS
DATA = REPO.parent / "shared" / "data"
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
#: direction -> (source folder, source modality, target folder, target modality, validation cases)
DIRECTIONS = {
    "ct2mr": ("abdomen-ct", "CT", "abdomen-mr-dev", "MRI", 6),
    "mr2ct": ("abdomen-mr-dev", "MRI", "abdomen-ct", "CT", 2),
}
#: (direction, name, --loss, training datasets, --intensity-aug, seeds). Same network, budget and
#: recipe for every run; the peers get the photometric jitter only (their own augmentation is the
#: method), GIN-IPA none (its released computation leaves images unclipped; the jitter clips them).
CONFIGS = [
    (d, name, loss, data, aug, seeds)
    for d in ("ct2mr", "mr2ct")
    for name, loss, data, aug, seeds in [
        ("ERM (source only)", "erm", ("src-train",), "standard", (0, 1)),
        ("GIN + Bezier + Dice + InfoNCE (ours)", "dice+infonce", ("src-gin", "src-bezier"), "standard,organ", (0, 1)),
        ("SLAug, peer", "slaug", ("src-train",), "standard", (0,)),
        ("GIN-IPA as its released code, peer", "gin-ipa-released", ("src-train",), "none", (0,)),
        ("SLAug on originals and released-GIN + Bezier copies (peer + ours)", "slaug+copies", ("src-gin-released", "src-bezier"),
         "standard", (0,)),
    ]
]
RECIPE = ["--lr", "1e-3", "--lr-schedule", "cosine", "--scale", "0.25", "--rotate", "20", "--depth", "4",
          "--input-norm", "zscore", "--nce-weight", "0.1", "--batch-size", "16"]  # fmt: skip
WHEELS = ["monai==1.6.1", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"]
SIZE, COPIES = 192, 8
#: What the device tool brings back from $OUT: at most 8 files of at most 16 MiB each. The MRI -> CT
#: models travel packed a few to a file (`pack`), so that every one of them comes back beside
#: results.json and results.md (7 models of 6.1 MiB at 32 channels would be 9 files on their own).
OUT_FILES, OUT_FILE_BYTES = 8, 15 * 2**20  # a MiB of margin under 16


def sh(cmd: list[str], log: Path, env: dict | None = None, check: bool = True) -> int:
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if check and rc:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        sys.exit(f"failed ({rc}): {' '.join(cmd)}\n{tail}")
    return rc


def cli(name: str) -> list[str]:
    return [sys.executable, "-m", f"styleswap.{'generator' if name == 'augment' else 'trainer'}.cli"]


def cases(src: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (src / "labelsTr").glob("*.nii.gz"))


# --- 1. prepare (here) ---------------------------------------------------------------------------
def prepare(args) -> int:
    carry = args.carry.resolve()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: prepare needs the shared data")
    shutil.rmtree(carry, ignore_errors=True)
    log = carry / "prepare.log"
    (carry / "data").mkdir(parents=True)
    size = 64 if args.dry else SIZE
    common = ["--size", str(size), "--seed", "0", "--no-preview", "--intensity", "standard"]
    for d, (src_name, src_mod, tgt_name, tgt_mod, n_val) in DIRECTIONS.items():
        src = DATA / src_name
        names = cases(src)
        val, train = names[-n_val:], names[:-n_val]
        if args.dry:
            train = train[:2]
        raw = carry / "raw" / d
        CPU_BENCH.split_cases(src, raw / "train", train)  # the CPU benchmark's split: same cases, same order
        CPU_BENCH.split_cases(src, raw / "val", val)
        out = carry / "data" / d
        sh(cli("augment") + ["ingest", str(raw / "train"), "--out", str(out / "src-train"), "--modality", src_mod, "--keep-empty", "0", *common], log)
        sh(cli("augment") + ["ingest", str(raw / "val"), "--out", str(out / "src-val"), "--modality", src_mod, "--keep-empty", "1", *common], log)
        if d == "ct2mr":  # the MRI target travels; the 30 CT volumes of mr2ct do not (finish measures them)
            sh(cli("augment") + ["ingest", str(DATA / tgt_name), "--out", str(out / "target"), "--modality", tgt_mod, "--keep-empty", "1", *common], log)
    shutil.rmtree(carry / "raw")
    if not args.dry:
        (carry / "wheels").mkdir()
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(carry / "wheels"), *WHEELS], log)  # fmt: skip
    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"{carry}: {total / 2**20:.1f} MiB to carry")
    if total > 60 * 2**20:
        sys.exit("more than 60 MiB: it would not travel with the repository (64 MiB with the code)")
    return 0


# --- 2. run (on the GPU machine) -------------------------------------------------------------------
def install_wheels(carry: Path, log: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    wheels = sorted((carry / "wheels").glob("*.whl")) if (carry / "wheels").is_dir() else []
    site = Path("/tmp/styleswap-site")
    if wheels:
        sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
            "--target", str(site), *map(str, wheels)], log)  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([str(site)] if wheels else []), env.get("PYTHONPATH", "")])
    return env


def run(args) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    carry, out = args.carry.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"  # $OUT brings back 8 files at most (`OUT_FILES`): the packed models and the results
    env = install_wheels(carry, log)
    gpu = not args.dry
    steps = args.steps or (20 if args.dry else 8000)
    channels = args.channels or (8 if args.dry else 32)
    workers = 2 if gpu else 0
    copies = 2 if args.dry else COPIES
    # copies on the CPUs (every build that CONFIGS read, both directions at once)
    built = CPU_BENCH.copies_read(c[3] for c in CONFIGS)
    build_workers = max(1, (os.cpu_count() or 2) // (len(DIRECTIONS) * len(built)))  # the builds share the cores
    builds = [cli("augment") + ["build", "--source", str(carry / "data" / d / "src-train"), *BUILDS[k],
                                "--copies", str(copies), "--out", str(work / d / k), "--seed", "0",
                                "--workers", str(build_workers), "--no-preview"]
              for d in DIRECTIONS for k in built]  # fmt: skip
    with ThreadPoolExecutor(len(builds)) as pool:
        list(pool.map(lambda c: sh(c, log, env), builds))
    print(f"copies built in {time.monotonic() - t0:.0f} s", flush=True)
    data = lambda d, k: work / d / k if k in built else carry / "data" / d / k  # noqa: E731
    runs = []
    for d, name, loss, keys, aug, seeds in CONFIGS:
        if args.dry and ("peer" in name or (d == "mr2ct" and loss == "erm")):
            continue  # dry: three runs prove the flow (every run's arguments: tests/test_gpu_scripts.py)
        for seed in seeds[:1] if args.dry else seeds:
            slug = f"{d}-{loss.replace('+', '-')}-s{seed}"
            cmd = cli("train") + seg_args([data(d, k) for k in keys], data(d, "src-val"), work / "runs" / slug, loss, aug,
                                          seed, channels, steps, workers, gpu)  # fmt: skip
            runs.append({"direction": d, "row": name, "loss": loss, "seed": seed, "slug": slug, "cmd": cmd})
    eval_reserve = 180 if gpu else 0  # ~60 evaluations, 8 at a time
    procs = []
    for r in runs:
        fh = open(out / f"{r['slug']}.log" if args.keep_logs else work / f"{r['slug']}.log", "w")
        procs.append((r, subprocess.Popen(r["cmd"], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)))
    while any(p.poll() is None for _, p in procs):
        if time.monotonic() > deadline - eval_reserve:
            for r, p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    r["stopped"] = True
            break
        time.sleep(2)
    for r, p in procs:
        p.wait()
        r["returncode"] = p.returncode
        r["train_seconds"] = round(time.monotonic() - t0, 1)
    print(f"training done at {time.monotonic() - t0:.0f} s", flush=True)

    def evaluate(r: dict) -> dict:
        run_dir = work / "runs" / r["slug"]
        if not (run_dir / "best" / "model.safetensors").is_file():
            r["error"] = "no model (failed or stopped before its first validation)"
            return r
        r["steps_done"] = _last_step(run_dir)
        ev = work / "eval" / (r["slug"] + "-val")  # every inference option in one pass, the best chosen
        sh(cli("train") + ["eval", "--model", str(run_dir), "--data", str(data(r["direction"], "src-val")), "--out", str(ev), "--choose"], log, env)
        choice = json.loads((ev / "choice.json").read_text())
        val = {" ".join(o["flags"]) or "plain": o["mean_dice"] or 0.0 for o in choice["options"].values()}
        r["source_val_dice"], r["inference"] = val, " ".join(choice["flags"]) or "plain"
        if r["direction"] == "ct2mr":
            flags = choice["flags"]
            for fl in {(), tuple(flags)}:
                ev = work / "eval" / (r["slug"] + "-target" + "".join(fl))
                sh(cli("train") + ["eval", "--model", str(run_dir), "--data", str(data("ct2mr", "target")), "--out", str(ev), *fl], log, env)
                m = json.loads((ev / "metrics.json").read_text())
                key = "target" if fl == tuple(flags) else "target_plain"
                r[key] = {"mean_dice": m["mean_dice"], "per_organ": {o: m["per_organ"].get(o, {}).get("mean") for o in ORGANS},
                          "per_case": {c: v.get("mean") for c, v in m["per_case"].items()}}  # fmt: skip
        else:  # measured by `finish` on the 30 CT volumes here (the model travels back packed)
            r["model_config"] = json.loads((run_dir / "best" / "config.json").read_text())
        return r

    with ThreadPoolExecutor(8 if gpu else 2) as pool:
        runs = list(pool.map(evaluate, runs))
    models = {r["slug"]: work / "runs" / r["slug"] / "best" / "model.safetensors" for r in runs if "model_config" in r}
    packs = pack({slug: path.stat().st_size for slug, path in models.items()}, OUT_FILE_BYTES)
    if len(packs) + 2 > OUT_FILES:
        print(f"warning: {len(packs)} model files and the results exceed the {OUT_FILES} files $OUT brings back", flush=True)
    for i, slugs in enumerate(packs):
        with zipfile.ZipFile(out / f"mr2ct-models-{i}.zip", "w", zipfile.ZIP_STORED) as z:  # safetensors, stored as they are
            for slug in slugs:
                z.write(models[slug], f"{slug}.safetensors")
        for r in runs:
            if r["slug"] in slugs:
                r["model_file"] = f"mr2ct-models-{i}.zip"
    for r in runs:
        r.pop("cmd", None)
    meta = {"steps": steps, "channels": channels, "size": 64 if args.dry else SIZE, "copies": copies, "dry": args.dry,
            "recipe": " ".join(RECIPE), "seconds": round(time.monotonic() - t0, 1), "device": _device_name()}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    table = render(runs, meta)
    (out / "results.md").write_text(table)
    print(table, flush=True)
    return 0


def seg_args(data: list[Path], val: Path, out: Path, loss: str, aug: str, seed: int, channels: int, steps: int,
             workers: int, gpu: bool) -> list[str]:
    """``train seg`` arguments of one run: its row's loss, data and jitter on the shared recipe."""
    return ["seg", *[a for d in data for a in ("--data", str(d))], "--val", str(val), "--out", str(out), "--loss", loss,
            "--intensity-aug", aug, *RECIPE, "--channels", str(channels), "--steps", str(steps), "--seed", str(seed),
            "--workers", str(workers), "--val-every", str(max(steps // 10, 5)), "--checkpoint-every", str(max(steps // 10, 5)),
            "--log-every", str(max(steps // 50, 1)), "--no-progress", *(["--mixed-precision", "bf16"] if gpu else [])]  # fmt: skip


def pack(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Names grouped, in order, into as few files as fit ``limit`` bytes each (first fit; a file
    larger than ``limit`` goes alone, and the device tool will leave it behind)."""
    packs: list[list[str]] = []
    room: list[int] = []
    for name, size in sizes.items():
        i = next((j for j, free in enumerate(room) if size <= free), None)
        if i is None:
            packs.append([name])
            room.append(limit - size)
        else:
            packs[i].append(name)
            room[i] -= size
    return packs


def _last_step(run_dir: Path) -> int:
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    return int(rows[-1].split(",")[0]) if rows else 0


def _device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - only a label for the report
        return "unknown"


# --- 3. finish (here) ----------------------------------------------------------------------------
def finish(args) -> int:
    res_dir = args.results.resolve()
    results = json.loads((res_dir / "results.json").read_text())
    meta, runs = results["meta"], results["runs"]
    work = Path(args.work).resolve()
    log = work / "finish.log"
    work.mkdir(parents=True, exist_ok=True)
    target = work / "ct-all"
    if not (target / "manifest.json").is_file():
        sh(cli("augment") + ["ingest", str(DATA / "abdomen-ct"), "--out", str(target), "--modality", "CT", "--keep-empty", "1",
                             "--size", str(meta["size"]), "--seed", "0", "--no-preview", "--intensity", "standard"], log)  # fmt: skip
    for r in runs:
        if r["direction"] != "mr2ct" or "model_config" not in r:
            continue
        packed = res_dir / r.get("model_file", "-")
        if not packed.is_file():
            r["error"] = f"its model did not come back ({r.get('model_file')} is not in {res_dir})"
            continue
        model = work / "models" / r["slug"]
        model.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(packed) as z:  # one named member read, nothing extracted by the archive's own paths
            (model / "model.safetensors").write_bytes(z.read(f"{r['slug']}.safetensors"))
        (model / "config.json").write_text(json.dumps(r["model_config"]))
        flags = [] if r["inference"] == "plain" else r["inference"].split()
        for fl in {(), tuple(flags)}:
            ev = work / "eval" / (r["slug"] + "".join(fl))
            shutil.rmtree(ev, ignore_errors=True)
            sh(cli("train") + ["eval", "--model", str(model), "--data", str(target), "--out", str(ev), *fl], log)
            m = json.loads((ev / "metrics.json").read_text())
            r["target" if fl == tuple(flags) else "target_plain"] = {
                "mean_dice": m["mean_dice"], "per_organ": {o: m["per_organ"].get(o, {}).get("mean") for o in ORGANS},
                "per_case": {c: v.get("mean") for c, v in m["per_case"].items()}}  # fmt: skip
    (res_dir / "results-final.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    table = render(runs, meta)
    (res_dir / "results-final.md").write_text(table)
    print(table)
    return 0


def render(runs: list[dict], meta: dict) -> str:
    """One row per (direction, method): mean over seeds and half the range, per organ, inference."""
    lines = ["| direction | method | seeds | mean Dice % | spread | " + " | ".join(ORGANS) + " | inference (chosen on source val) | plain % | steps |",
             "|---|---|---|---:|---:|" + "---:|" * len(ORGANS) + "---|---:|---:|"]  # fmt: skip
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["direction"], r["row"]), []).append(r)
    for (d, row), rs in groups.items():
        done = [r for r in rs if "target" in r and not r.get("stopped")]
        if not done:
            why = "; ".join(sorted({r.get("error") or ("stopped at the time budget" if r.get("stopped") else "not measured yet") for r in rs}))
            lines.append(f"| {d} | {row} | {','.join(str(r['seed']) for r in rs)} | - | - |" + " - |" * len(ORGANS) + f" {why} | - | - |")
            continue
        dice = [r["target"]["mean_dice"] or 0.0 for r in done]
        organ = {o: sum((r["target"]["per_organ"][o] or 0.0) for r in done) / len(done) for o in ORGANS}
        plain = sum((r["target_plain"]["mean_dice"] or 0.0) for r in done) / len(done)
        spread = f"±{50 * (max(dice) - min(dice)):.1f}" if len(done) > 1 else "-"
        lines.append(f"| {d} | {row} | {','.join(str(r['seed']) for r in done)} | {100 * sum(dice) / len(dice):.1f} | {spread} | "
                     + " | ".join(f"{100 * organ[o]:.1f}" for o in ORGANS)
                     + f" | {' / '.join(r['inference'] for r in done)} | {100 * plain:.1f} | {min(r.get('steps_done', 0) for r in done)} |")  # fmt: skip
    note = (f"\n{meta['device']}, {meta['steps']} steps x batch 16 at {meta['size']} px, U-Net {meta['channels']} ch depth 4, "
            f"{meta['copies']} copies, `{meta['recipe']}`; {meta['seconds']:.0f} s in all. Spread: half the range over seeds. "
            "The MRI source holds 8 volumes (6 train, 2 validation); the published protocol trains on 20.\n")  # fmt: skip
    return "\n".join(lines) + "\n" + note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: datasets and wheels into --carry")
    p.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    p.add_argument("--dry", action="store_true", help="2 training cases, 64 px, no wheels (for run --dry)")
    r = sub.add_parser("run", help="on the GPU machine")
    r.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", default="/tmp/styleswap-gpu")
    r.add_argument("--minutes", type=float, default=9.0, help="time budget of the whole run, evaluation included")
    r.add_argument("--steps", type=int, default=None, help="training steps per run (default 8000; --dry 20)")
    r.add_argument("--channels", type=int, default=None, help="U-Net width (default 32; --dry 8)")
    r.add_argument("--dry", action="store_true", help="CPU, 20 steps, one seed, fewer runs: proves the script")
    r.add_argument("--keep-logs", action="store_true", help="training logs into --out (they count towards its 8 files)")
    f = sub.add_parser("finish", help="here: measure the MRI -> CT models on all CT volumes")
    f.add_argument("--results", type=Path, required=True, help="the folder holding run's results.json and model files")
    f.add_argument("--work", default=str(REPO / "bench" / "results" / "gpu-finish"))
    args = ap.parse_args()
    return {"prepare": prepare, "run": run, "finish": finish}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
