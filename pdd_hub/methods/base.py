"""The one interface between the PDD stage loop and a base distillation method.

The driver (:mod:`pdd_hub.progressive`) owns the synthetic set (frozen earlier stages + the new,
trainable part), its optimiser, checkpoints, selection and export. A method only says how good
the current union is (:meth:`Distiller.loss`), what it needs before a stage starts
(:meth:`Distiller.begin_stage`, e.g. MTT's expert trajectories) and which extra tensors it learns
(:meth:`Distiller.param_groups`, e.g. MTT's learning rate). Conditioning is therefore a property of
the driver: earlier stages are detached and never in the optimiser, whatever the method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pdd_hub.augment import DSA
from pdd_hub.data.images import ImageSet


@dataclass
class StageContext:
    """What a method may use while distilling stage ``stage`` (1-based)."""

    stage: int
    num_stages: int
    ipc: int  # new images per class in this stage
    real: ImageSet  # preprocessed float training images on the device
    pool: torch.Tensor  # indices into ``real`` this stage may learn from (forgetting bands)
    start_states: torch.Tensor  # [n, P] flat parameters of networks trained on stages 1..k-1
    start_states_stage: int  # the stage these start states were made for (1: no transition yet)
    model_name: str
    augment: DSA | None
    generator: torch.Generator  # this process's stream of randomness
    accelerator: Accelerator
    work_dir: Path  # where the method may keep files for this run (e.g. experts/)
    seed: int
    progress: bool = True


class Distiller(ABC):
    """A base method as seen by the progressive driver (MTT now; gradient and distribution
    matching methods plug in the same way)."""

    name: str = "base"

    @abstractmethod
    def begin_stage(self, ctx: StageContext) -> None:
        """Prepare stage ``ctx.stage`` (e.g. train or load the experts it matches)."""

    @abstractmethod
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the synthetic union ``images`` (earlier stages first, detached;
        the new part requires grad). Its gradient moves the new images and :meth:`param_groups`."""

    def image_optimizer(self) -> dict[str, float]:
        """SGD settings (``lr``, ``momentum``) for the new images."""
        return {"lr": 1.0, "momentum": 0.5}

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra learnable tensors with their optimiser settings (SGD param groups)."""
        return []

    def after_step(self) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Called after each optimiser step (projections, e.g. keeping a learned LR positive)."""

    def stage_lr(self) -> float | None:
        """The training LR this method learned for the current stage, if any."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors needed to resume mid-stage (saved as safetensors)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned."""

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging besides the loss."""
        return {}
