"""The seed of every rendered copy: a function of what is rendered, never of who renders it or when."""

from __future__ import annotations

import hashlib


def derive_seed(build_seed: int, sample_id: str, copy_index: int) -> int:
    """The seed of copy ``copy_index`` of ``sample_id`` in a build seeded with ``build_seed``.

    A hash (not ``hash()``, which is salted per process) of the three values, folded to a
    non-negative int63 so it fits the contract's int64 column and ``torch.Generator.manual_seed``.
    Any number of workers, any batch size, and a resumed build give the same seed per copy.
    """
    key = f"{int(build_seed)}\x00{sample_id}\x00{int(copy_index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
