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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.contract import Manifest
from styleswap.errors import StyleSwapError, VerificationError
from styleswap.generator import card, dataset
from styleswap.hub_publish import CARD_SOURCE as _CARD, PushOp, check_license_id, check_repo_id, commit, file_op, format_ops

PREVIEW_NAME = "preview.png"
CARD_SOURCE = _CARD.format(program="augment")

__all__ = ["PushOp", "PushPlan", "check_repo_id", "check_license", "format_ops", "plan", "prepare_push", "push_dataset"]


def check_license(license: str | None, manifest: Manifest) -> str:
    return check_license_id(license or manifest.license, " or record one at build time (augment build --license)")


def plan(folder: Path, manifest: Manifest, card_text: str) -> list[PushOp]:
    """The commit's files, in upload order (shards first: the card and manifest land with them)."""
    folder = Path(folder)
    ops = [file_op(folder, manifest.shard_path(folder, entry), entry.path) for entry in manifest.shards]
    if (folder / PREVIEW_NAME).exists():
        ops.append(file_op(folder, folder / PREVIEW_NAME, PREVIEW_NAME))
    ops.append(file_op(folder, folder / contract.MANIFEST_NAME, contract.MANIFEST_NAME))
    ops.append(PushOp(CARD_SOURCE, contract.CARD_NAME, len(card_text.encode())))
    return ops


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

    commit(pp.ops, pp.card, repo_id, repo_type="dataset", private=private, revision=revision, api=api,
           message=message or f"Upload {folder.name} with augment push")
    # the folder's card now says what the repo says
    card.write_card(folder, pp.manifest, license=pp.license, repo_id=repo_id)
    return pp.ops

