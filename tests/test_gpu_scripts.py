"""The GPU benchmark scripts, proven on the CPU before a lent GPU spends its minutes on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu" / "cross_modality.py"


@pytest.mark.slow
def test_cross_modality_gpu_script_dry_run(shared_data, tmp_path):
    """prepare -> run -> finish in dry mode: every run trained, its inference chosen on the source's
    validation, CT -> MRI measured in run, the MRI -> CT model carried back and measured by finish."""
    carry, out = tmp_path / "carry", tmp_path / "out"

    def step(*args):
        proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    assert "MiB to carry" in step("prepare", "--dry", "--carry", carry)
    step("run", "--dry", "--carry", carry, "--out", out, "--work", tmp_path / "work")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8  # what the device tool brings back
    assert files == ["mr2ct-dice-infonce-s0.safetensors", "results.json", "results.md"]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["direction"], r["loss"]) for r in runs} == {("ct2mr", "erm"), ("ct2mr", "dice+infonce"), ("mr2ct", "dice+infonce")}
    for r in runs:
        assert r["returncode"] == 0 and r["steps_done"] == 20 and not r.get("stopped")
        assert r["source_val_dice"][r["inference"]] == max(r["source_val_dice"].values())
        if r["direction"] == "ct2mr":
            assert len(r["target"]["per_case"]) == 8  # every MRI case measured on the machine
    table = step("finish", "--results", out, "--work", tmp_path / "finish")
    final = json.loads((out / "results-final.json").read_text())["runs"]
    mr2ct = next(r for r in final if r["direction"] == "mr2ct")
    assert len(mr2ct["target"]["per_case"]) == 30  # all CT volumes, measured here
    assert "mr2ct | GIN + Bezier + Dice + InfoNCE (ours)" in table
