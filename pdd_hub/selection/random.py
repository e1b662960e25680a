"""Random real images per class, disjoint across stages."""

from __future__ import annotations

import torch
from einops import rearrange

from pdd_hub.data.images import ImageSet


def random_stage_indices(data: ImageSet, num_stages: int, ipc: int, seed: int) -> list[torch.Tensor]:
    """``num_stages`` disjoint sets of ``ipc`` random examples of every class (seeded), each grouped
    by class; no image appears in two stages."""
    picked = data.sample_per_class(num_stages * ipc, torch.Generator().manual_seed(seed))
    per_stage = rearrange(picked, "(c s i) -> s (c i)", c=data.num_classes, s=num_stages, i=ipc)
    return list(per_stage)
