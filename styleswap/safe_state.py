"""Durable state for both halves: write-then-rename commits (``fsync_path``, ``write_json_atomic``),
one writer per folder (``folder_lock``), optimizer state as safetensors + JSON (never a pickle), and
the crash-test hook ``kill_point``.

Like ``contract`` and ``errors``, this module belongs to neither half: the trainer and the
diffusion stages both resume from it without importing each other. It imports torch only inside
the optimizer functions, so a build whose engine does not use torch never loads it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from styleswap.errors import StyleSwapError

if TYPE_CHECKING:
    import torch

TENSORS, META = "optimizer.safetensors", "optimizer.json"
#: The file a writer holds in the folder it writes (`folder_lock`).
LOCK_NAME = ".lock"


def save_optimizer(optimizer: "torch.optim.Optimizer", folder: Path) -> None:
    """Tensors of ``optimizer.state_dict()`` to safetensors (keys ``<param id>.<name>``), the rest to JSON."""
    import torch
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"].setdefault(str(pid), {})[k] = v
    save_file(tensors, str(Path(folder) / TENSORS))
    (Path(folder) / META).write_text(json.dumps(meta))


def load_optimizer(optimizer: "torch.optim.Optimizer", folder: Path) -> None:
    """Inverse of `save_optimizer`."""
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / META).read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(Path(folder) / TENSORS)).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["state"].items():
        state.setdefault(int(pid), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def fsync_path(path: Path) -> None:
    """Flush a closed file, or a folder's entries (after a rename), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name, fsync, rename: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


# --- one writer per folder ------------------------------------------------------------------------


@contextmanager
def folder_lock(path: str | Path, what: str = "writer") -> Iterator[Path]:
    """Hold ``path/.lock`` while this process writes into ``path`` (created if missing).

    The lock is an ``flock`` on that file, which the kernel releases when its holder dies however
    it dies, and the file names the holder (pid and host). A second writer is refused with one
    line naming the folder and the holder; a lock left by a holder that is gone (killed) is taken
    over with a notice on stderr. On exit the file is removed, and so are the folders this call
    created if they are empty (a refused or failed writer leaves nothing).
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    fd = None
    try:
        fd = _acquire(lock, path, what)
        yield path
    finally:
        if fd is not None:
            try:
                if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    lock.unlink()
            except FileNotFoundError:
                pass  # the folder was removed with it (a failed build that created it)
            os.close(fd)
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): it holds what was written


def _acquire(lock: Path, folder: Path, what: str) -> int:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what}
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StyleSwapError(f"{lock}: cannot create the lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            raise StyleSwapError(f"{folder}: another {holder.get('what') or what} is writing here ({who}); "
                                 "wait for it to finish or stop it") from None
        try:  # a holder that was releasing may have unlinked the file we locked: lock the new one
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _holder(fd)
        if previous.get("pid") not in (None, me["pid"]):
            print(f"notice: {folder}: taking over the lock of {previous.get('what') or what} pid {previous['pid']} "
                  f"on {previous.get('host', '?')}, which no longer holds it (killed?)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        return fd


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# --- crash tests --------------------------------------------------------------------------------


def kill_point(name: str, at: int | None = None) -> None:
    """Test hook at a named point of a run, so that crash tests interrupt a real run at an exact place.

    ``STYLESWAP_TEST_KILL_AT="<name>:<n>"`` SIGKILLs this process there (tests/test_build_resume.py,
    tests/test_trainer_resume_kill.py). ``STYLESWAP_TEST_HOLD_AT="<name>:<n>:<file>"`` writes
    ``<file>.reached`` there and waits (up to 5 minutes) until ``<file>`` exists, so that a test
    can act while the run is at that point. ``n`` is ``at`` when given (a training step), else the
    n-th pass here."""
    kill = os.environ.get("STYLESWAP_TEST_KILL_AT")
    hold = os.environ.get("STYLESWAP_TEST_HOLD_AT")
    if not (kill and kill.partition(":")[0] == name) and not (hold and hold.partition(":")[0] == name):
        return
    if at is None:
        at = _passes[name] = _passes.get(name, 0) + 1
    if kill and kill.partition(":")[0] == name and at == int(kill.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if hold and hold.partition(":")[0] == name:
        n, _, go = hold.partition(":")[2].partition(":")
        if at == int(n or 1) and go:
            Path(go + ".reached").write_text(str(os.getpid()))
            deadline = time.monotonic() + 300
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.05)


_passes: dict[str, int] = {}
