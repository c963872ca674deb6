"""Publishing a folder to the Hugging Face Hub, shared by `augment push` (datasets) and `train push`
(models), importing neither half: the repo-id and license rules, the file list, the one commit.

The token is never read here: huggingface_hub finds it (``HF_TOKEN`` or ``hf auth login``) by
itself, so it cannot be printed, logged or written by us. Every check runs before the first
network call; a Hub failure is one line naming the repo, never a traceback or a credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleswap.errors import StyleSwapError

# Hub rules: namespace/name, letters, digits, '-', '_', '.', no '--' or '..', at most 96 chars each.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID_RE = re.compile(rf"^{_PART}/{_PART}$")
#: Hub license ids are lowercase SPDX-like identifiers ("cc-by-4.0", "apache-2.0", "other").
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
#: ``PushOp.local`` of a file rendered in memory (the card), not read from the folder.
CARD_SOURCE = "<card rendered by {program} push>"


@dataclass(frozen=True)
class PushOp:
    """One file of the commit: where it comes from, where it goes, how big it is."""

    local: str  # a path, or a CARD_SOURCE text for the rendered card
    path_in_repo: str
    size: int


def check_repo_id(repo_id: str, example: str = "alice/abdomen-gin") -> str:
    if not repo_id or not REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise StyleSwapError(f"--repo-id must be NAMESPACE/NAME (e.g. {example}), got {repo_id!r}")
    return repo_id


def check_license_id(lic: str | None, missing_hint: str) -> str:
    """A Hub license id, or a one-line refusal (``missing_hint`` says where one can come from)."""
    if not lic:
        raise StyleSwapError(f"no license: pass --license ID (e.g. cc-by-4.0, or 'other'){missing_hint}; medical data licenses matter")
    if not LICENSE_RE.match(lic):
        raise StyleSwapError(f"--license must be a lowercase Hub license id such as cc-by-4.0 or other, got {lic!r}")
    return lic


def inside(folder: Path, path: Path) -> Path:
    """``path`` resolved, refused if it (or a link) leads outside the folder."""
    target = path.resolve()
    if path.is_symlink() or not target.is_relative_to(folder.resolve()):
        raise StyleSwapError(f"{path}: refusing to upload a file that leads outside {folder}")
    return target


def file_op(folder: Path, path: Path, path_in_repo: str) -> PushOp:
    target = inside(folder, path)
    return PushOp(str(target), path_in_repo, target.stat().st_size)


def format_ops(ops: list[PushOp]) -> list[str]:
    return [f"{op.local} -> {op.path_in_repo} ({op.size} bytes)" for op in ops]


def default_api():
    from huggingface_hub import HfApi

    return HfApi()  # token: from the environment or `hf auth login`, found by huggingface_hub


def commit(
    ops: list[PushOp],
    card: str,
    repo_id: str,
    *,
    repo_type: str,
    message: str,
    private: bool = False,
    revision: str | None = None,
    api: Any = None,
) -> None:
    """Create the repo (and branch) if needed and send ``ops`` in one commit; the op whose ``local``
    is not a file path carries ``card``. A rerun after an interruption only sends what the Hub lacks."""
    from huggingface_hub import CommitOperationAdd

    api = api if api is not None else default_api()
    operations = [
        CommitOperationAdd(path_in_repo=op.path_in_repo,
                           path_or_fileobj=card.encode() if op.local.startswith("<card") else op.local)
        for op in ops
    ]
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        api.create_commit(repo_id=repo_id, repo_type=repo_type, operations=operations, revision=revision, commit_message=message)
    except Exception as e:  # noqa: BLE001 - network/auth errors become one line; they never hold the token
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StyleSwapError(f"push to {repo_id} failed: {e.__class__.__name__}: {first}") from None
