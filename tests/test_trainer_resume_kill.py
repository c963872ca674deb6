"""Crash safety of `train seg`: SIGKILL, then ``--resume latest``.

Every run is a real ``train seg`` subprocess, killed with SIGKILL by the test hook
``STYLESWAP_TEST_KILL_AT=POINT:STEP`` (see ``_test_kill_point`` in ``styleswap/trainer/train.py``):
the kernel ends the process on the spot, as ``kill -9`` or the OOM killer would, so nothing in
Python gets to clean up. The resumed run must continue from the last *complete* checkpoint and,
with ``--workers 0`` on CPU, end with bitwise the weights of a run that was never interrupted.

Data: 18 rows, batch 4 -> 5 batches per epoch; 7 steps with a checkpoint every 3 (steps 3, 6, 7),
so every resume below starts mid-epoch (step 3 = epoch 0, batch 3) and crosses into epoch 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from styleswap.trainer.train import find_checkpoint
from trainer_fixtures import write_dataset

STEPS, EVERY = 7, 3
ARGS = ["--steps", STEPS, "--checkpoint-every", EVERY, "--batch-size", 4, "--lr", "3e-3", "--buffer-size", 4,
        "--log-every", 1, "--channels", 4, "--depth", 3, "--res-units", 1, "--workers", 0, "--nce-patches", 32,
        "--no-progress"]  # fmt: skip


def train(data: Path, out: Path, *extra, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("STYLESWAP_TEST_KILL_AT", None)
    if kill_at:
        env["STYLESWAP_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "styleswap.trainer.cli", "seg", "--data", data, "--out", out, *ARGS, *extra]
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=600)


def assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert f"trained {STEPS} steps" in proc.stdout, proc.stdout


def metric_rows(run: Path) -> list[list[str]]:
    return [r.split(",") for r in (run / "metrics.csv").read_text().strip().splitlines()[1:]]


def state(folder: Path) -> tuple[int, int, int]:
    s = json.loads((folder / "trainer_state.json").read_text())
    return s["step"], s["epoch"], s["batches_in_epoch"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:  # CPU, one thread, workers 0, fixed seeds, same data order: bitwise equal
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("kill") / "d", n_cases=3, slices=6, size=16)


@pytest.fixture(scope="module")
def uninterrupted(data) -> Path:
    out = data.parent / "full"
    assert_ok(train(data, out))
    assert state(out / "checkpoints" / f"step-{STEPS:07d}") == (7, 1, 2)
    return out


def resume_and_check(data: Path, run: Path, uninterrupted: Path, from_step: int, rows_before: list[list[str]]) -> None:
    # Sentinel: were the resumed run to start over instead of continuing, it would itself finish
    # step `from_step` and the hook would kill it there.
    proc = train(data, run, "--resume", "latest", kill_at=f"step:{from_step}")
    assert_ok(proc)
    rows = metric_rows(run)
    assert [r[0] for r in rows] == [str(i) for i in range(1, STEPS + 1)]  # each step once: later rows of the killed run dropped
    assert rows[:from_step] == rows_before[:from_step]  # the killed run's rows (timings included) were kept, not recomputed
    assert state(run / "checkpoints" / f"step-{STEPS:07d}") == (7, 1, 2)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half-written folder was cleaned up
    assert_same_weights(uninterrupted, run)


def test_sigkill_between_checkpoints_resumes_from_the_last_one(data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    assert_killed(train(data, run, kill_at="step:5"))  # 2 steps after the checkpoint at 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003"]
    assert [r[0] for r in metric_rows(run)] == ["1", "2", "3", "4", "5"]
    assert not (run / "final").exists()
    assert find_checkpoint(run, "latest") == run / "checkpoints" / "step-0000003"
    assert state(run / "checkpoints" / "step-0000003") == (3, 0, 3)
    resume_and_check(data, run, uninterrupted, 3, metric_rows(run))


@pytest.mark.parametrize("point", ["checkpoint-write", "checkpoint-commit"])
def test_sigkill_inside_a_checkpoint_write_is_never_resumed_from(data, uninterrupted, tmp_path, point):
    # checkpoint-write: only model.safetensors of step 6 is on disk; checkpoint-commit: every file
    # of step 6 is written and synced, the folder not yet renamed. Either way step 3 is the latest.
    run = tmp_path / "run"
    assert_killed(train(data, run, kill_at=f"{point}:6"))
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-0000006", "step-0000003"]
    half = {p.name for p in (ckpts / ".tmp-step-0000006").iterdir()}
    assert "model.safetensors" in half
    assert ("trainer_state.json" in half) == (point == "checkpoint-commit")
    assert find_checkpoint(run, "latest") == ckpts / "step-0000003"
    resume_and_check(data, run, uninterrupted, 3, metric_rows(run))


def test_find_checkpoint_only_accepts_complete_step_folders(tmp_path):
    ckpts = tmp_path / "checkpoints"
    files = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")

    def folder(name: str, names=files) -> Path:
        (ckpts / name).mkdir(parents=True)
        for f in names:
            (ckpts / name / f).write_text("{}")
        return ckpts / name

    assert find_checkpoint(tmp_path, "latest") is None  # no checkpoints/ folder at all
    good = folder("step-0000010")
    folder("step-0000009")
    folder("step-0000030", names=files[1:])  # no model
    folder("step-0000040", names=files[:-1])  # no trainer_state.json
    folder(".tmp-step-0000050")  # complete but never committed
    folder("step-0000060.tmp")  # the former temporary name (made `latest` crash on int("0000060.tmp"))
    (ckpts / "step-0000070").write_text("")  # a file, not a folder
    assert find_checkpoint(tmp_path, "latest") == good
    assert find_checkpoint(tmp_path, str(good)) == good
    from styleswap.errors import StyleSwapError

    with pytest.raises(StyleSwapError, match="model.safetensors"):
        find_checkpoint(tmp_path, str(ckpts / "step-0000030"))
