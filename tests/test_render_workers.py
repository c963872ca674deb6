"""Render worker processes die with their build, however it dies (`render.die_with_parent`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")


def alive(procs) -> list:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_render_workers_and_the_resource_tracker_die_with_a_killed_build(tmp_path):
    go = tmp_path / "go"  # never created: the build waits at its first row, its workers started
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STYLESWAP_TEST_")},
           "STYLESWAP_TEST_HOLD_AT": f"rows:1:{go}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "styleswap.generator.cli", "build", "--source", "phantom:1",
                             "--out", str(tmp_path / "ds"), "--engine", "bezier", "-k", "1", "--size", "32",
                             "--keep-empty", "0", "--no-preview", "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: list = []
    try:
        deadline = time.monotonic() + 180
        while not Path(f"{go}.reached").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the build never reached its first row"
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        cmdlines = [" ".join(c.cmdline()) for c in children]
        assert sum("spawn_main" in c for c in cmdlines) == 2, cmdlines  # the two render workers
        assert any("resource_tracker" in c for c in cmdlines), cmdlines
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = alive(children)
        assert not left, [" ".join(p.cmdline()) for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in alive(children):
            p.kill()  # only if the test failed: leave no orphans behind
