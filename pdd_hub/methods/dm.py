"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Every iteration draws a network and, for every class c, compares the mean embedding (the features
before the classifier, timm's ``forward_head(pre_logits=True)``) of ``batch_real`` real images of c
with the mean embedding of the synthetic images of c, both augmented with one shared DSA draw:

    loss = sum_c || mean_i f(A(x_real_ci)) - mean_j f(A(x_syn_cj)) ||^2

The network is not trained; it only embeds. Under PDD the synthetic images of a class are those of
the union (frozen earlier stages and the new ones); the networks are fresh random initialisations in
every stage by default (``networks.source: random``): embeddings of the start states, trained on the
few images of stages 1..k-1, made the later stages useless (docs/RESULTS.md, issue 19).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pdd_hub.augment import build_augment
from pdd_hub.config import MethodConfig, PDDConfig, augmentation, non_negative, positive
from pdd_hub.loss_networks import LossNetworksConfig, with_source
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.params import build_network, embed, load_flat_params
from pdd_hub.registry import register_method


@dataclass
class DMConfig(MethodConfig):
    """Distribution matching (Zhao & Bilen 2023): per-class mean embeddings under random networks."""

    lr_img: float = positive(1.0)  # the official value for CIFAR at IPC <= 50
    momentum: float = non_negative(0.5)
    batch_real: int = positive(256)  # real images per class per iteration
    augment: str = augmentation("dsa")
    num_networks: int = positive(10)  # start states per stage (what the transition trains)
    networks: LossNetworksConfig = field(default_factory=with_source("random"))  # from stage 2


@register_method("dm", DMConfig)
class DM(Distiller):
    """Distribution matching (Zhao & Bilen 2023)."""

    def __init__(
        self, config: DMConfig, run: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__(config, run, num_classes, image_shape)
        self.num_start_states = config.num_networks
        self.augment = build_augment(config.augment)
        self.draws = 0

    def begin_stage(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.sampler = ctx.real_sampler()
        self.network = build_network(ctx.model_name, self.num_classes, self.image_shape).to(
            ctx.real.images.device
        )
        self.network.train().requires_grad_(False)  # an embedding only: no gradient w.r.t. its weights
        self.draws = 0

    def loss_networks_config(self) -> LossNetworksConfig:
        return self.config.networks

    def image_optimizer(self) -> dict[str, float]:
        return {"lr": self.config.lr_img, "momentum": self.config.momentum}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        load_flat_params(self.network, self.ctx.network_state(self.draws).to(images.device))
        self.draws += 1
        self.sampler.step(self.network)
        real, generator = self.ctx.real, self.ctx.generator
        total = images.new_zeros(())
        for c in range(self.num_classes):
            batch = self.sampler.class_batch(c, self.config.batch_real, generator)
            x_real, x_syn = real.images[batch.indices.to(real.images.device)], images[labels == c]
            if self.augment is not None:  # siamese: one draw for both sides
                sample = self.augment.sample(1, tuple(x_real.shape[-2:]), generator, shared=True)
                x_real, x_syn = self.augment.apply(x_real, sample), self.augment.apply(x_syn, sample)
            mean_real = batch.mean(embed(self.network, x_real))  # importance-weighted when drawn so
            mean_syn = embed(self.network, x_syn).mean(dim=0)
            total = total + (mean_real - mean_syn).pow(2).sum()
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "draws": torch.tensor(self.draws),
            **{f"sampler.{k}": v for k, v in self.sampler.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.draws = int(state["draws"])
        self.sampler.load_state_dict(
            {k.removeprefix("sampler."): v for k, v in state.items() if k.startswith("sampler.")}
        )
