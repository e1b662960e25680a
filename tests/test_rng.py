"""Named random streams: reproducible, independent of creation order, distinct per name."""

from __future__ import annotations

import torch

from pdd_hub.rng import stream, stream_seed


def test_a_stream_is_fixed_by_its_seed_and_name_only():
    first = torch.rand(5, generator=stream(0, "transition", 2, 1))
    torch.rand(100, generator=stream(0, "validation", 1, 0, 0))  # other streams in between change nothing
    assert torch.equal(first, torch.rand(5, generator=stream(0, "transition", 2, 1)))
    names = [("transition", 2, 1), ("transition", 2, 2), ("transition", 3, 1), ("init", 2)]
    seeds = {stream_seed(0, *name) for name in names}
    assert len(seeds) == 4 and stream_seed(1, "init", 2) != stream_seed(0, "init", 2)
    assert all(0 <= s < 2**63 for s in seeds)
