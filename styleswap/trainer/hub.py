"""Hub ids as ``--data`` (``hf://USER/NAME``, ``hf://datasets/USER/NAME``, ``...@REVISION``) and as
``--model`` (``hf://USER/NAME[@REVISION]``, a model repo written by ``train push``).

The repo is downloaded once into the Hugging Face cache with `huggingface_hub.snapshot_download`
and then read like any local folder. The token, when one is needed (private repos), is found by
huggingface_hub itself (``HF_TOKEN`` or ``hf auth login``); it never passes through here.
"""

from __future__ import annotations

import re
from pathlib import Path

from styleswap.errors import StyleSwapError

# "hf:/" too: typer turns the option into a Path, which collapses "//"
_HF_RE = re.compile(r"^hf:/{1,2}(?:(?P<kind>datasets|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/@]+))?/?$")
#: What a model download fetches: the artifact's files only, never pickle weights.
MODEL_FILES = ["config.json", "model.safetensors", "README.md"]
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_spec(spec: str | Path) -> bool:
    return str(spec).startswith("hf:/")


def _download(spec: str | Path, flag: str, repo_type: str, allow_patterns: list[str] | None = None) -> Path:
    m = _HF_RE.match(str(spec))
    kind = {"dataset": "datasets", "model": "models"}[repo_type]
    if not m or (m["kind"] and m["kind"] != kind) or not all(_PART.match(p) for p in m["repo"].split("/")):
        raise StyleSwapError(f"{flag} {spec}: a Hub {repo_type} is hf://NAMESPACE/NAME (optionally @REVISION)")
    from huggingface_hub import snapshot_download

    try:
        only = {"allow_patterns": allow_patterns} if allow_patterns else {}
        local = snapshot_download(m["repo"], repo_type=repo_type, revision=m["rev"], **only)
    except Exception as e:  # noqa: BLE001 - offline, not found, gated: one line, no credentials in it
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StyleSwapError(f"{flag} {spec}: download failed ({e.__class__.__name__}: {first})") from None
    return Path(local)


def resolve_dataset(spec: str | Path) -> Path:
    """A local folder for ``spec``: the path itself, or the downloaded snapshot of a Hub dataset.

    Raises:
        StyleSwapError: a malformed ``hf://`` id, or a download that fails (one line).
    """
    if not is_hub_spec(spec):
        return Path(spec)
    return _download(spec, "--data", "dataset")


def resolve_model_repo(spec: str | Path) -> Path:
    """A local folder for ``spec``: the path itself, or the snapshot of a Hub model repo (its
    config, safetensors weights and card only; in the HF cache, so a second run works offline)."""
    if not is_hub_spec(spec):
        return Path(spec)
    return _download(spec, "--model", "model", MODEL_FILES)
