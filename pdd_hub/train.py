"""Training any model on a sequence of synthetic stages, the way PDD prescribes, and evaluating it.

``progressive``: stage_1, then stage_1 ∪ stage_2, ... (the PDD protocol); ``sequential``: each stage
alone, in order; ``union``: all stages at once. Each stage trains with its own learned LR and epochs,
SGD (momentum 0.9, weight decay 5e-4), LR x 0.1 after half of the stage, DSA on every minibatch.
One optimiser lives across stages, so its momentum carries over, as in the official evaluation.
The synthetic set is tiny, so it stays on the device: minibatches are index slices, no DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdd_hub.augment import DSA
from pdd_hub.hub import PDDDataset

MODES = ("progressive", "sequential", "union")


@dataclass
class StagePlan:
    """One phase of training: these images, this LR, this many epochs."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    epochs: int
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4


def plan_stages(
    pdd: PDDDataset, mode: str = "progressive", epochs_per_stage: int | None = None
) -> list[StagePlan]:
    """The training phases for ``mode`` from a loaded export (``epochs_per_stage`` overrides the
    schedule's epochs, e.g. for a quick look). ``union`` trains once on everything with the last
    stage's LR and epochs, which is what the last progressive phase sees too."""
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; use one of {list(MODES)}")
    plans = []
    specs = pdd.schedule.stages
    if mode == "union":
        images, labels = pdd.union(len(specs))
        indices = [len(specs)]
    else:
        indices = list(range(1, len(specs) + 1))
    for k in indices:
        spec = specs[k - 1]
        if mode == "progressive":
            images, labels = pdd.union(k)
            name = specs[0].split if k == 1 else f"{specs[0].split}..{k}"
        elif mode == "sequential":
            images, labels = pdd.stages[k - 1].images, pdd.stages[k - 1].labels
            name = spec.split
        else:
            name = "union"
        plans.append(
            StagePlan(
                name=name,
                images=images,
                labels=labels,
                lr=spec.lr,
                epochs=epochs_per_stage if epochs_per_stage is not None else spec.epochs,
                batch_size=spec.batch_size,
                momentum=spec.momentum,
                weight_decay=spec.weight_decay,
            )
        )
    return plans


def train_stages(
    model: nn.Module,
    plans: list[StagePlan],
    *,
    augment: DSA | None,
    generator: torch.Generator,
    after_stage: Callable[[int, nn.Module], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = False,
    description: str = "train",
) -> torch.optim.Optimizer:
    """Train ``model`` (already on its device) through ``plans`` with one SGD optimiser whose state
    carries across stages; ``after_stage(k, model)`` runs after each. Returns the optimiser so a
    caller can continue training with its momentum (the transition does)."""
    device = next(model.parameters()).device
    if optimizer is None:
        first = plans[0]
        optimizer = torch.optim.SGD(
            model.parameters(), lr=first.lr, momentum=first.momentum, weight_decay=first.weight_decay
        )
    total_epochs = sum(p.epochs for p in plans)
    bar = tqdm(total=total_epochs, desc=description, disable=not progress, leave=False)
    for k, plan in enumerate(plans):
        images, labels = plan.images.to(device), plan.labels.to(device)
        model.train()
        for epoch in range(plan.epochs):
            lr = plan.lr if epoch < plan.epochs // 2 else plan.lr * 0.1
            for group in optimizer.param_groups:
                group["lr"] = lr
                group["momentum"] = plan.momentum
                group["weight_decay"] = plan.weight_decay
            train_epoch(model, optimizer, images, labels, plan.batch_size, augment, generator)
            bar.update(1)
        if after_stage is not None:
            after_stage(k, model)
    bar.close()
    return optimizer


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    augment: DSA | None,
    generator: torch.Generator,
) -> float:
    """One pass over ``images`` in shuffled minibatches; returns the mean loss."""
    order = torch.randperm(len(images), generator=generator).to(images.device)
    total = 0.0
    for start in range(0, len(images), batch_size):
        idx = order[start : start + batch_size]
        x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(images)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` on preprocessed ``images`` (moved to the model's device in chunks)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        correct += (model(x).argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return correct / max(1, len(images))
