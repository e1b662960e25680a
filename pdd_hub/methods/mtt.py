"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022) with a learned LR per stage.

Each loss evaluation samples an expert and a start epoch t, unrolls ``syn_steps`` SGD steps of a
student from the expert's parameters at t on DSA-augmented minibatches of the synthetic union, and
compares where the student lands with where the expert was at t + M:

    loss = ||θ_student − θ*_{t+M}||² / ||θ*_t − θ*_{t+M}||²

The unroll is functional (``torch.func.functional_call`` on flat parameters), so the gradient
reaches the images and the learned LR through every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pdd_hub.augment import DSA, Sample
from pdd_hub.config import MethodConfig, PDDConfig, non_negative, one_of, positive
from pdd_hub.errors import ConfigError
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.methods.experts import ExpertSet, experts_for_stage
from pdd_hub.params import build_network, flat_params, unflatten
from pdd_hub.registry import register_method
from pdd_hub.runtime import autocast


@dataclass
class MTTConfig(MethodConfig):
    """Trajectory matching (Cazenavette et al. 2022) with a learned LR per stage."""

    syn_steps: int = positive(50)
    expert_epochs: int = positive(2)
    max_start_epoch: int = positive(5)
    lr_img: float = positive(1000.0)
    lr_lr: float = positive(1e-7)
    lr_init: float = positive(0.01)  # the learned LR starts here (MTT's lr_teacher)
    lr_min: float = positive(1e-8)  # the learned LR is kept above this (it must stay positive)
    batch_syn: int | None = positive(None)  # default: classes x ipc_per_stage, as in the official code
    # backward pass of the unroll: keep every step's graph, or recompute one step at a time in reverse
    # (the same gradient, memory independent of syn_steps); auto: the faster at this size (see RESULTS)
    memory: str = one_of("auto", "constant", "unrolled")
    # the student's forward passes in the unroll: bf16 autocast makes them faster on hardware with
    # bf16 units (parameters, the gradient chain and the loss stay fp32; see docs/RESULTS.md)
    precision: str = one_of("fp32", "bf16")
    momentum: float = non_negative(0.5)  # of the image and LR optimisers

    def check(self, run: PDDConfig) -> None:
        needed = self.max_start_epoch + self.expert_epochs
        if needed > run.experts.epochs:
            raise ConfigError(
                f"config keys 'mtt.max_start_epoch' + 'mtt.expert_epochs' = {needed} exceed 'experts.epochs' "
                f"= {run.experts.epochs}: the experts' trajectories are too short to match"
            )


