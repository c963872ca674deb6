"""Publish a dataset folder to the Hugging Face Hub (`augment push`).

The folder is already Hub-native (``data/<split>-00000-of-000NN.parquet``); push adds a freshly
rendered card (license, repo id) and sends, in one commit, exactly: the shards listed in the
manifest, ``README.md``, ``manifest.json`` and ``preview.png`` if present. Nothing else in the
folder (staging leftovers, stray files) is sent.

Everything that can refuse is checked before the first network call. The token is never read by
this module: huggingface_hub finds it (``HF_TOKEN`` or ``hf auth login``) by itself, so it cannot be
printed, logged or written by us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.contract import Manifest
from styleswap.errors import StyleSwapError, VerificationError
from styleswap.generator import card, dataset

# Hub rules: namespace/name, letters, digits, '-', '_', '.', no '--' or '..', at most 96 chars each.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID_RE = re.compile(rf"^{_PART}/{_PART}$")
PREVIEW_NAME = "preview.png"
CARD_SOURCE = "<card rendered by augment push>"


@dataclass(frozen=True)
class PushOp:
    """One file of the commit: where it comes from, where it goes, how big it is."""

    local: str  # a path, or CARD_SOURCE for the rendered card
    path_in_repo: str
    size: int


def check_repo_id(repo_id: str) -> str:
    if not repo_id or not REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise StyleSwapError(f"--repo-id must be NAMESPACE/NAME (e.g. alice/abdomen-gin), got {repo_id!r}")
    return repo_id


def check_license(license: str | None, manifest: Manifest) -> str:
    lic = license or manifest.license
    if not lic:
        raise StyleSwapError(
            "no license: pass --license ID (e.g. cc-by-4.0, or 'other') or record one at build time "
            "(augment build --license); medical data licenses matter"
        )
    if not card.LICENSE_RE.match(lic):
        raise StyleSwapError(f"--license must be a lowercase Hub license id such as cc-by-4.0 or other, got {lic!r}")
    return lic


def _inside(folder: Path, path: Path) -> Path:
    """``path`` resolved, refused if it (or a link) leads outside the folder."""
    target = path.resolve()
    if path.is_symlink() or not target.is_relative_to(folder.resolve()):
        raise StyleSwapError(f"{path}: refusing to upload a file that leads outside {folder}")
    return target


def plan(folder: Path, manifest: Manifest, card_text: str) -> list[PushOp]:
    """The commit's files, in upload order (shards first: the card and manifest land with them)."""
    folder = Path(folder)
    ops = []
    for entry in manifest.shards:
        path = _inside(folder, manifest.shard_path(folder, entry))
        ops.append(PushOp(str(path), entry.path, path.stat().st_size))
    preview = folder / PREVIEW_NAME
    if preview.exists():
        path = _inside(folder, preview)
        ops.append(PushOp(str(path), PREVIEW_NAME, path.stat().st_size))
    mpath = _inside(folder, folder / contract.MANIFEST_NAME)
    ops.append(PushOp(str(mpath), contract.MANIFEST_NAME, mpath.stat().st_size))
    ops.append(PushOp(CARD_SOURCE, contract.CARD_NAME, len(card_text.encode())))
    return ops


def _default_api():
    from huggingface_hub import HfApi

    return HfApi()  # token: from the environment or `hf auth login`, found by huggingface_hub


@dataclass(frozen=True)
class PushPlan:
    ops: list[PushOp]
    card: str
    license: str
    manifest: Manifest


def prepare_push(folder: str | Path, repo_id: str, license: str | None = None) -> PushPlan:
    """Every check of a push, and its files and card, with no network and no writes."""
    folder = Path(folder)
    check_repo_id(repo_id)
    manifest = dataset.read_manifest(folder)
    lic = check_license(license, manifest)
    try:
        dataset.verify(folder)  # never publish a folder that does not match its manifest
    except VerificationError as e:
        raise StyleSwapError(f"{folder} fails augment verify ({e}); refusing to push") from None
    text = card.render_card(
        manifest, title=repo_id, license=lic, repo_id=repo_id, has_preview=(folder / PREVIEW_NAME).is_file()
    )
    return PushPlan(plan(folder, manifest, text), text, lic, manifest)


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    license: str | None = None,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    dry_run: bool = False,
    api: Any = None,
) -> list[PushOp]:
    """Verify ``folder`` and publish it as the dataset repo ``repo_id``; return the file operations.

    With ``dry_run`` nothing is sent and nothing is written. Otherwise the card is also written to
    the folder, so that the folder and the repo agree. The whole upload is one commit, and
    re-running after an interruption resumes: the Hub skips files whose content it already holds.

    Raises:
        StyleSwapError: bad repo id, no license, a folder that fails `dataset.verify`, a file that
            leads outside the folder, or a Hub failure (one line, without credentials).
    """
    folder = Path(folder)
    pp = prepare_push(folder, repo_id, license)
    if dry_run:
        return pp.ops

    from huggingface_hub import CommitOperationAdd

    api = api if api is not None else _default_api()
    operations = [
        CommitOperationAdd(path_in_repo=op.path_in_repo,
                           path_or_fileobj=pp.card.encode() if op.local == CARD_SOURCE else op.local)
        for op in pp.ops
    ]
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        api.create_commit(
            repo_id=repo_id, repo_type="dataset", operations=operations, revision=revision,
            commit_message=message or f"Upload {folder.name} with augment push",
        )
    except Exception as e:  # noqa: BLE001 - network/auth errors become one line; they never hold the token
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StyleSwapError(f"push to {repo_id} failed: {e.__class__.__name__}: {first}") from None
    # the folder's card now says what the repo says
    card.write_card(folder, pp.manifest, license=pp.license, repo_id=repo_id)
    return pp.ops


def format_ops(ops: list[PushOp]) -> list[str]:
    return [f"{op.local} -> {op.path_in_repo} ({op.size} bytes)" for op in ops]
