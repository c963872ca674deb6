"""`safe_state.folder_lock`: one writer per folder, a dead holder's lock taken over, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from styleswap.errors import StyleSwapError
from styleswap.safe_state import LOCK_NAME, folder_lock


def test_the_lock_names_its_holder_and_refuses_a_second_writer(tmp_path):
    run = tmp_path / "runs" / "a"
    with folder_lock(run, "train seg") as held:
        assert held == run and run.is_dir()
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname(), "what": "train seg"}
        with pytest.raises(StyleSwapError) as info:  # another open of the lock, as another process would
            with folder_lock(run, "train seg"):
                pass
        assert str(info.value) == (f"{run}: another train seg is writing here (pid {os.getpid()} on "
                                   f"{socket.gethostname()}); wait for it to finish or stop it")
        (run / "weights").write_text("x")
    assert sorted(p.name for p in run.iterdir()) == ["weights"]  # the lock file is gone, the work stays


def test_a_refused_or_empty_writer_leaves_no_folder_behind(tmp_path):
    with folder_lock(tmp_path / "new" / "deeper"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_dead_holders_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: no longer running
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "what": "augment build"}))
    with folder_lock(tmp_path, "augment build"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err == (f"notice: {tmp_path}: taking over the lock of augment build pid {pid} on {socket.gethostname()}, "
                   "which no longer holds it (killed?)\n")


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK_NAME).symlink_to(target)
    with pytest.raises(StyleSwapError, match=r"\.lock: cannot create the lock file"):
        with folder_lock(tmp_path / "d"):
            pass
    assert target.read_text() == "keep"
