"""The trainer's view of the segmentation networks: they live in `styleswap.networks` (the shared
floor, so the generator's content check loads them without importing the trainer); this module
re-exports them and adds what only training needs (saving, the PatchNCE layer choice).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from styleswap.errors import StyleSwapError
from styleswap.networks import (  # noqa: F401  (re-exported: every existing import keeps working)
    ARCHS,
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    TRAINING_PREFIX,
    WEIGHTS_NAME,
    SegNet,
    build_model,
    default_config,
    load_model,
    normalize_input,
    read_config,
    resolve_model_dir,
    zscore_inverse,
)


def parse_layers(spec: str | Sequence[int] | None, num_levels: int) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``None``/``"all"`` -> every encoder level."""
    if spec is None or spec == "all" or spec == "":
        return list(range(num_levels))
    layers = [int(x) for x in spec.split(",")] if isinstance(spec, str) else [int(x) for x in spec]
    bad = [x for x in layers if not 0 <= x < num_levels]
    if bad:
        raise StyleSwapError(f"--nce-layers {bad} out of range: the encoder has depths 0..{num_levels - 1}")
    return layers


def save_model(model: SegNet, folder: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Weights (safetensors) + ``config.json`` describing the network."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    cfg = dict(model.config)
    cfg.update(extra_config or {})
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    return folder
