"""`augment build` killed (SIGKILL) or out of disk space, then run again: it resumes to the same bytes.

The kills are exact: the test hook ``STYLESWAP_TEST_KILL_AT="<point>:<n>"`` (`safe_state.kill_point`)
SIGKILLs the build process the n-th time it passes <point>:

    rows          a row was added to a shard (mid-shard unless n is a multiple of rows-per-shard)
    shard-close   a shard's file is closed and fsynced, not yet renamed from .tmp
    receipt       a shard is renamed to its staged name, its receipt not yet written
    finalize      n shards are linked to their final names in data/, no manifest yet
    manifest      every shard and the card are in place, manifest.json not yet written
    committed     manifest.json written, .partial not yet removed
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli_util import augment
from styleswap import contract
from styleswap.generator import shards, staging

R = 7  # rows per shard: phantom:2 gives 49 slices, so 7 shards
COMMON = ["--size", "48", "--keep-empty", "0", "--rows-per-shard", str(R), "--no-preview", "--seed", "3",
          "--engine", "bezier", "--copies", "2"]


def args(fmt: str, *extra: str, source: str = "phantom:2") -> list[str]:
    # --out is relative and every build runs in a folder of its own, so that manifests and cards
    # (which record the command and the folder name) can be compared byte for byte
    return ["build", "--source", source, "--format", fmt, "--out", "ds", *COMMON, *extra]


@contextmanager
def cwd(path: Path):
    old = os.getcwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def build_in(path: Path, argv: list[str]) -> tuple[int, str, str]:
    with cwd(path):
        return augment(argv)


def killed(path: Path, argv: list[str], at: str) -> None:
    """Run the build in a process of its own that the hook kills at ``at``."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STYLESWAP_TEST_KILL_AT": at, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "styleswap.generator.cli", *argv], cwd=path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_half_written(ds: Path) -> None:
    """After a kill: no manifest, and every file under a shard's name is a whole, readable shard."""
    assert not (ds / "manifest.json").exists()
    staged = [p for p in (ds / ".partial").iterdir() if staging.STAGED.fullmatch(p.name)]
    final = list((ds / "data").iterdir()) if (ds / "data").is_dir() else []
    for path in staged + final:
        assert contract.count_rows(path) in (R, 49 % R), path
    for path in staged:
        receipt = Path(f"{path}.json")
        if receipt.exists():
            assert json.loads(receipt.read_text())["sha256"] == contract.sha256_file(path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted build per format, the reference bytes."""
    root = tmp_path_factory.mktemp("clean")
    out = {}
    for fmt in ("parquet", "hdf5"):
        code, _, err = build_in(root / fmt, args(fmt))
        assert code == 0, err
        out[fmt] = root / fmt / "ds"
    return out


@pytest.mark.parametrize(
    "fmt, kills, done",
    [
        ("parquet", ["rows:17"], 2),  # mid shard 2
        ("hdf5", ["rows:17"], 2),
        ("parquet", ["shard-close:3"], 2),  # shard 2 complete but still .tmp
        ("parquet", ["receipt:3"], 2),  # shard 2 renamed, no receipt: rendered again
        ("hdf5", ["finalize:3"], 7),  # 3 of 7 shards under their final names
        ("parquet", ["manifest:1"], 7),  # everything but the manifest
        ("parquet", ["rows:10", "rows:10", "receipt:2"], 3),  # killed again while resuming
    ],
    ids=["rows-parquet", "rows-hdf5", "shard-close", "receipt", "finalize-hdf5", "manifest", "three-kills"],
)
def test_killed_build_resumes_to_the_same_bytes(tmp_path, clean, fmt, kills, done):
    for at in kills:
        killed(tmp_path, args(fmt), at)
        assert_nothing_half_written(tmp_path / "ds")
    if kills[-1].startswith("manifest"):  # as if killed inside its atomic write
        (tmp_path / "ds" / "manifest.json.tmp").write_text('{"tool": "styl')
    code, out, err = build_in(tmp_path, args(fmt))
    assert code == 0, err
    assert f"resuming ds: {done} shards already done" in out
    assert all_bytes(tmp_path / "ds") == all_bytes(clean[fmt])  # shards, manifest (sha256s), card
    assert not (tmp_path / "ds" / ".partial").exists()
    assert augment(["verify", str(tmp_path / "ds")])[0] == 0


def test_disk_full_stops_cleanly_and_resumes(tmp_path, clean, monkeypatch):
    add, count, full_after = shards.ShardWriter.add, [0], [24]  # shards 0..2 done, shard 3 half written

    def add_until_full(self, row):
        count[0] += 1
        if count[0] > full_after[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        add(self, row)

    monkeypatch.setattr(shards.ShardWriter, "add", add_until_full)
    code, _, err = build_in(tmp_path, args("parquet"))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ds: no space left on the device") and "run the same command again" in err
    folder = tmp_path / "ds" / ".partial"
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".json") == [
        f"train-0000{i}.parquet" for i in range(3)]  # the half-written shard is gone
    full_after[0], count[0] = 10**9, 0  # space freed

    # other settings: refused (the finished shards are not thrown away), or discarded with --overwrite
    code, _, err = build_in(tmp_path, args("parquet", "--seed", "4"))
    assert code == 2 and "other settings (seed" in err and "--overwrite" in err and err.count("\n") == 1
    assert len(staging.finished_shards(folder)) == 3

    code, out, err = build_in(tmp_path, args("parquet"))
    assert code == 0, err
    assert "resuming ds: 3 shards already done" in out
    assert count[0] == 49 - 3 * R  # only the rows of the other shards were rendered and written
    assert all_bytes(tmp_path / "ds") == all_bytes(clean["parquet"])
    assert augment(["verify", str(tmp_path / "ds")])[0] == 0


def test_other_settings_with_overwrite_start_over(tmp_path, clean):
    killed(tmp_path, args("parquet", "--seed", "4"), "rows:10")
    code, out, err = build_in(tmp_path, args("parquet", "--overwrite"))
    assert code == 0, err
    assert "resuming" not in out
    data = lambda d: {k: v for k, v in all_bytes(d).items() if k.startswith("data/")}  # noqa: E731
    assert data(tmp_path / "ds") == data(clean["parquet"])


def torchrun(cwd: Path, argv: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    """``argv`` as two torch.distributed ranks (gloo, CPU) in ``cwd``; ``kill``: a kill point."""
    from test_distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "styleswap.generator.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"STYLESWAP_TEST_KILL_AT": kill} if kill else {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def assert_same_shards(one: Path, two: Path) -> None:
    """The shards of a one-process build and of a build by ranks are the same bytes."""
    assert {k: v for k, v in all_bytes(one).items() if k.startswith("data/")} == \
        {k: v for k, v in all_bytes(two).items() if k.startswith("data/")}
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["shards"] == m2["shards"] and m1["counts"] == m2["counts"]
    assert augment(["verify", str(two)])[0] == 0


@pytest.mark.slow
def test_a_killed_build_resumes_on_two_ranks(tmp_path, clean):
    """One process killed, two torch.distributed ranks finish it: same shards as one process."""
    assert build_in(tmp_path, ["ingest", "phantom:2", "--out", "src", *COMMON[:7]])[0] == 0
    argv = args("hdf5", source=str(tmp_path / "src"))
    code, _, err = build_in(tmp_path / "one", argv)
    assert code == 0, err
    killed(tmp_path / "two", argv, "rows:17")
    proc = torchrun(tmp_path / "two", argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming ds: 2 of 7 shards already done" in proc.stdout
    assert_same_shards(tmp_path / "one" / "ds", tmp_path / "two" / "ds")


def test_killed_after_the_commit_the_rerun_finds_it_finished(tmp_path, clean):
    """Killed between the manifest's rename and the removal of .partial: the dataset is whole, the
    same command needs no --overwrite (it only cleans up), and other settings are still refused."""
    killed(tmp_path, args("parquet"), "committed:1")
    ds = tmp_path / "ds"
    assert (ds / "manifest.json").is_file() and (ds / ".partial").is_dir()
    assert augment(["verify", str(ds)])[0] == 0
    committed = {k: v for k, v in all_bytes(ds).items() if not k.startswith((".partial", ".lock"))}
    code, _, err = build_in(tmp_path, args("parquet", "--seed", "4"))
    notice, error = err.splitlines()  # the killed build's lock is taken over, then the refusal
    assert notice.startswith("notice: ds: taking over the lock of augment build pid ") and notice.endswith("(killed?)")
    assert code == 2 and error == "error: ds: a dataset already exists there; pass --overwrite to replace it"
    code, out, err = build_in(tmp_path, args("parquet"))
    assert code == 0, err
    assert "ds: already built with these settings" in out and "resuming" not in out
    assert all_bytes(ds) == committed  # .partial and the stale lock gone, nothing rendered or rewritten
    # the killed process committed what an uninterrupted build commits (it records its own command line)
    m, ref = (json.loads((d / "manifest.json").read_text()) for d in (ds, clean["parquet"]))
    assert {**m, "command": ""} == {**ref, "command": ""}
    assert {k: v for k, v in committed.items() if k.startswith("data/")} == \
        {k: v for k, v in all_bytes(clean["parquet"]).items() if k.startswith("data/")}
    assert augment(["verify", str(ds)])[0] == 0


def staged_bytes(ds: Path) -> dict[str, bytes]:
    return all_bytes(ds / ".partial")


def test_no_other_writer_discards_a_staged_build(tmp_path, clean):
    """Finished shards staged by one configuration survive every other writer without --overwrite:
    a build with other settings, a Ray build of the same flags (its source is ingested first, so
    its fingerprint differs), and a convert into that folder."""
    killed(tmp_path, args("parquet"), "rows:17")
    before = staged_bytes(tmp_path / "ds")
    assert len(staging.finished_shards(tmp_path / "ds" / ".partial")) == 2
    writers = [args("parquet", "--seed", "4"), ["convert", str(clean["hdf5"]), "--to", "parquet", "--out", "ds"]]
    try:
        import ray.data  # noqa: F401

        writers.append(args("parquet", "--executor", "ray", "--workers", "1"))
    except ImportError:
        pass
    for argv in writers:
        code, _, err = build_in(tmp_path, argv)
        error = err.splitlines()[-1]  # after a notice, the first time, that the killed build's lock is taken over
        assert code == 2 and err.count("error: ") == 1 and error.startswith("error: ds/.partial: "), (argv, err)
        assert "holds an interrupted build with other settings" in error and "--overwrite" in error, err
        assert staged_bytes(tmp_path / "ds") == before, argv
    code, out, err = build_in(tmp_path, args("parquet"))
    assert code == 0 and "resuming ds: 2 shards already done" in out, err
    assert all_bytes(tmp_path / "ds") == all_bytes(clean["parquet"])


@pytest.mark.slow
def test_a_killed_torchrun_build_resumes_to_the_same_bytes(tmp_path, clean):
    """Two ranks SIGKILLed mid-way, then the same torchrun command: the bytes of one process."""
    assert build_in(tmp_path, ["ingest", "phantom:2", "--out", "src", *COMMON[:7]])[0] == 0
    argv = args("parquet", source=str(tmp_path / "src"))
    code, _, err = build_in(tmp_path / "one", argv)
    assert code == 0, err
    (tmp_path / "two").mkdir()
    assert torchrun(tmp_path / "two", argv, kill="rows:10").returncode != 0  # each rank 3 rows into its 2nd shard
    ds = tmp_path / "two" / "ds"
    assert_nothing_half_written(ds)
    assert staging.finished_shards(ds / ".partial")  # some shards were finished before the kill
    proc = torchrun(tmp_path / "two", argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming ds: " in proc.stdout
    assert_same_shards(tmp_path / "one" / "ds", ds)
