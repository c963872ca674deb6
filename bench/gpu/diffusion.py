#!/usr/bin/env python
"""The diffusion engine at Stable Diffusion 1.5 size on one large GPU, measured in under 8 minutes.

On a bare machine with this repository as the working directory:

    make setup && .venv/bin/python bench/gpu/diffusion.py --out $OUT

It builds ``sd15-random`` (SD 1.5's architectures with RANDOM weights, from config: no download;
the images are noise, the costs are SD 1.5's) and a phantom CT dataset (``augment ingest phantom``),
then measures, each group in a worker process of its own:

1. ``render``: Style Swap render images/s at 512 x 512, 20 UniPC steps, guidance 7.5, fp16: the
   batched engine (batch 16) against one ``StableDiffusionControlNetPipeline`` call per image with
   the same models; SDPA on and off. The ratio is the figure (target: >= 4x).
2. ``train-fp16``, ``train-bf16``: DreamBooth (``finetune``) and ControlNet (``train_controlnet``)
   training, the library's own functions with AdamW: seconds per step over 5 steps after one
   warm-up step, and peak GPU memory, at 512 x 512, batch 8 and 4, with and without gradient
   checkpointing (target: ControlNet at batch 8, fp16, under 24 GB).
3. ``render-compile``: as 1 with the U-Net and the ControlNet under ``torch.compile`` (the
   warm-up run pays the compilation and is reported apart).

``--groups render-compile`` (comma-separated) runs only those groups, e.g. what a first run had
to skip. It writes ``results.json`` and ``results.md`` (tables, targets, what was skipped) to ``--out``, and
each worker's log to ``--out/logs/``; the models go to a temporary folder, never to ``--out``.
Time: ``--budget-s`` (default 450) counts from the start. A config that would not finish within
it is skipped and listed as skipped; a worker still running at the budget (plus 20 s) is killed
and its unfinished configs are listed as killed. Out-of-memory (and any other error) is caught per
config and recorded; the script then goes on, and exits by itself.

``--dry``: the same plan on the ``tiny`` preset at 32 x 32 on the CPU with one thread (2 training
steps at batch 2 only, 2 sampling steps, ``torch.compile`` with the ``eager`` backend), in about a
minute: it checks the plumbing before GPU time is spent (tests/test_bench_gpu_dry.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

START = time.time()
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GIB = 2**30
TARGET_RATIO = 4.0
TARGET_CONTROLNET_GIB = 24.0  # what a "24 GB" card holds; peak reserved, without the CUDA context
KILL_GRACE_S = 20


@dataclass(frozen=True)
class Settings:
    preset: str
    resolution: int
    device: str
    train_batches: tuple[int, ...]
    timed_train_steps: int
    render_steps: int
    render_batch: int
    images: int  # rendered by the batched engine per run
    naive_images: int  # rendered one pipeline call each per run
    runs: int
    compile_backend: str
    budget_s: float
    #: seconds a config is expected to take at most: one that would end past the budget is skipped
    estimate_s: dict


FULL = Settings("sd15-random", 512, "cuda", (8, 4), 5, 20, 16, 16, 8, 2, "inductor", 450.0,
                {"train": 30.0, "render": 60.0, "render-compile": 150.0})
DRY = Settings("tiny", 32, "cpu", (2,), 1, 2, 2, 2, 1, 1, "eager", 150.0,
               {"train": 5.0, "render": 10.0, "render-compile": 15.0})


@dataclass(frozen=True)
class Group:
    name: str
    kind: str  # train | render
    configs: tuple[dict, ...]


def plan(s: Settings) -> list[Group]:
    """The worker groups in the order they run: the targets' figures first."""
    def train(precision: str) -> tuple[dict, ...]:
        return tuple(dict(stage=stage, precision=precision, batch=b, gc=gc)
                     for stage in ("controlnet", "dreambooth") for b in s.train_batches for gc in (True, False))

    return [
        Group("render", "render", (dict(sdpa=True, compile=False), dict(sdpa=False, compile=False))),
        Group("train-fp16", "train", train("fp16")),
        Group("train-bf16", "train", train("bf16")),
        Group("render-compile", "render", (dict(sdpa=True, compile=True), dict(sdpa=False, compile=True))),
    ]


