"""The one interface between the PDD stage loop and a base distillation method.

The driver (:mod:`pdd_hub.progressive`, :mod:`pdd_hub.distill`) owns the synthetic set (frozen
earlier stages + the new, trainable part), its optimiser, checkpoints, selection and export. A method
says how good the current union is (:meth:`Distiller.loss`), what it needs before a stage starts
(:meth:`Distiller.begin_stage`: MTT's expert trajectories, IDC's pretrained networks), which extra
tensors it learns (:meth:`Distiller.param_groups`: MTT's learning rate), how its stored images become
the images networks train on (:meth:`Distiller.decode`: IDC's multi-formation) and how networks
train on them (:meth:`Distiller.training_recipe`). Conditioning is a property of the driver: earlier
stages are detached and never in the optimiser, whatever the method.

A method registers itself under its name with its config dataclass, a :class:`MethodConfig` (whose
hooks say what the run checks before any work and how many images a stored one decodes into), and is
built as ``cls(method_config, run_config, num_classes, image_shape)``::

    @register_method("dm", DMConfig)
    class DM(Distiller): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from pdd_hub.augment import DSA, augment_spec, build_augment
from pdd_hub.config import ImportanceConfig, MethodConfig, PDDConfig
from pdd_hub.data.images import ImageSet
from pdd_hub.data.transforms import Preprocess
from pdd_hub.loss_networks import LossNetworks, LossNetworksConfig, RetrainPool
from pdd_hub.methods.sampling import RealSampler
from pdd_hub.rng import Name
from pdd_hub.runtime import TrainingRuntime
from pdd_hub.train import TrainingRecipe


@dataclass
class StageContext:
    """What a method may use while distilling stage ``stage`` (1-based)."""

    stage: int
    num_stages: int
    ipc: int  # images per class this stage stores
    real: ImageSet  # preprocessed float training images on the device
    pool: torch.Tensor  # indices into ``real`` this stage may learn from (forgetting bands)
    start_states: torch.Tensor  # [n, P] flat parameters of networks trained on stages 1..k-1
    start_states_stage: int  # the stage these start states were made for (1: no transition yet)
    model_name: str
    augment: DSA | None  # the run's training augmentation
    accelerator: Accelerator
    layout: Any  # the run folder's layout (pdd_hub.run.RunLayout): where a method keeps its files
    runtime: TrainingRuntime  # device, precision, batching, compile, progress, the run seed's streams
    generator: torch.Generator  # this process's stream of the stage, for the loss's draws
    preprocess: Preprocess | None = None  # how real pixels became ``real`` (e.g. for clamping)
    real_sampling: str = "uniform"  # how the method draws real examples (pdd_hub.methods.sampling)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    networks: LossNetworks | None = None  # the loss's networks (default: start states)

    def stream(self, *name: Name) -> torch.Generator:
        """A named random stream of this stage (and process), e.g. ``ctx.stream("network", 3)``."""
        return self.runtime.stream(*self._prefix(), *name)

    def _prefix(self) -> tuple[Name, ...]:
        return ("stage", self.stage, "process", self.accelerator.process_index)

    def network_state(self, draw: int) -> torch.Tensor:
        """Flat parameters of the ``draw``-th network this stage's loss uses: a fresh random
        initialisation while there has been no transition (stage 1, as the base methods draw a new
        network each time), else as the method's ``networks.source`` says (:mod:`pdd_hub.loss_networks`)."""
        if self.networks is None:
            self.networks = self.loss_networks(LossNetworksConfig())
        return self.networks.state(draw)

    def loss_networks(self, config: LossNetworksConfig, retrain: RetrainPool | None = None) -> LossNetworks:
        """The networks of this stage's loss drawn from ``config``'s source."""
        return LossNetworks(
            config,
            runtime=self.runtime,
            prefix=self._prefix(),
            model_name=self.model_name,
            real=self.real,
            pool=self.pool,
            start_states=self.start_states,
            first_stage=self.start_states_stage == 1,
            retrain=retrain,
        )

    def real_sampler(self) -> RealSampler:
        """A sampler of this stage's real examples, uniform or by importance as the run says."""
        return RealSampler(self.real, self.pool, self.real_sampling, self.importance)

    def pool_by_class(self, num_classes: int) -> list[torch.Tensor]:
        """The pool's indices into ``real``, split by class."""
        labels = self.real.labels[self.pool.to(self.real.labels.device)].cpu()
        pool = self.pool.cpu()
        return [pool[labels == c] for c in range(num_classes)]


