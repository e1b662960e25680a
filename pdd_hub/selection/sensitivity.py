"""Sensitivity sampling (Tukan, Maalouf, Osadchy 2023, "Dataset Distillation Meets Provable Subset
Selection"): per class, k-means on the features; each example's importance is the sensitivity bound
of the k-means cost,

    s(x) = ||x - c(x)||^2 / cost(cluster of x) + 1 / |cluster of x|,

and examples are sampled with probability s(x) / sum(s), without replacement. Far, lonely examples
(high share of a small cluster's cost) are favoured over the redundant ones of a dense cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from pdd_hub.config import positive
from pdd_hub.errors import DatasetFormatError
from pdd_hub.registry import register_selection
from pdd_hub.selection.base import ClassPool, Selector

logger = logging.getLogger(__name__)


@dataclass
class SensitivityConfig:
    """k-means clusters per class."""

    clusters: int = positive(10)


def sensitivity_probabilities(features: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """Sampling probabilities ``s(x) / sum(s)`` of the examples ``features`` ``[n, d]``."""
    from sklearn.cluster import KMeans

    n = len(features)
    if clusters > n:
        raise DatasetFormatError(
            f"cannot make {clusters} k-means clusters of {n} examples: lower sensitivity.clusters "
            f"(at most the number of examples of the smallest class)"
        )
    points = features.detach().float().cpu().numpy().astype(np.float64)
    kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed % 2**31).fit(points)
    assignment = torch.from_numpy(kmeans.labels_).long()
    squared = torch.from_numpy(((points - kmeans.cluster_centers_[kmeans.labels_]) ** 2).sum(axis=1))
    cost = torch.zeros(clusters, dtype=torch.float64).index_add_(0, assignment, squared)
    size = torch.bincount(assignment, minlength=clusters).double()
    share = torch.where(cost[assignment] > 0, squared / cost[assignment].clamp_min(1e-300), 0.0)
    importance = share + 1.0 / size[assignment]
    return importance / importance.sum()


@register_selection("sensitivity", SensitivityConfig)
class Sensitivity(Selector):
    """Sampling by the sensitivity of the k-means cost (Tukan et al. 2023)."""

    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(2**31 - 1, (), generator=generator))
        clusters = min(self.config.clusters, len(pool))
        if clusters < self.config.clusters:  # e.g. a small forgetting band: fewer clusters, said
            logger.warning(
                "class %d has %d candidates, fewer than sensitivity.clusters = %d: using %d k-means clusters",
                pool.label,
                len(pool),
                self.config.clusters,
                clusters,
            )
        probabilities = sensitivity_probabilities(pool.features, clusters, seed)
        return torch.multinomial(probabilities, count, replacement=False, generator=generator)
