"""`augment build --executor ray` (Ray Data actors) on a local Ray instance: the bytes of one worker."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from cli_util import augment

COMMON = ["--size", "48", "--keep-empty", "0", "--rows-per-shard", "9", "--no-preview", "--seed", "3"]
GIN = ["--engine", "gin", "--copies", "2"]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def data_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_ray_build_writes_the_bytes_of_one_worker(ray_local, tmp_path_factory, fmt):
    tmp = tmp_path_factory.mktemp(fmt)
    cache = tmp_path_factory.getbasetemp() / "ray-cache"  # the raw source is ingested once for both
    one, two = tmp / "one", tmp / "two"
    code, _, err = augment(["build", "--source", "phantom:2", "--out", str(one), "--format", fmt,
                            "--workers", "1", *GIN, *COMMON])
    assert code == 0, err
    code, out, err = augment(["build", "--source", "phantom:2", "--out", str(two), "--format", fmt,
                              "--executor", "ray", "--workers", "2", "--cache-dir", str(cache), *GIN, *COMMON])
    assert code == 0, err
    assert f"{fmt} shard(s)" in out
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert len(m2["shards"]) >= 3
    assert m1["shards"] == m2["shards"]  # paths, row counts, bytes and sha256
    assert m1["counts"] == m2["counts"] and m1["image_size"] == m2["image_size"]
    assert data_bytes(one) == data_bytes(two)
    assert not (two / ".partial").exists()
    assert augment(["verify", str(two)])[0] == 0


@pytest.mark.slow
def test_ray_build_with_the_content_check_writes_the_bytes_of_one_worker(ray_local, tmp_path):
    """The check runs in the actors; scores and re-rendered copies travel back with the rows."""
    from predict_fixtures import tiny_model

    model = tiny_model(tmp_path / "model", size=48)
    qc = ["--qc-model", str(model), "--qc-min-dice", "0.05"]
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "one"), *GIN, *COMMON, *qc])
    assert code == 0, err
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "two"), "--executor", "ray",
                            "--workers", "2", "--cache-dir", str(tmp_path / "cache"), *GIN, *COMMON, *qc])
    assert code == 0, err
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert m1["qc"]["summary"]["re_rendered"] > 0 and m1["qc"] == m2["qc"]
    assert data_bytes(tmp_path / "one") == data_bytes(tmp_path / "two")


def test_read_source_slices_matches_the_source_stream(tmp_path):
    from styleswap.generator import dataset
    from styleswap.generator.executors.ray_actors import plan_tasks
    from styleswap.generator.plan import plan_shards

    src = tmp_path / "src"
    assert augment(["ingest", "phantom:1", "--out", str(src), "--size", "32", "--rows-per-shard", "5",
                    "--no-preview"])[0] == 0
    every = list(dataset.iter_source_slices(src))
    manifest = dataset.read_manifest(src)
    assert len(manifest.shards) >= 3
    for a, b in [(0, 3), (3, 12), (4, 5), (len(every) - 2, len(every))]:  # within and across shards
        got = dataset.read_source_slices(src, manifest, "train", a, b)
        assert [s.sample_id for s in got] == [s.sample_id for s in every[a:b]]
        assert all((g.image == e.image).all() and (g.mask == e.mask).all() for g, e in zip(got, every[a:b]))
    planned = plan_shards(manifest, 7)
    tasks = plan_tasks(planned, 7, chunk=3, copies=2, workers=2)
    assert tasks[0][1] == 0 and tasks[-1][2] == len(every)
    assert all(b == c for (_, _, b), (_, c, _) in zip(tasks, tasks[1:]))  # contiguous, in order
    for _, a, b in tasks:  # inside one shard, starting at a chunk of a one-worker build
        assert a // 7 == (b - 1) // 7 and (a % 7) % 3 == 0
    # the shards a resumed build still needs: ranges of those only
    rest = plan_tasks([s for s in planned if s.index != 1], 7, chunk=3, copies=2, workers=2)
    assert sorted({p for _, a, b in rest for p in range(a, b)}) == [p for p in range(len(every)) if p // 7 != 1]


def test_missing_ray_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "x"), "--executor", "ray",
                            *GIN, *COMMON])
    assert code == 2
    assert err.strip().count("\n") == 0 and "pip install 'styleswap[ray]'" in err
    assert not (tmp_path / "x").exists()
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "y"), "--ray-address", "auto",
                            *GIN, *COMMON])
    assert code == 2 and "--executor ray" in err


@pytest.mark.slow
def test_an_actor_failure_is_one_styleswap_error_and_leaves_nothing(ray_local, tmp_path, monkeypatch):
    from styleswap.errors import StyleSwapError
    from styleswap.generator.build import BuildConfig, run_build
    from styleswap.generator.engines import base
    from styleswap.generator.executors.ray_actors import RayExecutor

    # Known to this process only: the actors (other processes) fail to construct the engine.
    monkeypatch.setitem(base.ENGINES, "here-only", base.ENGINES["bezier"])
    cfg = BuildConfig(source="phantom:1", out=str(tmp_path / "out"), engine="here-only", copies=1, size=32,
                      keep_empty=0.0, workers=2, preview=False, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(StyleSwapError, match="unknown engine 'here-only'"):
        run_build(cfg, progress=False, executor=RayExecutor())
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_killed_ray_build_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    """The driver SIGKILLed mid-way (its local Ray instance with it), then the same command: it
    resumes from the finished shards' receipts and ends byte-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess

    pytest.importorskip("ray.data")
    src = tmp_path / "src"
    assert augment(["ingest", "phantom:2", "--out", str(src), *COMMON])[0] == 0
    argv = [sys.executable, "-m", "styleswap.generator.cli", "build", "--source", str(src), "--out", "ds",
            "--executor", "ray", "--workers", "2", *GIN, *COMMON]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESWAP_TEST_")}

    def run(folder: Path, kill: str | None = None) -> subprocess.CompletedProcess:
        folder.mkdir(exist_ok=True)
        return subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=600,
                              env={**env, **({"STYLESWAP_TEST_KILL_AT": kill} if kill else {})})

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run(tmp_path / "resumed", "rows:21")  # 2 of 6 shards finished, the third 3 rows in
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    ds = tmp_path / "resumed" / "ds"
    assert not (ds / "manifest.json").exists() and len(list((ds / ".partial").glob("*.json"))) == 3  # + build.json
    again = run(tmp_path / "resumed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming ds: 2 of 6 shards already done" in again.stdout
    reference = tmp_path / "whole" / "ds"
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(ds) == files(reference)
    assert augment(["verify", str(ds)])[0] == 0
