"""K-Center (greedy farthest-point, Sener & Savarese 2018): each next candidate is the one farthest
from all chosen so far, in feature space."""

from __future__ import annotations

import torch

from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector


def kcenter_order(features: torch.Tensor, count: int, first: int) -> torch.Tensor:
    """Positions of ``count`` features in greedy k-center order, starting from ``first``: each next
    one maximises the (squared Euclidean) distance to its nearest chosen one."""
    features = features.float()
    order = [first]
    nearest = (features - features[first]).pow(2).sum(dim=1)
    for _ in range(count - 1):
        best = int(nearest.argmax())
        order.append(best)
        nearest = torch.minimum(nearest, (features - features[best]).pow(2).sum(dim=1))
    return torch.tensor(order, dtype=torch.long)


@register_selection("kcenter")
class KCenter(Selector):
    """K-Center greedy: cover the class in feature space (first center at random)."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        first = int(torch.randint(len(pool), (), generator=generator))
        return kcenter_order(pool.features, count, first)
