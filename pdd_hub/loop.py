"""The progressive schedule in your own training loop (timm's train script, Lightning, an HF
Trainer, plain PyTorch): :func:`iterate_schedule` yields one :class:`TrainingPhase` per phase
(``stage_1``, then ``stage_1..2``, ...) with its images and labels (a torch dataset, minibatches or a
``DataLoader``), LR and LR schedule, epochs, batch size, optimiser settings and the augmentation the
export's method prescribes. Trained as below, a model sees exactly what ``pdd-hub eval`` trains it
on, in the same order with the same augmentation draws, so it reaches the same accuracy::

    optimizer, generator = None, torch.Generator().manual_seed(seed)
    for phase in pdd_hub.iterate_schedule(pdd):
        optimizer = optimizer or phase.optimizer(model)  # one optimiser: its momentum carries over
        model.train()
        for epoch in range(phase.epochs):
            phase.set_epoch(optimizer, epoch)  # the LR of this epoch, restarted every phase
            for x, y in phase.batches(generator):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pdd_hub.augment import DSA, CutMix
from pdd_hub.hub import PDDDataset
from pdd_hub.schedule import SGDRecipe
from pdd_hub.train import plan_stages, recipe_augmentation


@dataclass
class TrainingPhase:
    """One phase of an export's schedule: what to train on and how."""

    index: int  # 1-based
    name: str  # stage_1, stage_1..2, ... (progressive), stage_k (sequential) or union
    images: torch.Tensor  # float32, in the export's preprocessed space
    labels: torch.Tensor  # int64 class indices
    num_classes: int
    recipe: SGDRecipe  # LR and its schedule, epochs, batch size, momentum, weight decay
    augment: DSA | None  # per-example differentiable siamese augmentation, drawn from a generator
    cutmix: CutMix | None  # IDC's CutMix on whole minibatches

    # the shorthands of the loop in the README and every export's card
    @property
    def lr(self) -> float:
        return self.recipe.lr

    @property
    def epochs(self) -> int:
        return self.recipe.epochs

    @property
    def batch_size(self) -> int:
        return self.recipe.batch_size

    @property
    def dataset(self) -> TensorDataset:
        """The phase's images and labels, unaugmented, as a torch dataset."""
        return TensorDataset(self.images, self.labels)

    def lr_at(self, epoch: int) -> float:
        """The LR of ``epoch`` (0-based) of this phase."""
        return self.recipe.lr_at(epoch)

    def optimizer(self, model: nn.Module) -> torch.optim.SGD:
        """The optimiser ``pdd-hub eval`` trains with: SGD with this phase's momentum and weight decay
        (create it once, at the first phase: its state carries over to the next ones)."""
        return self.recipe.build_optimizer(model.parameters())

    def set_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Set the LR of ``epoch``, and this phase's momentum and weight decay, in every group."""
        self.recipe.set_epoch(optimizer, epoch)

    def batches(
        self, generator: torch.Generator, device: torch.device | str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of augmented minibatches in an order drawn from ``generator``. Labels are class
        indices, or, where the method uses CutMix, probabilities mixing the two pasted classes
        (``F.cross_entropy`` takes both)."""
        images, labels = (
            self.images.to(device or self.images.device),
            self.labels.to(device or self.images.device),
        )
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for start in range(0, len(images), self.recipe.batch_size):
            idx = order[start : start + self.recipe.batch_size]
            x, y = images[idx], labels[idx]
            if self.augment is not None:
                x = self.augment(x, generator)
            if self.cutmix is not None:
                x, partner, weight = self.cutmix(x, y, generator)
                y = weight * F.one_hot(y, self.num_classes) + (1 - weight) * F.one_hot(
                    partner, self.num_classes
                )
            # the strides of the batches pdd-hub eval stacks: kernels (and their rounding) follow them,
            # and a one-channel batch out of DSA can pass for channels-last
            yield x.clone(memory_format=torch.contiguous_format), y

    def dataloader(self, generator: torch.Generator, device: torch.device | str | None = None) -> DataLoader:
        """One epoch of :meth:`batches` as a ``DataLoader`` (for loops that want one)."""
        return DataLoader(_EpochOfBatches(self, generator, device), batch_size=None)


class _EpochOfBatches(IterableDataset):
    def __init__(self, phase: TrainingPhase, generator: torch.Generator, device) -> None:
        self.phase, self.generator, self.device = phase, generator, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.phase.batches(self.generator, self.device)


def iterate_schedule(
    pdd: PDDDataset, mode: str = "progressive", epochs_per_stage: int | None = None
) -> Iterator[TrainingPhase]:
    """The phases of ``pdd``'s schedule in ``mode`` (``progressive``: stage_1, stage_1 ∪ stage_2, ...;
    ``sequential``: each stage alone; ``union``: everything at once), with the export's recipe."""
    augmentation = recipe_augmentation(pdd.schedule.training)
    for index, plan in enumerate(plan_stages(pdd, mode, epochs_per_stage), start=1):
        yield TrainingPhase(
            index=index,
            name=plan.name,
            images=plan.images,
            labels=plan.labels,
            num_classes=pdd.schedule.num_classes,
            recipe=plan.recipe,
            augment=augmentation.dsa,
            cutmix=augmentation.cutmix,
        )
