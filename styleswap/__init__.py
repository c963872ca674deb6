"""StyleSwap: single-source cross-modality segmentation via causal style intervention.

Two halves joined by one contract (see ``styleswap.contract``):
``styleswap.generator`` (the ``augment`` program) and ``styleswap.trainer`` (``train``).
"""

__version__ = "0.1.0"
