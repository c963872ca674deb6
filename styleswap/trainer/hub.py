"""Hub dataset ids as ``--data``: ``hf://USER/NAME`` (or ``hf://datasets/USER/NAME``, ``...@REVISION``).

The repo is downloaded once into the Hugging Face cache with `huggingface_hub.snapshot_download`
and then read like any local folder. The token, when one is needed (private repos), is found by
huggingface_hub itself (``HF_TOKEN`` or ``hf auth login``); it never passes through here.
"""

from __future__ import annotations

import re
from pathlib import Path

from styleswap.errors import StyleSwapError

# "hf:/" too: typer turns the option into a Path, which collapses "//"
_HF_RE = re.compile(r"^hf:/{1,2}(?:datasets/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/@]+))?/?$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_spec(spec: str | Path) -> bool:
    return str(spec).startswith("hf:/")


def resolve_dataset(spec: str | Path) -> Path:
    """A local folder for ``spec``: the path itself, or the downloaded snapshot of a Hub dataset.

    Raises:
        StyleSwapError: a malformed ``hf://`` id, or a download that fails (one line).
    """
    if not is_hub_spec(spec):
        return Path(spec)
    m = _HF_RE.match(str(spec))
    if not m or not all(_PART.match(p) for p in m["repo"].split("/")):
        raise StyleSwapError(f"--data {spec}: a Hub dataset is hf://NAMESPACE/NAME (optionally @REVISION)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(m["repo"], repo_type="dataset", revision=m["rev"])
    except Exception as e:  # noqa: BLE001 - offline, not found, gated: one line, no credentials in it
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StyleSwapError(f"--data {spec}: download failed ({e.__class__.__name__}: {first})") from None
    return Path(local)