def config_id(kind: str, cfg: dict) -> str:
    if kind == "train":
        return f"train/{cfg['stage']}/{cfg['precision']}/batch{cfg['batch']}/{'gc' if cfg['gc'] else 'no-gc'}"
    return f"render/sdpa-{'on' if cfg['sdpa'] else 'off'}/compile-{'on' if cfg['compile'] else 'off'}"


def fits(deadline: float, estimate_s: float, now: float | None = None) -> bool:
    """True when a config expected to take ``estimate_s`` can end before ``deadline``."""
    return (time.time() if now is None else now) + estimate_s <= deadline


# --- one config ------------------------------------------------------------------------------------


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def is_oom(exc: BaseException) -> bool:
    import torch

    msg = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def guarded(cid: str, fn: Callable[[], dict]) -> dict:
    """Run one config: its record, or ``oom`` / ``error`` with the message; never raises."""
    t = time.perf_counter()
    try:
        rec = {"status": "ok", **fn()}
    except Exception as exc:  # noqa: BLE001 - one config's failure must not end the benchmark
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        rec = {"status": "oom" if is_oom(exc) else "error", "error": f"{type(exc).__name__}: {first}"}
    free_memory()  # after the except block: the traceback (and the tensors it holds) is gone
    return {"id": cid, **rec, "wall_s": round(time.perf_counter() - t, 2)}


def gpu_peak() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}


def run_train(s: Settings, cfg: dict, models: Path, data: Path, work: Path) -> dict:
    from styleswap.generator.diffusion.controlnet import train_controlnet
    from styleswap.generator.diffusion.finetune import finetune
    from styleswap.generator.diffusion.training import TrainArgs

    base = models / s.preset
    out = work / "train-out"
    shutil.rmtree(out, ignore_errors=True)
    args = TrainArgs(out, max_train_steps=1 + s.timed_train_steps, train_batch_size=cfg["batch"], learning_rate=1e-5,
                     mixed_precision=cfg["precision"], gradient_checkpointing=cfg["gc"], checkpointing_steps=10**9,
                     device=s.device, progress=False)
    try:
        if cfg["stage"] == "dreambooth":
            info = finetune(base, data, out, args, resolution=s.resolution)
        else:  # the base U-Net stands in for the tuned one: the same shapes, the same cost
            info = train_controlnet(base, base / "unet", data, out, args, resolution=s.resolution)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    sps = info["seconds_per_step"]
    return {"seconds_per_step": round(sps, 4), "steps_per_s": round(1 / sps, 3), "images_per_s": round(cfg["batch"] / sps, 2),
            "final_loss": info["final_loss"], **gpu_peak()}


def run_render(s: Settings, cfg: dict, models: Path) -> dict:
    import bench_render as br

    if cfg["compile"]:
        import torch

        torch._dynamo.reset()
    eng = br.make_engine(models / s.preset, models / f"{s.preset}-controlnet", steps=s.render_steps,
                         batch=s.render_batch, device=s.device,
                         mixed_precision="fp16" if s.device == "cuda" else "no", resolution=s.resolution)
    br.set_sdpa(eng.pipeline, cfg["sdpa"])
    if cfg["compile"]:
        br.compile_models(eng.pipeline, backend=s.compile_backend)
    res = br.compare(eng, br.make_requests(s.images, 128), s.naive_images, s.runs)
    return {**res, "speedup": round(res["speedup"], 3), **gpu_peak()}


def environment() -> dict:
    import platform

    import accelerate
    import diffusers
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / GIB, 1))
    return env


