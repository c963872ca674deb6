"""One `accelerate.Accelerator` per training run, for both halves (segmentation and diffusion).

accelerate keeps the first mixed precision of a process and refuses another ("restart your
runtime"). A single process that trains with another ``--mixed-precision`` than before (stages
called from Python, a test suite that runs both halves) resets that state first, as accelerate's
and diffusers' own tests do; the ranks of ``accelerate launch`` keep theirs, since they all run
alike. Neutral like `contract` and `safe_state`: neither half imports the other for it.
"""

from __future__ import annotations


def make_accelerator(mixed_precision: str, cpu: bool):
    """An Accelerator for ``mixed_precision`` ("no", "fp16", "bf16"), on the CPU if ``cpu``."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
