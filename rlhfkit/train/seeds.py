"""The one way a seed is derived from a run's seed and a position (step, batch position, rank...).

Every random draw that must be reproducible on resume, and identical for any number of processes,
takes its seed from `derive_seed(run_seed, *where)`, where `where` names the draw: e.g.
("sample", step, first global position) or ("minibatches", step, rank). A hash, not arithmetic
on the parts, so distinct parts never collide by accident (seed 1 step 0 vs seed 0 step 1).
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *where: int | str) -> int:
    """A seed in [0, 2**31 - 1) determined by `seed` and the parts of `where` (ints or names)."""
    key = ":".join(str(p) for p in (seed, *where)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31 - 1)
