"""How a network trains with SGD: one :class:`SGDRecipe` for every network pdd-hub trains.

Experts and scoring networks (on real data), the validation networks and transitions of a run,
``pdd-hub eval`` and every stage entry of ``pdd_schedule.json`` train with plain SGD: an LR with its
schedule over the epochs, a batch size, momentum and weight decay. The run config keeps its own keys
for them (``experts.lr``, ``eval.epochs``, ``train_batch_size``, ...: a public format,
docs/FORMAT.md) and each section says which recipe they make; a schedule's stage entry writes the
recipe under the keys of the export format (:meth:`SGDRecipe.to_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

# The LR schedules an export may name (checked when a schedule is read or written):
# step_at_half: LR x 0.1 after half of a stage's epochs (DC, DSA, DM, MTT, PDD);
# steps_at_2/3_5/6_x0.2: LR x 0.2 at 2/3 and again at 5/6 of them (IDC's MultiStepLR)
LR_SCHEDULES = ("step_at_half", "steps_at_2/3_5/6_x0.2")
# Experts and scoring networks keep their LR: an expert trajectory's epochs are matched one against
# another, and the reference code trains them so. Not an export's schedule, so not in LR_SCHEDULES.
CONSTANT_LR = "constant"


def lr_at(schedule: str, lr: float, epoch: int, epochs: int) -> float:
    """The LR of ``epoch`` (0-based) of a stage of ``epochs`` epochs under ``schedule``."""
    if schedule == "step_at_half":
        return lr if epoch < epochs // 2 else lr * 0.1
    if schedule == "steps_at_2/3_5/6_x0.2":
        passed = sum(epoch >= milestone for milestone in (2 * epochs // 3, 5 * epochs // 6))
        return lr * 0.2**passed
    if schedule == CONSTANT_LR:
        return lr
    raise ValueError(f"unknown lr_schedule {schedule!r}; use one of {list(LR_SCHEDULES)}")


@dataclass(frozen=True)
class SGDRecipe:
    """SGD for ``epochs`` epochs of minibatches of ``batch_size``, the LR following ``lr_schedule``
    (restarted by every stage that trains with its own recipe). The defaults are the PDD protocol's
    (:func:`dataclasses.replace` makes the variants)."""

    lr: float = 0.01
    epochs: int = 500
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step_at_half"  # one of LR_SCHEDULES, or CONSTANT_LR
    optimizer: ClassVar[str] = "sgd"  # the name pdd_schedule.json records (no other is supported)

    def lr_at(self, epoch: int) -> float:
        """The LR of ``epoch`` (0-based)."""
        return lr_at(self.lr_schedule, self.lr, epoch, self.epochs)

    def build_optimizer(self, params: Iterable[torch.Tensor]) -> torch.optim.SGD:
        """A new SGD optimiser with this recipe's LR, momentum and weight decay."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def set_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Set the LR of ``epoch``, and this recipe's momentum and weight decay, in every group of
        ``optimizer`` (one optimiser may carry its state through stages of different recipes)."""
        for group in optimizer.param_groups:
            group.update(lr=self.lr_at(epoch), momentum=self.momentum, weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a stage entry of ``pdd_schedule.json`` holds it, in the format's key order."""
        return {
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_schedule": self.lr_schedule,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SGDRecipe:
        """The recipe of a stage entry (its other keys are ignored; absent ones take the defaults).
        ``optimizer`` is not read: :func:`pdd_hub.validate.check_schedule` accepts ``sgd`` only."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def of_section(cls, section: Any, **fixed: Any) -> SGDRecipe:
        """The recipe of a config section whose keys are named like the recipe's fields (``lr``,
        ``epochs``, ...), read by name so that the section's YAML keys stay its own; ``fixed`` sets the
        fields the section has no key for."""
        names = [f.name for f in fields(cls) if f.name not in fixed]
        return cls(**{name: getattr(section, name) for name in names}, **fixed)
