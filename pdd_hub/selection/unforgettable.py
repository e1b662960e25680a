"""Unforgettable examples (Toneva et al. 2019): the examples least often forgotten while networks
train on the real data (lowest forgetting score first; ties in random order).

The opposite end of :mod:`pdd_hub.selection.forgetting`. As ``init: unforgettable`` it starts a
single-stage distillation from the same easy examples that stage 1 of ``forgetting.mode: band``
starts from, which separates what the bands gain from easy starting images from what they gain from
the stages (the ``alone+init=unforgettable`` rows of benchmarks/ablation.py). Examples that some
scoring run never classified correctly have a low score only because they were never learned, so
they come last, fewest runs learning them last.
"""

from __future__ import annotations

import torch

from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector
from pdd_hub.selection.forgetting import learned_first_by_score


@register_selection("unforgettable")
class Unforgettable(Selector):
    """The examples with the lowest forgetting scores among those the scoring runs learned."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        return learned_first_by_score(pool, generator, most_forgotten_first=False)[:count]
