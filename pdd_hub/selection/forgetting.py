"""Forgetting (Toneva et al. 2019): the examples most often forgotten while networks train on the
real data (highest forgetting score first; ties in random order).

Examples that some scoring run never classified correctly come last, fewest runs learning them last:
their score (a run's maximum, see :mod:`pdd_hub.scoring`) ranks them hardest, but they are mostly
outliers and mislabelled images, and a small selection made of them alone trains a network to chance
accuracy (docs/RESULTS.md, issue 8). Among the examples every run learned, the most forgotten first.
"""

from __future__ import annotations

import torch

from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector


@register_selection("forgetting")
class Forgetting(Selector):
    """The examples with the highest forgetting scores among those the scoring runs learned."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        return learned_first_by_score(pool, generator, most_forgotten_first=True)[:count]


def learned_first_by_score(
    pool: ClassPool, generator: torch.Generator, most_forgotten_first: bool
) -> torch.Tensor:
    """Positions of all of ``pool``: by the share of scoring runs that learned them (all first), and
    within each share by forgetting score; ties in random order (``generator``)."""
    shuffled = torch.randperm(len(pool), generator=generator)
    scores = pool.scores.cpu().double()[shuffled]
    learned = pool.learned.cpu().double()[shuffled]
    by_score = torch.argsort(scores, descending=most_forgotten_first, stable=True)
    by_learned = torch.argsort(learned[by_score], descending=True, stable=True)
    return shuffled[by_score[by_learned]]
