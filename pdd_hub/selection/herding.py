"""Herding (Welling 2009), as the dataset-distillation benchmarks use it: greedily add the candidate
that brings the mean feature of the chosen ones closest to the class's mean feature."""

from __future__ import annotations

import torch

from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of ``count`` features in herding order: step t picks ``argmin_i ||mu - (S + f_i) /
    (t + 1)||`` over the candidates left, ``mu`` the mean of all, ``S`` the sum of those chosen."""
    features = features.float()
    target = features.mean(dim=0)
    chosen_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    order = []
    for t in range(count):
        distance = (target - (chosen_sum + features) / (t + 1)).pow(2).sum(dim=1)
        distance[~available] = float("inf")
        best = int(distance.argmin())
        order.append(best)
        chosen_sum += features[best]
        available[best] = False
    return torch.tensor(order, dtype=torch.long)


@register_selection("herding")
class Herding(Selector):
    """Herding: the chosen images' mean feature tracks the class mean (Welling 2009)."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        return herding_order(pool.features, count)