@register_method("mtt", MTTConfig)
class MTT(Distiller):
    """Matching training trajectories (Cazenavette et al. 2022), with a learned LR per stage."""

    def __init__(
        self, config: MTTConfig, run: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__(config, run, num_classes, image_shape)
        self.expert_config = run.experts
        self.num_start_states = run.experts.num_experts
        self.track_forgetting = run.forgetting.mode != "off"
        self.syn_lr: torch.Tensor | None = None
        self.trajectories: list[torch.Tensor] = []
        self.experts: ExpertSet | None = None

    # --- stage set-up -------------------------------------------------------------------------
    def begin_stage(self, ctx: StageContext) -> None:
        """Train (or load) the experts of this stage from its start states, then keep the part of
        their trajectories that matching can reach in memory."""
        cfg = self.config
        self.experts = experts_for_stage(
            ctx,
            self.expert_config,
            later_epochs=cfg.max_start_epoch + cfg.expert_epochs + 1,  # all that matching reaches
            track_forgetting=self.track_forgetting,
        )
        reach = cfg.max_start_epoch - 1 + cfg.expert_epochs  # the last snapshot matching can use
        self._match_on(ctx, [self.experts.trajectory(i, upto=reach) for i in range(len(self.experts))])

    def begin_stage_stand_in(self, ctx: StageContext) -> None:
        """Random-walk trajectories of the right shape instead of trained experts (same cost)."""
        reach = self.config.max_start_epoch + self.config.expert_epochs
        start = flat_params(build_network(ctx.model_name, self.num_classes, self.image_shape, seed=0))
        steps = torch.randn(reach, start.numel(), generator=ctx.stream("stand_in")) * 1e-3
        self._match_on(ctx, [torch.cat([start[None], start[None] + steps.cumsum(0)])] * 4)

    def _match_on(self, ctx: StageContext, trajectories: list[torch.Tensor]) -> None:
        self.match(
            trajectories,
            build_network(ctx.model_name, self.num_classes, self.image_shape).to(ctx.accelerator.device),
            augment=ctx.augment,
            generator=ctx.generator,
            batch_syn=self.config.batch_syn or self.num_classes * ctx.ipc,
        )

    def match(
        self,
        trajectories: list[torch.Tensor],
        network: torch.nn.Module,
        *,
        augment: DSA | None,
        generator: torch.Generator,
        batch_syn: int,
    ) -> None:
        """Match these trajectories (``[epochs, P]`` each) with ``network``'s architecture; resets
        the learned LR to ``lr_init``. (``begin_stage`` calls this with the stage's experts.)"""
        self.trajectories = trajectories
        self.network = network.train()
        self.augment = augment
        self.generator = generator
        self.batch_syn = batch_syn
        device = next(network.parameters()).device
        self.syn_lr = torch.tensor(self.config.lr_init, device=device, requires_grad=True)
        self.memory_mode = self.config.memory if self.config.memory != "auto" else "unrolled"

    def image_optimizer(self) -> dict[str, float]:
        return {"lr": self.config.lr_img, "momentum": self.config.momentum}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.syn_lr], "lr": self.config.lr_lr, "momentum": self.config.momentum}]

    # --- the loss -----------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        device = images.device
        expert = int(torch.randint(len(self.trajectories), (1,), generator=self.generator))
        start = int(torch.randint(cfg.max_start_epoch, (1,), generator=self.generator))
        start_params = self.trajectories[expert][start].to(device)
        target_params = self.trajectories[expert][start + cfg.expert_epochs].to(device)

        student = self.unroll(images, labels, start_params)
        matched = (student - target_params).pow(2).sum()
        travelled = (start_params - target_params).pow(2).sum()
        return matched / travelled

    def unroll(self, images: torch.Tensor, labels: torch.Tensor, start_params: torch.Tensor) -> torch.Tensor:
        """``syn_steps`` differentiable SGD steps from ``start_params`` on minibatches of ``images``
        drawn without replacement from the whole union (a new permutation when one is used up).
        ``memory: unrolled`` keeps every step's graph for the backward pass; ``constant`` keeps only
        the parameters after each step and rebuilds one step's graph at a time in reverse, which
        gives the same gradient with memory independent of ``syn_steps``."""
        plan = self.plan_unroll(len(images), tuple(images.shape[-2:]))
        if self.memory_mode == "constant":
            return ConstantMemoryUnroll.apply(images, self.syn_lr, start_params, (self, labels, plan))
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():  # the student's own gradients are needed even under no_grad
            theta = start_params.clone().requires_grad_(True)
            for idx, sample in plan:
                grad = self.step_gradient(theta, images, labels, idx, sample, create_graph=differentiable)
                theta = theta - self.syn_lr * grad
        return theta

    def plan_unroll(
        self, union_size: int, image_size: tuple[int, int]
    ) -> list[tuple[torch.Tensor, Sample | None]]:
        """The minibatches of one unroll and the DSA draws of each, drawn before any step, so that a
        step can be recomputed exactly."""
        batches = self.student_batches(union_size)
        if self.augment is None:
            return [(idx, None) for idx in batches]
        return [(idx, self.augment.sample(len(idx), image_size, self.generator)) for idx in batches]

    def step_gradient(
        self,
        theta: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        idx: torch.Tensor,
        sample: Sample | None,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """The student's gradient at ``theta`` on the (augmented) minibatch ``idx``."""
        x = images[idx] if sample is None else self.augment.apply(images[idx], sample)
        with autocast(x.device, self.config.precision):
            logits = functional_call(self.network, unflatten(self.network, theta), (x,))
        loss = F.cross_entropy(logits.float(), labels[idx])
        (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return grad

    def student_batches(self, union_size: int) -> list[torch.Tensor]:
        """Index minibatches for one unroll, over the whole union (earlier stages included)."""
        batches: list[torch.Tensor] = []
        order = torch.empty(0, dtype=torch.long)
        while len(batches) < self.config.syn_steps:
            if len(order) == 0:
                order = torch.randperm(union_size, generator=self.generator)
            batches.append(order[: self.batch_syn])
            order = order[self.batch_syn :]
        return batches

    # --- bookkeeping --------------------------------------------------------------------------
    def after_step(self, images: torch.Tensor) -> None:
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.config.lr_min)

    def stage_lr(self) -> float:
        return float(self.syn_lr.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"syn_lr": self.syn_lr.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"])

    def log_values(self) -> dict[str, float]:
        return {"lr": self.stage_lr()}


class ConstantMemoryUnroll(torch.autograd.Function):
    """The student's unroll with an exact backward pass in constant memory: the forward pass keeps
    the flat parameters after every step (``[syn_steps + 1, P]``) and no graph; the backward pass
    walks the steps in reverse, rebuilding one step's graph (its gradient with ``create_graph``) to
    carry the adjoint of the parameters back and accumulate the gradients of the images and the LR.
    The cross-step second-order terms are all there: the result equals backpropagation through the
    whole unroll up to the order of floating-point additions."""

    @staticmethod
    def forward(ctx, images, syn_lr, start_params, closure):
        mtt, labels, plan = closure
        thetas = [start_params.detach()]
        for idx, sample in plan:
            with torch.enable_grad():
                theta = thetas[-1].clone().requires_grad_(True)
                grad = mtt.step_gradient(theta, images.detach(), labels, idx, sample, create_graph=False)
            thetas.append(thetas[-1] - syn_lr.detach() * grad)
        ctx.closure = closure
        ctx.save_for_backward(images, syn_lr, torch.stack(thetas))
        return thetas[-1].clone()

    @staticmethod
    def backward(ctx, adjoint):
        mtt, labels, plan = ctx.closure
        images, syn_lr, thetas = ctx.saved_tensors
        grad_images, grad_lr = torch.zeros_like(images), torch.zeros_like(syn_lr)
        for step in reversed(range(len(plan))):
            idx, sample = plan[step]
            with torch.enable_grad():
                theta = thetas[step].clone().requires_grad_(True)
                x = images.detach().requires_grad_(True)
                lr = syn_lr.detach().requires_grad_(True)
                grad = mtt.step_gradient(theta, x, labels, idx, sample, create_graph=True)
                after = theta - lr * grad
                d_theta, d_images, d_lr = torch.autograd.grad(after, [theta, x, lr], grad_outputs=adjoint)
            adjoint = d_theta
            grad_images += d_images
            grad_lr += d_lr
        return grad_images, grad_lr, adjoint, None