def worker(a: argparse.Namespace, s: Settings) -> None:
    """Run one group's configs in order, one JSON line each, skipping what would end past the deadline."""
    group = next(g for g in plan(s) if g.name == a.worker)
    work = Path(a.work)

    def emit(rec: dict) -> None:
        with open(a.lines, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    emit({"id": "environment", **environment()})
    estimate = s.estimate_s["render-compile" if a.worker == "render-compile" else group.kind]
    for cfg in group.configs:
        cid = config_id(group.kind, cfg)
        if not fits(a.deadline, estimate):
            emit({"id": cid, "status": "skipped", "error": f"time budget: would end past it (estimate {estimate:.0f} s)",
                  **cfg})
            continue
        if group.kind == "train":
            rec = guarded(cid, lambda: run_train(s, cfg, Path(a.models), Path(a.data), work))
        else:
            rec = guarded(cid, lambda: run_render(s, cfg, Path(a.models)))
        emit({**rec, **cfg})
        print(json.dumps(rec, default=str)[:400], flush=True)


# --- the orchestrator ------------------------------------------------------------------------------


def prepare(s: Settings, work: Path, log: Path) -> tuple[Path, Path]:
    """Build the models while ``augment ingest`` writes a phantom CT dataset (what training reads)."""
    import bench_render as br

    models, data = work / "models", work / "data"
    with open(log, "a") as fh:
        ingest = br.ingest("phantom:1", 128, data, fh)
        br.build_models(s.preset, models, s.resolution if s.preset == "tiny" else None)
        if ingest.wait():
            raise RuntimeError(f"augment ingest failed ({ingest.returncode}): see {log}")
    return models, data


def run_group(a: argparse.Namespace, group: Group, deadline: float, paths: dict[str, Path]) -> list[dict]:
    """One worker process for ``group``; killed (with its own children) at the deadline plus a grace."""
    lines = paths["work"] / f"{group.name}.jsonl"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", group.name, "--deadline", str(deadline),
           "--models", str(paths["models"]), "--data", str(paths["data"]), "--work", str(paths["work"]),
           "--lines", str(lines), "--out", str(a.out)] + (["--dry"] if a.dry else [])
    killed = False
    with open(paths["logs"] / f"{group.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, deadline + KILL_GRACE_S - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and its children (compile workers)
            except ProcessLookupError:
                pass
            rc, killed = proc.wait(), True
    got = [json.loads(x) for x in lines.read_text().splitlines()] if lines.is_file() else []
    done = {r["id"] for r in got}
    for cfg in group.configs:
        cid = config_id(group.kind, cfg)
        if cid not in done:
            why = "killed at the time budget" if killed else f"worker exited with {rc}: see logs/{group.name}.log"
            got.append({"id": cid, "status": "killed" if killed else "error", "error": why, **cfg})
    return got


def summarize(configs: list[dict]) -> dict:
    by_id = {c["id"]: c for c in configs}
    out: dict[str, Any] = {}
    ratios = {cid: c["speedup"] for cid, c in by_id.items() if cid.startswith("render/") and c.get("status") == "ok"}
    out["render_speedup"] = ratios
    eager = by_id.get("render/sdpa-on/compile-off", {})
    if eager.get("status") == "ok":
        ips = eager["engine_batched"]["images_per_s"]
        out["renderer_vs_pipeline"] = {"speedup": eager["speedup"], "target": TARGET_RATIO, "met": eager["speedup"] >= TARGET_RATIO}
        out["controlnet_engine_cost"] = {"seconds_per_copy": round(1 / ips, 4), "copies_per_hour": round(3600 * ips)}
    cn = {cid: c for cid, c in by_id.items() if cid.startswith("train/controlnet/fp16/") and c.get("status") == "ok"}
    big = {cid: c["peak_reserved_gib"] for cid, c in cn.items() if "/batch8/" in cid and c.get("peak_reserved_gib")}
    if big:
        out["controlnet_batch8_fp16_peak_reserved_gib"] = {**big, "target_gib": TARGET_CONTROLNET_GIB,
                                                           "met_by_any": min(big.values()) < TARGET_CONTROLNET_GIB}
    return out


def markdown(result: dict) -> str:
    rows = result["configs"]
    st = result["settings"]
    md = [f"# {st['preset']} at {st['resolution']} x {st['resolution']} on {result['environment'].get('gpu', 'the CPU')} "
          f"({'dry run: plumbing, not figures' if result['dry'] else 'measured'})", "",
          f"torch {result['environment'].get('torch')}, diffusers {result['environment'].get('diffusers')}; "
          f"{result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget.", "",
          "| training | precision | batch | grad. ckpt | s/step | images/s | peak alloc GiB | peak reserved GiB | status |",
          "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for c in rows:
        if c["id"].startswith("train/"):
            md.append(f"| {c.get('stage')} | {c.get('precision')} | {c.get('batch')} | {'on' if c.get('gc') else 'off'} | "
                      f"{c.get('seconds_per_step', '-')} | {c.get('images_per_s', '-')} | {c.get('peak_allocated_gib', '-')} | "
                      f"{c.get('peak_reserved_gib', '-')} | {c['status']} {c.get('error', '')} |")
    md += ["", f"| render ({st['render_steps']} steps) | SDPA | torch.compile | batched images/s | per-image pipeline images/s | ratio | "
           "warm-up s (batched / per-image) | peak alloc GiB | status |", "|---|---|---|---:|---:|---:|---|---:|---|"]
    for c in rows:
        if c["id"].startswith("render/"):
            b, n = c.get("engine_batched", {}), c.get("naive_per_image", {})
            fmt = lambda d, k: f"{d[k]:.2f}" if k in d else "-"  # noqa: E731
            md.append(f"| Style Swap | {'on' if c.get('sdpa') else 'off'} | {'on' if c.get('compile') else 'off'} | "
                      f"{fmt(b, 'images_per_s')} | {fmt(n, 'images_per_s')} | {c.get('speedup', '-')} | "
                      f"{fmt(b, 'warmup_s')} / {fmt(n, 'warmup_s')} | {c.get('peak_allocated_gib', '-')} | "
                      f"{c['status']} {c.get('error', '')} |")
    md += ["", "```json", json.dumps(result["summary"], indent=2), "```", ""]
    return "\n".join(md)


def orchestrate(a: argparse.Namespace, s: Settings) -> int:
    if not a.dry:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu/diffusion.py: no CUDA device here; --dry runs the same plan on the CPU")
    budget = a.budget_s if a.budget_s is not None else s.budget_s
    deadline = START + budget
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="styleswap-gpu-bench-"))
    result: dict[str, Any] = {"dry": a.dry, "settings": asdict(s), "budget_s": budget, "environment": {}, "configs": []}
    try:
        paths: dict[str, Path] = {}
        wanted = a.groups.split(",") if a.groups else [g.name for g in plan(s)]
        unknown = set(wanted) - {g.name for g in plan(s)}
        if unknown:
            raise SystemExit(f"--groups: unknown {', '.join(sorted(unknown))}; choose from {', '.join(g.name for g in plan(s))}")
        for group in [g for g in plan(s) if g.name in wanted]:
            estimate = s.estimate_s["render-compile" if group.name == "render-compile" else group.kind]
            if not fits(deadline, estimate):
                result["configs"] += [{"id": config_id(group.kind, c), "status": "skipped", **c,
                                       "error": "time budget spent before its group started"} for c in group.configs]
                continue
            if not paths:  # models and data, once, when something is going to run
                t = time.time()
                models, data = prepare(s, work, out / "logs" / "prepare.log")
                result["prepare_s"] = round(time.time() - t, 1)
                paths = {"work": work, "models": models, "data": data, "logs": out / "logs"}
            recs = run_group(a, group, deadline, paths)
            env = [r for r in recs if r["id"] == "environment"]
            if env and not result["environment"]:
                result["environment"] = {k: v for k, v in env[0].items() if k != "id"}
            result["configs"] += [r for r in recs if r["id"] != "environment"]
            print(f"[{time.time() - START:5.0f} s] {group.name}: "
                  + ", ".join(f"{r['id']}={r['status']}" for r in recs if r["id"] != "environment"), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result["elapsed_s"] = round(time.time() - START, 1)
        result["summary"] = summarize(result["configs"])
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="where results.json, results.md and logs/ go")
    ap.add_argument("--dry", action="store_true", help="tiny preset, 64 x 64, CPU: checks the plumbing in about a minute")
    ap.add_argument("--budget-s", type=float, default=None, help="total seconds from the start (default 450; dry 150)")
    ap.add_argument("--groups", default=None,
                    help="comma-separated groups to run, in plan order (default all: render,train-fp16,train-bf16,render-compile)")
    for internal in ("--worker", "--models", "--data", "--work", "--lines"):
        ap.add_argument(internal, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    s = DRY if a.dry else FULL
    if a.dry:  # tiny shapes gain nothing from more threads, and on busy cores parallel ops wait for each other
        os.environ["OMP_NUM_THREADS"] = "1"
    if a.worker:
        worker(a, s)
        code = 0
    else:
        code = orchestrate(a, s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no waiting on compile worker pools or CUDA teardown: the script ends by itself


if __name__ == "__main__":
    main()