class Distiller(ABC):
    """A base method as seen by the progressive driver; its name is the one it is registered under."""

    default_augment: str = "dsa"  # how networks train on the images, unless the config's augment says
    num_start_states: int = 1  # networks a stage starts from (trained on stages 1..k-1 in PDD)
    # BibTeX the dataset card cites besides PDD's: for methods of other packages (the built-in
    # methods' entries are in pdd_hub.card.CITATIONS); None: nothing more to cite
    citation: str | None = None

    def __init__(
        self, config: MethodConfig, run: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]
    ) -> None:
        self.config = config  # the method's own section
        self.run = run
        self.num_classes = num_classes
        self.image_shape = image_shape

    @property
    def expansion(self) -> int:
        """Images a stored image decodes into (IDC: ``factor**2``): the section's, so that the run's
        data check before any work and the stages agree."""
        return self.config.expansion

    @abstractmethod
    def begin_stage(self, ctx: StageContext) -> None:
        """Prepare stage ``ctx.stage`` (e.g. train or load the experts it matches)."""

    @abstractmethod
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the (decoded) synthetic union ``images``: earlier stages first,
        detached; the new part requires grad. Its gradient moves the new images and
        :meth:`param_groups`."""

    def begin_stage_stand_in(self, ctx: StageContext) -> None:
        """Prepare a stage with stand-ins for expensive resources whose values do not change the cost
        of :meth:`loss` (benchmarks time iterations without training experts)."""
        self.begin_stage(ctx)

    # --- storage: what the optimiser moves vs what networks train on ---------------------------
    def encode(self, real: torch.Tensor) -> torch.Tensor:
        """Initial stored images from ``expansion`` x as many real images (consecutive groups)."""
        return real

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        """The images networks train on, ``expansion`` per stored image, in order; differentiable."""
        return stored

    def decode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of :meth:`decode`'s output."""
        return labels.repeat_interleave(self.expansion)

    def storage(self) -> dict[str, Any]:
        """How stored images relate to the exported ones (written into ``pdd_schedule.json``)."""
        return {"kind": "images", "expansion": self.expansion}

    # --- optimisation ---------------------------------------------------------------------------
    def image_optimizer(self) -> dict[str, float]:
        """SGD settings (``lr``, ``momentum``) for the new images."""
        return {"lr": 1.0, "momentum": 0.5}

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra learnable tensors with their optimiser settings (SGD param groups)."""
        return []

    def after_step(self, images: torch.Tensor) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Called after each optimiser step with the stored new images, for projections (MTT keeps
        its learned LR positive, IDC clamps the images to the pixel range); in place, no grad."""

    # --- what the result is trained with ------------------------------------------------------
    def training_recipe(self) -> TrainingRecipe:
        """How networks train on this method's images (validation, transitions, the export): by
        default the run's ``augment``, ``train_epochs_per_stage`` and ``train_batch_size``."""
        return TrainingRecipe(sgd=self.run.stage_recipe(), augment=self.training_augment())

    def training_augment(self) -> str:
        """The run's ``augment``, else this method's default, as a full spec."""
        return augment_spec(build_augment(self.run.augment or self.default_augment))

    def loss_networks_config(self) -> LossNetworksConfig:
        """Where the networks of the loss come from from stage 2 on: the method section's ``networks``
        (DM, DC, DSA, IDC), else the start states."""
        return LossNetworksConfig()

    def stage_lr(self) -> float | None:
        """The training LR this method learned for the current stage, if any."""
        return None

    # --- resumption and logging ---------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors needed to resume mid-stage (saved as safetensors)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned."""

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging besides the loss."""
        return {}
