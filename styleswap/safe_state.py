"""Durable state for both halves: optimizer state as safetensors + JSON (never a pickle), and
``fsync_path`` for write-then-rename commits.

Like ``contract`` and ``errors``, this module belongs to neither half: the trainer and the
diffusion stages both resume from it without importing each other.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import torch

TENSORS, META = "optimizer.safetensors", "optimizer.json"


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Tensors of ``optimizer.state_dict()`` to safetensors (keys ``<param id>.<name>``), the rest to JSON."""
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


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
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


def kill_point(name: str, at: int | None = None) -> None:
    """Test hook: ``STYLESWAP_TEST_KILL_AT="<name>:<n>"`` SIGKILLs this process at that point, so
    crash tests (tests/test_build_resume.py, tests/test_trainer_resume_kill.py) interrupt a real
    run at an exact place. ``n`` is ``at`` when given (a training step), else the n-th pass here."""
    want = os.environ.get("STYLESWAP_TEST_KILL_AT")
    if not want or want.partition(":")[0] != name:
        return
    if at is None:
        at = _passes[name] = _passes.get(name, 0) + 1
    if at == int(want.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_passes: dict[str, int] = {}
