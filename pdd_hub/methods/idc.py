"""IDC: efficient dataset condensation (Kim et al., ICML 2022), the paper's second base method.

Multi-formation: each stored image holds ``factor x factor`` tiles; decoding cuts them out and
upsamples each (bilinear) to the full size, so a stored image gives ``factor**2`` training images.
Networks train on the decoded images and the export holds them (:meth:`IDC.decode`).

Condensation: a network is drawn, then ``inner_loop`` times: for every class c, the gradients of the
network's loss on ``batch_real`` real images of c and on (at most ``max_syn`` of) the decoded
synthetic images of c, both augmented by one draw of ``augment`` applied to them together, are
compared on the conv weights (``mse``); the summed distance updates the stored images; then the
network trains on ``n_data`` real examples (SGD, per-example DSA and CutMix) before the next
comparison. Images are clamped to the pixel range once per network. IDC steps its images in [0, 1]
pixels while pdd-hub keeps them in the preprocessed space ``(x - mean) / std``, where the same step is
``lr_img x gradient / std**2``: the loss scales the gradient reaching the images per channel by
``1 / std**2`` (:func:`pixel_space_step`), so ``lr_img`` keeps IDC's value. One iteration of the driver is
one comparison (the official code steps per class; the classes' images are disjoint, so one step on
the summed loss gives each image the same gradient), so the official ``niter`` networks of 100 steps
is ``iterations = 100 * niter``.

Under PDD (see docs/METHODS.md): the synthetic images of a class are those of the union, the frozen
earlier stages decoded with the new ones; the networks come from the stage's start states, trained on
stages 1..k-1 by the transition with IDC's training recipe (stage 1: fresh random initialisations,
as IDC on CIFAR), or, with ``network_pool: experts``, from snapshots of networks trained on real data
from those start states (IDC's pretrained pool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from pdd_hub.augment import CutMix, build_augment
from pdd_hub.config import MethodConfig, PDDConfig, augmentation, non_negative, one_of, positive
from pdd_hub.errors import ConfigError
from pdd_hub.loss_networks import LossNetworksConfig, with_source
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.methods.experts import ExpertSet, experts_for_stage
from pdd_hub.methods.matching import GradientMatching, classwise_matching_loss
from pdd_hub.params import (
    build_network,
    flat_params,
    load_flat_params,
    momentum_buffers,
    set_momentum_buffers,
)
from pdd_hub.registry import register_method
from pdd_hub.train import TrainingRecipe, minibatch_loss

IDC_LR_SCHEDULE = "steps_at_2/3_5/6_x0.2"


@dataclass
class IDCConfig(MethodConfig):
    """Efficient dataset condensation (Kim et al. 2022): multi-formation and gradient matching on
    networks trained on real data."""

    factor: int = positive(2)  # stored image = factor x factor downsampled images
    # in [0, 1] pixel units, as IDC's; default 5e-3 x ipc_per_stage / 10 (PDD's tune_lr_img scaling)
    lr_img: float | None = positive(None)
    momentum: float = non_negative(0.5)  # of the image optimiser
    inner_loop: int = positive(100)  # comparisons (iterations) per network
    batch_real: int = positive(64)  # real images per class per comparison
    max_syn: int = positive(128)  # decoded synthetic images per class per comparison, at most
    metric: str = one_of("mse", "l1", "dc")
    layers: str = one_of("conv", "all")  # conv: conv weights only (no biases, norms, classifier)
    augment: str = augmentation("dsa_all:color_crop_cutout")  # one draw for the real + synthetic batch
    n_data: int = positive(2000)  # real examples the network trains on between comparisons
    net_batch: int = positive(64)
    net_lr: float = positive(0.01)
    net_momentum: float = non_negative(0.9)
    net_weight_decay: float = non_negative(5e-4)
    net_augment: str = augmentation("dsa_all:color_crop")  # per example, then CutMix
    net_cutmix_prob: float = non_negative(0.5)
    cutmix_beta: float = positive(1.0)
    clamp: bool = True  # to the pixel range, once per network (not possible with ZCA)
    num_networks: int = positive(10)  # start states per stage (what the transition trains)
    networks: LossNetworksConfig = field(default_factory=with_source("start_states"))  # from stage 2
    network_pool: str = one_of("start_states", "experts")
    pool_first_epoch: int = non_negative(0)  # experts pool: snapshots of these epochs
    pool_last_epoch: int = non_negative(4)
    # how networks train on the export (IDC's evaluation): LR, CutMix, LR x 0.2 at 2/3 and 5/6
    train_lr: float = positive(0.01)
    train_cutmix_prob: float = non_negative(0.5)

    @property
    def expansion(self) -> int:
        """Multi-formation: a stored image holds ``factor x factor`` tiles, each decoded to an image."""
        return self.factor**2

    def check(self, run: PDDConfig) -> None:
        for key in ("net_cutmix_prob", "train_cutmix_prob"):
            if getattr(self, key) > 1:
                raise ConfigError(f"config key 'idc.{key}' is a probability, got {getattr(self, key)!r}")
        if self.pool_first_epoch > self.pool_last_epoch:
            raise ConfigError("config key 'idc.pool_first_epoch' must not exceed 'idc.pool_last_epoch'")
        if self.network_pool == "experts" and self.pool_last_epoch > run.experts.epochs:
            raise ConfigError(
                f"config key 'idc.pool_last_epoch' = {self.pool_last_epoch} exceeds 'experts.epochs' = "
                f"{run.experts.epochs}: the experts have no such snapshot"
            )

    def check_data(self, image_shape: tuple[int, int, int]) -> None:
        _, height, width = image_shape
        if height % self.factor or width % self.factor:
            raise ConfigError(
                f"config key 'idc.factor' = {self.factor} does not divide the image size {height}x{width}: "
                "a stored image is cut into factor x factor equal tiles; choose a divisor of the size"
            )


class _ScaleGradient(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``scale`` (broadcast)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return images.view_as(images)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def pixel_space_step(images: torch.Tensor, inverse_variance: torch.Tensor) -> torch.Tensor:
    """``images`` unchanged, their gradient times ``inverse_variance`` (``[1, C, 1, 1]``, 1 / std**2):
    for images in the preprocessed space ``(x - mean) / std``, an SGD step (momentum included) of
    ``lr`` on that gradient moves them exactly as a step of ``lr`` on the pixels ``x`` would."""
    return _ScaleGradient.apply(images, inverse_variance)


@register_method("idc", IDCConfig)
class IDC(Distiller):
    """Efficient dataset condensation with multi-formation (Kim et al. 2022)."""

    default_augment = "dsa_idc:color_crop_flip_scale_rotate"  # IDC's training: DSA without cutout, + CutMix

    def __init__(
        self, config: IDCConfig, run: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__(config, run, num_classes, image_shape)
        self.num_start_states = config.num_networks
        self.augment = build_augment(config.augment)
        self.net_augment = build_augment(config.net_augment)
        self.cutmix = (
            CutMix(config.net_cutmix_prob, config.cutmix_beta) if config.net_cutmix_prob > 0 else None
        )
        self.step_in_network, self.draws = 0, 0
        self.experts: ExpertSet | None = None

    # --- multi-formation --------------------------------------------------------------------------
    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        f, (_, height, width) = self.config.factor, stored.shape[1:]
        tiles = rearrange(stored, "n c (fh h) (fw w) -> (n fh fw) c h w", fh=f, fw=f)
        return F.interpolate(tiles, size=(height, width), mode="bilinear", align_corners=False)

    def encode(self, real: torch.Tensor) -> torch.Tensor:
        f, (_, height, width) = self.config.factor, real.shape[1:]
        small = F.interpolate(real, size=(height // f, width // f), mode="nearest")
        return rearrange(small, "(n fh fw) c h w -> n c (fh h) (fw w)", fh=f, fw=f)

    def storage(self) -> dict:
        return {
            "kind": "multi_formation",
            "factor": self.config.factor,
            "expansion": self.expansion,
            "decode": "each stored image is cut into factor x factor tiles, each upsampled (bilinear, "
            "align_corners=False) to the full size; the export holds the decoded images",
        }

    # --- stage ----------------------------------------------------------------------------------
    def begin_stage(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.sampler = ctx.real_sampler()
        device = ctx.real.images.device
        self.network = build_network(ctx.model_name, self.num_classes, self.image_shape).to(device).train()
        self.net_optimizer = self._network_optimizer()
        self.step_in_network, self.draws = 0, 0
        self.bounds = self._pixel_bounds(ctx)
        self.pixel_step_scale = self._pixel_step_scale(ctx)
        if self.config.network_pool == "experts":
            self.experts = experts_for_stage(ctx, self.run.experts, later_epochs=self.config.pool_last_epoch)

    def loss_networks_config(self) -> LossNetworksConfig:
        return self.config.networks

    def image_optimizer(self) -> dict[str, float]:
        lr = self.config.lr_img or 5e-3 * self.run.ipc_per_stage / 10
        return {"lr": lr, "momentum": self.config.momentum}

    def training_recipe(self) -> TrainingRecipe:
        return TrainingRecipe(
            sgd=self.run.stage_recipe(lr=self.config.train_lr, lr_schedule=IDC_LR_SCHEDULE),
            augment=self.training_augment(),
            cutmix_prob=self.config.train_cutmix_prob,
            cutmix_beta=self.config.cutmix_beta,
        )

    # --- the loss -----------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.step_in_network == 0:
            load_flat_params(self.network, self._draw_network().to(images.device))
            self.net_optimizer = self._network_optimizer()
            self.draws += 1
        else:
            self.train_on_real()
        self.step_in_network = (self.step_in_network + 1) % self.config.inner_loop
        if self.pixel_step_scale is not None:
            images = pixel_space_step(images, self.pixel_step_scale)
        return self.matching_loss(images, labels)

    def matching_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over classes of the distance between real and synthetic gradients (conv weights); one
        augmentation draw serves both batches of a class, as IDC draws once for the two concatenated."""
        cfg = self.config
        matching = GradientMatching(cfg.layers, cfg.batch_real, cfg.metric, cfg.max_syn)
        return classwise_matching_loss(
            self.network,
            images,
            labels,
            self.sampler,
            matching,
            augment=self.augment,
            generator=self.ctx.generator,
        )

    def train_on_real(self) -> None:
        """About ``n_data`` real examples of SGD for the network (batches of ``net_batch``)."""
        cfg, real, generator = self.config, self.ctx.real, self.ctx.generator
        for _ in range(math.ceil(cfg.n_data / cfg.net_batch)):
            batch = self.sampler.batch(cfg.net_batch, generator)
            idx = batch.indices.to(real.images.device)
            loss = minibatch_loss(
                self.network,
                real.images[idx],
                real.labels[idx],
                self.net_augment,
                generator,
                self.cutmix,
                weights=batch.weights,
            )
            self.net_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.net_optimizer.step()

    def after_step(self, images: torch.Tensor) -> None:
        if self.config.clamp and self.bounds is not None and self.step_in_network == 0:
            low, high = (b.to(images.device) for b in self.bounds)
            with torch.no_grad():
                images.copy_(torch.maximum(torch.minimum(images, high), low))

    # --- pieces -------------------------------------------------------------------------------
    def _draw_network(self) -> torch.Tensor:
        if self.experts is None:
            return self.ctx.network_state(self.draws)
        generator = self.ctx.stream("pool", self.draws)
        expert = int(torch.randint(len(self.experts), (), generator=generator))
        first, last = self.config.pool_first_epoch, self.config.pool_last_epoch
        epoch = int(torch.randint(first, last + 1, (), generator=generator))
        return self.experts.trajectory(expert, upto=epoch)[epoch]

    def _network_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.SGD(
            self.network.parameters(),
            lr=cfg.net_lr,
            momentum=cfg.net_momentum,
            weight_decay=cfg.net_weight_decay,
        )

    @staticmethod
    def _pixel_bounds(ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel images of pixel values 0 and 1 in the preprocessed space (None under ZCA)."""
        pre = ctx.preprocess
        if pre is None or pre.zca is not None:
            return None
        low, high = (pre.normalize(torch.full((1, len(pre.mean), 1, 1), v)) for v in (0.0, 1.0))
        return low, high

    @staticmethod
    def _pixel_step_scale(ctx: StageContext) -> torch.Tensor | None:
        """1 / std**2 per channel (``[1, C, 1, 1]``, on the real images' device), which steps the
        normalised images as IDC steps pixels; None where there is no per-channel map to pixels (ZCA)."""
        pre = ctx.preprocess
        if pre is None or pre.zca is not None:
            return None
        return (pre.std.view(1, -1, 1, 1) ** -2).to(ctx.real.images.device)

    # --- resumption -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "network": flat_params(self.network),
            "counters": torch.tensor([self.step_in_network, self.draws]),
        }
        momentum = momentum_buffers(self.net_optimizer, self.network)
        if momentum is not None:
            state["net_momentum"] = momentum
        return {**state, **{f"sampler.{k}": v for k, v in self.sampler.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_flat_params(self.network, state["network"])
        self.step_in_network, self.draws = (int(v) for v in state["counters"])
        self.net_optimizer = self._network_optimizer()
        if "net_momentum" in state:
            set_momentum_buffers(self.net_optimizer, self.network, state["net_momentum"])
        self.sampler.load_state_dict(
            {k.removeprefix("sampler."): v for k, v in state.items() if k.startswith("sampler.")}
        )
