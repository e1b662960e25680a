"""Named random streams: every random draw of a run comes from a generator named by what it is for.

    stream(seed, "transition", stage, i)   # network i of the transition into ``stage``

A stream's seed is a hash of the run seed and the name, so streams are independent of each other and
of the order in which they are created, a resumed run draws exactly what an uninterrupted one drew,
and a test can rebuild any of them. Everything runs on CPU generators, so results do not depend on
the device that consumes the numbers.
"""

from __future__ import annotations

import hashlib

import torch

Name = str | int


def stream_seed(seed: int, *name: Name) -> int:
    """The 63-bit seed of stream ``name`` of a run seeded with ``seed``."""
    key = "/".join(str(part) for part in (seed, *name)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def stream(seed: int, *name: Name) -> torch.Generator:
    """A CPU generator for stream ``name`` (e.g. ``("transition", 2, 0)``) of a run seeded with ``seed``."""
    return torch.Generator().manual_seed(stream_seed(seed, *name))
