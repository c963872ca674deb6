"""bench/gpu/diffusion.py before any GPU time is spent on it: its dry run, its budget, its guards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_util import load_bench

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "diffusion.py"


@pytest.fixture(scope="module")
def bench():
    return load_bench("gpu/diffusion.py", "gpu_diffusion_bench")


def planned_ids(bench, settings) -> set[str]:
    return {bench.config_id(g.kind, c) for g in bench.plan(settings) for c in g.configs}


def run(out: Path, *flags: str, timeout: int) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *flags], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_full_plan_measures_what_the_issue_asks(bench):
    ids = planned_ids(bench, bench.FULL)
    for stage in ("dreambooth", "controlnet"):
        for precision in ("fp16", "bf16"):
            for batch in (4, 8):
                for gc in ("gc", "no-gc"):
                    assert f"train/{stage}/{precision}/batch{batch}/{gc}" in ids
    assert {f"render/sdpa-{s}/compile-{c}" for s in ("on", "off") for c in ("on", "off")} <= ids
    s = bench.FULL
    assert (s.preset, s.resolution, s.render_steps, s.device) == ("sd15-random", 512, 20, "cuda")
    assert s.budget_s + bench.KILL_GRACE_S < 8 * 60


def test_guard_records_oom_and_errors_and_goes_on(bench):
    import torch

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def broken():
        raise ValueError("bad shape\nsecond line")

    assert bench.guarded("a", oom)["status"] == "oom"
    rec = bench.guarded("b", broken)
    assert rec["status"] == "error" and rec["error"] == "ValueError: bad shape" and rec["id"] == "b"
    assert bench.guarded("c", lambda: {"x": 1}) == {"id": "c", "status": "ok", "x": 1, "wall_s": pytest.approx(0, abs=5)}
    assert bench.fits(100.0, 10.0, now=80.0) and not bench.fits(100.0, 30.0, now=80.0)


def test_spent_budget_skips_everything_and_says_so(bench, tmp_path):
    result = run(tmp_path, "--dry", "--budget-s", "0", timeout=120)
    assert {c["id"] for c in result["configs"]} == planned_ids(bench, bench.DRY)
    assert {c["status"] for c in result["configs"]} == {"skipped"}
    assert "time budget" in (tmp_path / "results.md").read_text()


def test_unknown_group_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--groups", "render,warp", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--groups: unknown warp" in proc.stderr


@pytest.mark.slow
def test_dry_run(bench, tmp_path):
    # The budget is generous so that a busy machine still runs every config; the dry run takes
    # about a minute.
    result = run(tmp_path, "--dry", "--budget-s", "900", timeout=960)
    configs = {c["id"]: c for c in result["configs"]}
    assert set(configs) == planned_ids(bench, bench.DRY)
    assert {c["status"] for c in configs.values()} == {"ok"}, {k: c.get("error") for k, c in configs.items()}
    for cid, c in configs.items():
        if cid.startswith("train/"):
            assert c["seconds_per_step"] > 0 and c["images_per_s"] > 0 and c["final_loss"] == c["final_loss"]
        else:
            assert c["engine_batched"]["images_per_s"] > 0 and c["naive_per_image"]["images_per_s"] > 0
            assert c["speedup"] > 0
    assert result["summary"]["controlnet_engine_cost"]["copies_per_hour"] > 0
    assert result["environment"]["torch"] and result["dry"] is True
    md = (tmp_path / "results.md").read_text()
    assert "| controlnet | fp16 | 2 | on |" in md and "| Style Swap | on | on |" in md
    # Only results and logs come back from the device: the models stay in a temporary folder.
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) < 2_000_000
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", "logs"}
