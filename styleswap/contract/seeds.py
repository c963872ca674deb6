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


def retry_seed(build_seed: int, sample_id: str, copy_index: int, attempt: int) -> int:
    """The seed of try ``attempt`` (0-based) of a copy that the content check re-renders.

    Try 0 is the copy's own seed, `derive_seed` (so a copy that passes, or a build without the
    check, has the bytes it always had). Try ``t >= 1`` hashes the same values and ``t`` the same
    way, so the sequence is a function of (build seed, sample id, copy index) alone::

        t = 0:   derive_seed(build_seed, sample_id, copy_index)
        t >= 1:  blake2b-64("<build_seed>\\0<sample_id>\\0<copy_index>\\0retry\\0<t>") & (2**63 - 1)
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if attempt == 0:
        return derive_seed(build_seed, sample_id, copy_index)
    key = f"{int(build_seed)}\x00{sample_id}\x00{int(copy_index)}\x00retry\x00{int(attempt)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
