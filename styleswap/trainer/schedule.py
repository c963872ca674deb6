"""The learning rate of each optimizer step: a pure function of the step, so a resumed run needs
no scheduler state. (The intensity augmentations live in `augment`.)"""

from __future__ import annotations

import math

from styleswap.trainer.config import LR_SCHEDULES


def lr_at(step: int, total: int, base: float, schedule: str = "constant", warmup: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``.

    ``constant``: ``base``; ``cosine``: half a cosine from ``base`` to 0; ``poly``: nnU-Net's
    ``base * (1 - t)^0.9``. A linear warm-up over the first ``warmup`` steps comes on top of any.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return base * (1.0 - t) ** 0.9
    return base
