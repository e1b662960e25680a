"""What the gradient-matching methods (DC, DSA, IDC) share: gradients of a network on a batch, and
the distances between real and synthetic gradients.

Distances (summed over the matched parameter tensors):

* ``dc``: DC's layer-wise distance (Zhao et al. 2021, "ours" in the official code): each tensor is
  viewed as rows, one per output unit (conv ``[out, in*kh*kw]``, linear ``[out, in]``), and
  ``sum over rows of 1 - cos(g_real_row, g_syn_row)`` (with 1e-6 added to the norms' product);
  1-D tensors (biases, norm weights) count 0.
* ``mse``: ``sum((g_real - g_syn)**2)``, IDC's choice on CIFAR; ``l1``: ``sum(|g_real - g_syn|)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdd_hub.augment import DSA
from pdd_hub.methods.sampling import RealSampler

METRICS = ("dc", "mse", "l1")


def tensor_distance(real: torch.Tensor, syn: torch.Tensor, metric: str) -> torch.Tensor:
    """The distance between one parameter tensor's real and synthetic gradients."""
    if metric == "mse":
        return (real - syn).pow(2).sum()
    if metric == "l1":
        return (real - syn).abs().sum()
    if metric != "dc":
        raise ValueError(f"unknown gradient distance {metric!r}; use one of {list(METRICS)}")
    if real.ndim == 1:
        return real.new_zeros(())
    rows_real, rows_syn = real.reshape(real.shape[0], -1), syn.reshape(syn.shape[0], -1)
    dot = (rows_real * rows_syn).sum(dim=1)
    norms = rows_real.norm(dim=1) * rows_syn.norm(dim=1)
    return (1 - dot / (norms + 1e-6)).sum()


def gradient_distance(real: list[torch.Tensor], syn: list[torch.Tensor], metric: str) -> torch.Tensor:
    """Sum of :func:`tensor_distance` over the matched tensors."""
    return sum((tensor_distance(r, s, metric) for r, s in zip(real, syn, strict=True)), start=torch.zeros(()))


def matched_parameters(network: nn.Module, layers: str) -> list[nn.Parameter]:
    """The parameters whose gradients are matched: ``all``, or ``conv`` (weights of 3-D+ tensors only,
    IDC's default: biases, norm parameters and the classifier are left out)."""
    if layers == "all":
        return list(network.parameters())
    if layers == "conv":
        return [p for p in network.parameters() if p.ndim >= 3]
    raise ValueError(f"unknown layer selection {layers!r}; use 'all' or 'conv'")


def batch_gradients(
    network: nn.Module,
    params: list[nn.Parameter],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    create_graph: bool,
    weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Gradients of the (``weights``-weighted) mean cross-entropy of ``network`` on a batch w.r.t.
    ``params``; with ``create_graph`` they stay differentiable w.r.t. the images (the synthetic side)."""
    if weights is None:
        loss = F.cross_entropy(network(images), labels)
    else:
        per_example = F.cross_entropy(network(images), labels, reduction="none")
        loss = (weights.to(per_example.device, per_example.dtype) * per_example).mean()
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]


def class_gradient_distance(
    network: nn.Module,
    params: list[nn.Parameter],
    real: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    syn: tuple[torch.Tensor, torch.Tensor],
    metric: str,
    augment: DSA | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """The distance between ``network``'s gradients on a real batch (images, labels, importance
    weights or ``None``) and a synthetic one (images, labels) of one class, both augmented by one
    shared draw (siamese augmentation)."""
    (x_real, y_real, w_real), (x_syn, y_syn) = real, syn
    if augment is not None:
        sample = augment.sample(1, tuple(x_real.shape[-2:]), generator, shared=True)
        x_real, x_syn = augment.apply(x_real, sample), augment.apply(x_syn, sample)
    g_real = batch_gradients(network, params, x_real, y_real, create_graph=False, weights=w_real)
    g_syn = batch_gradients(network, params, x_syn, y_syn, create_graph=True)
    return gradient_distance(g_real, g_syn, metric)


@dataclass(frozen=True)
class GradientMatching:
    """What a gradient-matching loss compares, class by class: the gradients of the ``layers``
    (:func:`matched_parameters`) on ``batch_real`` real images and on the synthetic images (at most
    ``max_syn`` of them, drawn at random; ``None``: all), by the distance ``metric``."""

    layers: str
    batch_real: int
    metric: str
    max_syn: int | None = None


def classwise_matching_loss(
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sampler: RealSampler,
    matching: GradientMatching,
    *,
    augment: DSA | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sum over classes of :func:`class_gradient_distance` between real images of the class drawn by
    ``sampler`` and the synthetic images of the class, as ``matching`` says; the sampler takes one
    step under ``network`` first."""
    real = sampler.real
    params = matched_parameters(network, matching.layers)
    sampler.step(network)
    total = images.new_zeros(())
    for c in range(real.num_classes):
        batch = sampler.class_batch(c, matching.batch_real, generator)
        idx = batch.indices.to(real.images.device)
        of_class = torch.nonzero(labels == c).flatten()
        if matching.max_syn is not None:
            keep = torch.randperm(len(of_class), generator=generator)[: matching.max_syn]
            of_class = of_class[keep.to(of_class.device)]
        real_batch = (real.images[idx], real.labels[idx], batch.weights)
        syn_batch = (images[of_class], labels[of_class])
        total = total + class_gradient_distance(
            network, params, real_batch, syn_batch, matching.metric, augment, generator
        )
    return total
