"""Moved to `styleswap.contract.seeds`: the seed function is part of the contract both halves share."""

from styleswap.contract.seeds import derive_seed

__all__ = ["derive_seed"]
