"""`augment build` as two torch.distributed ranks (gloo, CPU): same bytes as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli_util import augment

pytestmark = pytest.mark.slow
COMMON = ["--size", "40", "--keep-empty", "0", "--rows-per-shard", "9", "--no-preview", "--seed", "5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "styleswap.generator.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def data_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").iterdir())}


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_two_ranks_write_the_bytes_of_one_process(tmp_path, fmt):
    source = tmp_path / "ingested"
    assert augment(["ingest", "phantom:2", "--out", str(source), *COMMON])[0] == 0
    one = tmp_path / "one"
    code, _, err = augment(["build", "--source", str(source), "--engine", "gin", "--copies", "2",
                            "--format", fmt, "--out", str(one), *COMMON])
    assert code == 0, err
    two = tmp_path / "two"
    proc = torchrun(["build", "--source", str(source), "--engine", "gin", "--copies", "2", "--format", fmt,
                     "--out", str(two), *COMMON])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert data_bytes(one) == data_bytes(two)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert len(m2["shards"]) >= 3  # enough shards that both ranks rendered some
    assert m1["shards"] == m2["shards"] and m1["counts"] == m2["counts"]
    assert not (two / ".partial").exists()
    assert augment(["verify", str(two)])[0] == 0


def test_two_ranks_from_a_raw_source_ingest_once(tmp_path):
    one = tmp_path / "one"
    assert augment(["build", "--source", "phantom:2", "--engine", "bezier", "--copies", "1", "--out", str(one),
                    *COMMON])[0] == 0
    two = tmp_path / "two"
    proc = torchrun(["build", "--source", "phantom:2", "--engine", "bezier", "--copies", "1", "--out", str(two),
                     "--cache-dir", str(tmp_path / "cache"), *COMMON])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert data_bytes(one) == data_bytes(two)
    assert len(list((tmp_path / "cache").glob("source-*"))) == 1


def test_a_refused_output_folder_stops_every_rank(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = torchrun(["build", "--source", "phantom:1", "--engine", "gin", "--copies", "1", "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache"), *COMMON])
    assert proc.returncode != 0
    assert "not a styleswap dataset" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_finetune_as_two_processes_trains_and_saves_once(tmp_path):
    """`accelerate launch`-style DreamBooth on two CPU ranks: both finish, the main one saves."""
    from diffusion_fixtures import write_dataset

    from styleswap.generator.diffusion.presets import build_tiny

    data = write_dataset(tmp_path / "data", n=4)
    base = build_tiny(tmp_path / "tiny")
    out = tmp_path / "ft"
    proc = torchrun(["finetune", "--data", str(data), "--base-model", str(base), "--out", str(out),
                     "--max-train-steps", "3", "--train-batch-size", "2", "--checkpointing-steps", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("tuned U-Net:") == 1  # reported by the main process only
    info = json.loads((out / "finetune.json").read_text())
    assert info["global_step"] == 3
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
