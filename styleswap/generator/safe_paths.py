"""Where `augment` may write: the rules that keep a build inside the folders it was given.

1. A recipe (a YAML file that may come from someone else, with the repository it came in) writes
   only inside the folder the command runs in, which is what its relative paths are relative to:
   its write paths, ``out`` and ``cache_dir``, must be relative and must stay inside that folder
   once ``..`` and symbolic links are resolved. Anything else is refused. The same path given on
   the command line (``--out``, ``--cache-dir``) is the user's own choice and is allowed. Read
   paths (``source``, model folders, prompt sets) are not restricted: reading is not the risk.
2. The output folder must not be a symbolic link, and neither may what a build writes, replaces or
   deletes in it: ``data/``, ``.partial/`` and their entries, ``manifest.json`` (and its ``.tmp``),
   ``README.md``, ``preview.png``, the lock ``.lock``. Writing or deleting through a link would
   touch files outside the folder the user named (``--overwrite`` deletes ``data/``). Links
   *above* the output folder (``out/`` -> a bigger disk) are the user's setup and are fine.
3. Shard paths in a manifest must stay inside the dataset folder (`contract.shard_file`), and the
   files a dataset.json lists must stay inside its folder (`sources.layouts`).

Every refusal is a one-line `StyleSwapError` naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.safe_state import LOCK_NAME

#: Recipe keys that name a folder the build writes into, and the flag that overrides each.
WRITE_KEYS = {"out": "--out", "cache_dir": "--cache-dir"}
#: What a build writes, replaces or deletes at the top of its output folder.
WRITTEN = (contract.DATA_DIR, contract.STAGING_DIR, contract.MANIFEST_NAME, contract.MANIFEST_NAME + ".tmp",
           contract.CARD_NAME, "preview.png", LOCK_NAME)


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def check_output_folder(out: str | Path) -> None:
    """Refuse an output folder that is a symbolic link or holds one where the build writes (rule 2)."""
    out = Path(out)
    if out.is_symlink():
        raise StyleSwapError(
            f"{out}: the output folder is a symbolic link (to {_link(out)}); refusing to write through it: "
            "pass the folder it points to as --out"
        )
    if not out.is_dir():
        return
    for name in WRITTEN:
        path = out / name
        if path.is_symlink():
            raise StyleSwapError(
                f"{path}: a symbolic link (to {_link(path)}) in the output folder; refusing to write or delete "
                "through it: remove the link"
            )
    for sub in (contract.DATA_DIR, contract.STAGING_DIR):
        folder = out / sub
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_symlink():
                    raise StyleSwapError(
                        f"{path}: a symbolic link (to {_link(path)}) in the output folder; refusing to write or "
                        "delete through it: remove the link"
                    )


def check_recipe_paths(recipe: dict[str, Any], recipe_path: str | Path, overrides: dict[str, Any] | None = None,
                       cwd: str | Path | None = None) -> None:
    """Refuse a recipe whose write paths lead outside the working folder (rule 1); keys that a
    command-line flag overrides are not checked (the recipe's value is not used)."""
    overrides = overrides or {}
    base = Path(cwd or os.getcwd())
    for key, flag in WRITE_KEYS.items():
        if key not in recipe or recipe[key] is None or overrides.get(key) is not None:
            continue
        value = recipe[key]
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise StyleSwapError(f"{recipe_path}: {key} must be a folder path, got {value!r}")
        path = Path(value)
        if path.is_absolute() or str(value).startswith("~"):
            raise StyleSwapError(
                f"{recipe_path}: {key} {str(value)!r} is an absolute path; a recipe writes only inside the folder "
                f"it is run from ({base}): pass {flag} {value} on the command line to write there"
            )
        target = (base / path).resolve()
        if not target.is_relative_to(base.resolve()):
            how = "climbs out with '..'" if ".." in path.parts else "leads through a symbolic link"
            raise StyleSwapError(
                f"{recipe_path}: {key} {str(value)!r} {how} to {target}, outside the folder it is run from "
                f"({base}); pass {flag} on the command line to write there"
            )
