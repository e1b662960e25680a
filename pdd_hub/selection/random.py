"""Random: a uniformly random ranking of each class's candidates (seeded)."""

from __future__ import annotations

import torch
from einops import rearrange

from pdd_hub.data.images import ImageSet
from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector


@register_selection("random")
class RandomSelection(Selector):
    """Random real images, disjoint across stages."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(pool), generator=generator)[:count]


def random_stage_indices(data: ImageSet, num_stages: int, ipc: int, seed: int) -> list[torch.Tensor]:
    """``num_stages`` disjoint sets of ``ipc`` random examples of every class (seeded), each grouped
    by class; no image appears in two stages."""
    picked = data.sample_per_class(num_stages * ipc, torch.Generator().manual_seed(seed))
    per_stage = rearrange(picked, "(c s i) -> s (c i)", c=data.num_classes, s=num_stages, i=ipc)
    return list(per_stage)
