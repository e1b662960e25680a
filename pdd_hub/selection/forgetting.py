"""Forgetting (Toneva et al. 2019): the examples most often forgotten while networks train on the
real data (highest forgetting score first; ties in random order)."""

from __future__ import annotations

import torch

from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector


@register_selection("forgetting")
class Forgetting(Selector):
    """The examples with the highest forgetting scores (Toneva et al. 2019)."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        shuffled = torch.randperm(len(pool), generator=generator)
        scores = pool.scores.cpu()[shuffled]
        return shuffled[torch.argsort(scores, descending=True, stable=True)][:count]
