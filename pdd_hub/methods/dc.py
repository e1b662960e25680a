"""DC: dataset condensation with gradient matching (Zhao, Mopuri, Bilen, ICLR 2021).

A network is drawn, then ``outer_loop`` times: for every class c, the gradient of the network's loss
on a batch of ``batch_real`` real images of c is compared with its gradient on the synthetic images of
c (:mod:`pdd_hub.methods.matching`), the summed distance updates the images, and the network trains
``inner_loop`` epochs on the (detached) synthetic set before the next comparison. One iteration of
the driver is one image update, so the official 1000 networks x ``outer_loop`` updates is
``iterations = 1000 * outer_loop``.

Under PDD the synthetic set is the union of the frozen earlier stages and the new images, and the
networks come from the stage's start states (trained on stages 1..k-1) instead of fresh random
initialisations (which stage 1 keeps). ``augment`` augments both sides of a comparison with the same
draw (siamese; DC: none, DSA: DSA) and the network's synthetic training per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pdd_hub.augment import build_augment
from pdd_hub.config import MethodConfig, PDDConfig, augmentation, non_negative, one_of, positive
from pdd_hub.loss_networks import LossNetworksConfig, with_source
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.methods.matching import METRICS, GradientMatching, classwise_matching_loss
from pdd_hub.networks import SingleNetwork
from pdd_hub.params import build_network, flat_params, load_flat_params
from pdd_hub.registry import register_method
from pdd_hub.train import Augmentation, train_epoch

# (outer_loop, inner_loop) per images per class, from the official code (utils.get_loops)
OFFICIAL_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def official_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for ``ipc`` images per class (the nearest tabulated IPC)."""
    nearest = min(OFFICIAL_LOOPS, key=lambda k: abs(math.log(k) - math.log(ipc)))
    return OFFICIAL_LOOPS[nearest]


@dataclass
class DCConfig(MethodConfig):
    """Gradient matching (Zhao et al. 2021): per-class gradient distance on networks trained on the
    synthetic set."""

    lr_img: float = positive(0.1)
    momentum: float = non_negative(0.5)  # of the image optimiser
    batch_real: int = positive(256)  # real images per class per comparison
    outer_loop: int | None = positive(None)  # image updates per network (default: official, by IPC)
    inner_loop: int | None = positive(None)  # epochs on the synthetic set between them (same)
    lr_net: float = positive(0.01)
    batch_train: int = positive(256)  # minibatch of the network's synthetic training
    metric: str = one_of("dc", "mse", "l1")
    layers: str = one_of("all", "conv")
    augment: str = augmentation("none")
    num_networks: int = positive(10)  # start states per stage (what the transition trains)
    # stage >= 2: a fresh random network per draw, as DC itself draws (start states 33.54 vs random
    # 35.96 after stage 5 at the CPU protocol; docs/RESULTS.md, issue 19)
    networks: LossNetworksConfig = field(default_factory=with_source("random"))


@register_method("dc", DCConfig)
class DC(Distiller):
    """Dataset condensation with gradient matching (Zhao et al. 2021)."""

    default_augment = "none"  # DC's official evaluation trains without augmentation

    def __init__(
        self, config: DCConfig, run: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__(config, run, num_classes, image_shape)
        assert config.metric in METRICS
        self.num_start_states = config.num_networks
        self.augment = build_augment(config.augment)
        self.outer_step = 0  # comparisons done on the current network
        self.draws = 0  # networks drawn this stage

    def begin_stage(self, ctx: StageContext) -> None:
        default_outer, default_inner = official_loops(ctx.ipc)
        self.outer_loop = self.config.outer_loop or default_outer
        self.inner_loop = self.config.inner_loop or default_inner
        self.ctx = ctx
        self.sampler = ctx.real_sampler()
        self.network = build_network(ctx.model_name, self.num_classes, self.image_shape).to(
            ctx.real.images.device
        )
        self.network.train()
        self.outer_step, self.draws = 0, 0

    def loss_networks_config(self) -> LossNetworksConfig:
        return self.config.networks

    def image_optimizer(self) -> dict[str, float]:
        return {"lr": self.config.lr_img, "momentum": self.config.momentum}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.outer_step == 0:
            load_flat_params(self.network, self.ctx.network_state(self.draws).to(images.device))
            self.draws += 1
        else:
            self.train_network(images.detach(), labels)
        self.outer_step = (self.outer_step + 1) % self.outer_loop
        return self.matching_loss(images, labels)

    def matching_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over classes of the distance between real and synthetic gradients of the network."""
        cfg = self.config
        matching = GradientMatching(cfg.layers, cfg.batch_real, cfg.metric)
        return classwise_matching_loss(
            self.network,
            images,
            labels,
            self.sampler,
            matching,
            augment=self.augment,
            generator=self.ctx.generator,
        )

    def train_network(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """``inner_loop`` epochs of plain SGD on the synthetic set (per-example augmentation)."""
        optimizer = torch.optim.SGD(self.network.parameters(), lr=self.config.lr_net)
        network = SingleNetwork(self.network)
        for _ in range(self.inner_loop):
            train_epoch(
                network,
                optimizer,
                images,
                labels,
                self.config.batch_train,
                Augmentation(self.augment),
                [self.ctx.generator],
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        sampler = {f"sampler.{k}": v for k, v in self.sampler.state_dict().items()}
        return {
            "network": flat_params(self.network),
            "counters": torch.tensor([self.outer_step, self.draws]),
            **sampler,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_flat_params(self.network, state["network"])
        self.outer_step, self.draws = (int(v) for v in state["counters"])
        self.sampler.load_state_dict(
            {k.removeprefix("sampler."): v for k, v in state.items() if k.startswith("sampler.")}
        )
