"""The interface of a subset-selection method, and the staged selection every method shares.

A selector ranks the candidates of one class, best first; a staged selection of ``P`` stages with
``ipc`` images per class gives stage k the k-th block of ``ipc`` of each class's ranking. The same
selectors choose the real images a distillation stage starts from (``init: herding``, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pdd_hub.errors import DatasetFormatError


@dataclass
class ClassPool:
    """The candidates of one class: indices into the training set and, computed on first use, their
    features (``[n, d]``, from a network trained on the real data) and forgetting scores (``[n]``)."""

    label: int
    indices: torch.Tensor
    features_of: Callable[[torch.Tensor], torch.Tensor]
    scores_of: Callable[[torch.Tensor], torch.Tensor]
    # share of the scoring runs that ever classified each candidate correctly ``[n]``
    learned_of: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def features(self) -> torch.Tensor:
        return self.features_of(self.indices)

    @property
    def scores(self) -> torch.Tensor:
        return self.scores_of(self.indices)

    @property
    def learned(self) -> torch.Tensor:
        if self.learned_of is None:
            return torch.ones(len(self.indices))
        return self.learned_of(self.indices)


class Selector(ABC):
    """A subset-selection method, registered with ``@register_selection("name", NameConfig)``."""

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @abstractmethod
    def rank(self, pool: ClassPool, count: int, generator: torch.Generator) -> torch.Tensor:
        """Positions (into ``pool.indices``) of the ``count`` chosen candidates, best first."""


def selection_indices(
    selector: Selector,
    pools: list[ClassPool],
    count: int,
    generators: list[torch.Generator],
) -> list[torch.Tensor]:
    """``count`` chosen training-set indices of every class (ranked best first)."""
    chosen = []
    for pool, generator in zip(pools, generators, strict=True):
        if count > len(pool):
            raise DatasetFormatError(
                f"cannot take {count} images per class: class {pool.label} has only {len(pool)} candidates "
                "(its examples in the pool this stage selects from)"
            )
        positions = selector.rank(pool, count, generator)
        chosen.append(pool.indices[positions.cpu()])
    return chosen


def staged(chosen: list[torch.Tensor], num_stages: int, ipc: int) -> list[torch.Tensor]:
    """Stage k gets the k-th block of ``ipc`` of each class's ranking, grouped by class."""
    return [torch.cat([c[k * ipc : (k + 1) * ipc] for c in chosen]) for k in range(num_stages)]
