"""How a method draws its real batches: uniformly, or by importance (Tukan, Maalouf, Osadchy 2023).

With ``real_sampling: importance`` an example i of the stage's pool is drawn with probability

    p_i = (1 - floor) * loss_i / sum_j loss_j + floor / n

where ``loss_i`` is its cross-entropy under the method's current network, computed over the whole
pool in batches (no gradient) every ``importance.refresh_every`` draws; ``floor`` keeps every
example drawable. Within a class the probabilities are renormalised (q_i).

``importance.weighting: unbiased`` (the default) draws with replacement and weights each drawn
example by ``1 / (n q_i)`` (n: the candidates, a class's or the pool's), so that a weighted batch
mean, ``(1/B) sum_b w_b f(x_b)``, is an unbiased estimate of the plain mean over the candidates: DM's
class-mean embedding and the gradient-matching methods' real loss keep their meaning and only their
variance changes. ``weighting: none`` draws without replacement and without weights: the target then
moves towards high-loss examples (docs/SELECTION.md). Where each method draws: DC, DSA and IDC at
every comparison (the per-class real batches, and IDC's real-data training of its network), DM at
every iteration, MTT in its experts' training (:mod:`pdd_hub.methods.experts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdd_hub.config import ImportanceConfig
from pdd_hub.data.images import ImageSet


@torch.no_grad()
def example_losses(
    network: nn.Module, images, labels: torch.Tensor, indices: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Cross-entropy of the examples ``indices`` under ``network`` (eval mode, ``batch_size`` at a
    time: ``images`` may preprocess on indexing), on the CPU."""
    was_training = network.training
    network.eval()
    losses = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        losses.append(F.cross_entropy(network(images[idx]), labels[idx], reduction="none").float().cpu())
    network.train(was_training)
    return torch.cat(losses)


def importance_probabilities(losses: torch.Tensor, floor: float) -> torch.Tensor:
    """``(1 - floor) * loss / sum(loss) + floor / n``: sums to one, never zero (for ``floor > 0``)."""
    losses = losses.double().clamp_min(0)
    total = losses.sum()
    share = losses / total if total > 0 else torch.full_like(losses, 1.0 / len(losses))
    return (1 - floor) * share + floor / len(losses)


@dataclass
class RealBatch:
    """Indices of drawn real examples (into the training set) and their importance weights
    (``None``: equal weights, a plain mean)."""

    indices: torch.Tensor
    weights: torch.Tensor | None = None

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The (weighted) mean over the batch of per-example ``values`` ``[B, ...]``."""
        if self.weights is None:
            return values.mean(dim=0)
        weights = self.weights.to(values.device, values.dtype).view(-1, *[1] * (values.ndim - 1))
        return (weights * values).mean(dim=0)


class RealSampler:
    """Indices of real examples from a stage's pool, uniformly or by importance."""

    def __init__(self, real: ImageSet, pool: torch.Tensor, mode: str, config: ImportanceConfig) -> None:
        self.real, self.mode, self.config = real, mode, config
        self.pool = pool.cpu()
        labels = real.labels.cpu()[self.pool]
        self.of_class = [torch.nonzero(labels == c).flatten() for c in range(real.num_classes)]  # into pool
        self.probabilities: torch.Tensor | None = None  # over the pool
        self.draws = 0

    def step(self, network: nn.Module) -> None:
        """One draw of the method: every ``refresh_every``-th, the losses under ``network`` renew."""
        if self.mode == "importance" and self.draws % self.config.refresh_every == 0:
            idx = self.pool.to(self.real.images.device)
            losses = example_losses(network, self.real.images, self.real.labels, idx)
            self.probabilities = importance_probabilities(losses, self.config.floor)
        self.draws += 1

    def class_batch(self, c: int, size: int, generator: torch.Generator) -> RealBatch:
        """``size`` examples of class ``c`` (all, if it has fewer and the draw is without weights)."""
        return self._draw(self.of_class[c], size, generator)

    def batch(self, size: int, generator: torch.Generator) -> RealBatch:
        """``size`` examples of any class."""
        return self._draw(torch.arange(len(self.pool)), size, generator)

    def _draw(self, candidates: torch.Tensor, size: int, generator: torch.Generator) -> RealBatch:
        if self.mode == "uniform" or self.probabilities is None:
            picked = torch.randperm(len(candidates), generator=generator)[: min(size, len(candidates))]
            return RealBatch(self.pool[candidates[picked]])
        q = self.probabilities[candidates]
        q = q / q.sum()
        if self.config.weighting == "none":
            picked = torch.multinomial(q, min(size, len(candidates)), replacement=False, generator=generator)
            return RealBatch(self.pool[candidates[picked]])
        picked = torch.multinomial(q, size, replacement=True, generator=generator)
        weights = (1.0 / (len(candidates) * q[picked])).float()
        return RealBatch(self.pool[candidates[picked]], weights)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"draws": torch.tensor(self.draws)}
        if self.probabilities is not None:
            state["probabilities"] = self.probabilities
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.draws = int(state["draws"])
        self.probabilities = state.get("probabilities")
