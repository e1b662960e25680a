"""One stage's optimisation loop, shared by every base method.

Only the new images (and the method's extra tensors, e.g. MTT's LR) are in the optimiser; earlier
stages enter the union detached, so their gradient is exactly zero (conditioning). The loop
evaluates on the validation split every ``eval.every`` iterations and keeps the best images,
checkpoints every ``checkpoint_every`` iterations, and survives non-finite values by restoring the
last good state with a lower image LR for the rest of the stage (the failed iteration counts as
spent; three such events in a row end the run with a clear error).

    state = StageState.start(...)            # fresh, or resumed from the checkpoint
    for it in range(state.iteration, iterations + 1):
        checkpoint, evaluate_and_select, step
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pdd_hub.checkpoint import StageCheckpoint
from pdd_hub.config import PDDConfig
from pdd_hub.errors import DistillationDivergedError
from pdd_hub.methods.base import Distiller, StageContext

logger = logging.getLogger(__name__)
MAX_BAD_EVENTS = 3

Evaluate = Callable[[torch.Tensor, torch.Tensor, "float | None", int], float]
LogMetrics = Callable[[dict[str, float], int], None]


@dataclass
class StageResult:
    """The best new (stored) images of a stage, chosen on the validation split, and their LR."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None
    val_acc: float
    iteration: int
    history: list[dict] = field(default_factory=list)


@dataclass
class Union:
    """The synthetic set a stage's loss sees: the frozen earlier stages (decoded, detached) followed
    by the decoded new images; without conditioning, the new images alone."""

    distiller: Distiller
    frozen_images: torch.Tensor
    frozen_labels: torch.Tensor
    new_labels: torch.Tensor  # of the stored new images
    conditioned: bool

    def images(self, new: torch.Tensor) -> torch.Tensor:
        decoded = self.distiller.decode(new)
        return torch.cat([self.frozen_images, decoded]) if self.conditioned else decoded

    def labels(self) -> torch.Tensor:
        decoded = self.distiller.decode_labels(self.new_labels)
        return torch.cat([self.frozen_labels, decoded]) if self.conditioned else decoded

    def for_training(self, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stages 1..k as networks train on them (with the earlier ones whether or not conditioned)."""
        with torch.no_grad():
            decoded = self.distiller.decode(new.detach())
        labels = self.distiller.decode_labels(self.new_labels)
        return torch.cat([self.frozen_images, decoded]), torch.cat([self.frozen_labels, labels])


@dataclass
class StageState:
    """Everything that changes during a stage, and what a checkpoint saves of it."""

    new: torch.Tensor  # the stored new images, the optimiser's parameter
    optimizer: torch.optim.Optimizer
    best: StageResult
    iteration: int = 0
    bad_events: int = 0

    @classmethod
    def start(
        cls,
        distiller: Distiller,
        ctx: StageContext,
        new_images: torch.Tensor,
        new_labels: torch.Tensor,
        checkpoint: StageCheckpoint,
    ) -> StageState:
        """A fresh state from ``new_images``, or the checkpoint's if one of this stage exists."""
        device = ctx.accelerator.device
        new = new_images.detach().clone().to(device).requires_grad_(True)
        optimizer = torch.optim.SGD(
            [{"params": [new], **distiller.image_optimizer()}, *distiller.param_groups()]
        )
        best = StageResult(new.detach().clone(), new_labels, distiller.stage_lr(), -math.inf, -1)
        state = cls(new, optimizer, best)
        resumed = checkpoint.load(ctx.stage, optimizer, ctx.generator)
        if resumed is not None:
            tensors, progress = resumed
            with torch.no_grad():
                new.copy_(tensors["new_images"])
            method = {
                k.removeprefix("method."): v.to(device) for k, v in tensors.items() if k.startswith("method.")
            }
            distiller.load_state_dict(method)
            state.best = StageResult(
                tensors["best_images"].to(device),
                new_labels,
                progress["best_lr"],
                progress["best_val_acc"],
                progress["best_iteration"],
                progress["history"],
            )
            state.iteration, state.bad_events = progress["iteration"], progress["bad_events"]
            logger.info(
                "stage %d: resumed at iteration %d from %s", ctx.stage, state.iteration, checkpoint.path
            )
        return state

    def save(self, distiller: Distiller, ctx: StageContext, checkpoint: StageCheckpoint) -> None:
        tensors = {
            "new_images": self.new.detach(),
            "best_images": self.best.images,
            **{f"method.{k}": v for k, v in distiller.state_dict().items()},
        }
        meta = {
            "best_lr": self.best.lr,
            "best_val_acc": self.best.val_acc,
            "best_iteration": self.best.iteration,
            "history": self.best.history,
            "bad_events": self.bad_events,
        }
        checkpoint.save(
            stage=ctx.stage,
            iteration=self.iteration,
            tensors=tensors,
            optimizer=self.optimizer,
            generator=ctx.generator,
            meta=meta,
        )


def distill_stage(
    distiller: Distiller,
    ctx: StageContext,
    config: PDDConfig,
    *,
    frozen: tuple[torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor],
    evaluate: Evaluate,
    checkpoint: StageCheckpoint,
    log_metrics: LogMetrics = lambda values, step: None,
) -> StageResult:
    """Optimise the stored ``new`` images (with their labels) for ``config.stage_iterations`` steps of
    ``distiller.loss`` on the union (the earlier stages' ``frozen`` images and labels first when
    ``config.conditioning``); ``evaluate(images, labels, lr, iteration)`` returns the validation
    accuracy of networks trained on stages 1..k."""
    device = ctx.accelerator.device
    (frozen_images, frozen_labels), (new_images, new_labels) = frozen, new
    new_labels = new_labels.to(device)
    union = Union(
        distiller,
        frozen_images.to(device),
        frozen_labels.to(device),
        new_labels,
        conditioned=config.conditioning and len(frozen_images) > 0,
    )
    state = StageState.start(distiller, ctx, new_images, new_labels, checkpoint)
    start, iterations = state.iteration, config.stage_iterations
    bar = tqdm(
        total=iterations,
        initial=start,
        desc=f"stage {ctx.stage}/{ctx.num_stages}",
        disable=not (ctx.runtime.progress and ctx.accelerator.is_main_process),
    )
    tick = time.perf_counter()
    for it in range(start, iterations + 1):
        state.iteration = it
        if start < it < iterations and it % config.checkpoint_every == 0:
            state.save(distiller, ctx, checkpoint)
        if it % config.eval.every == 0 or it == iterations:
            evaluate_and_select(state, distiller, union, ctx, evaluate, log_metrics)
        if it == iterations:
            break
        loss = step(state, distiller, union, ctx)
        if loss is None:
            continue
        bar.update(1)
        if (it + 1) % config.log_every == 0:
            seconds = (time.perf_counter() - tick) / config.log_every
            tick = time.perf_counter()
            values = {**distiller.log_values(), "lr_img": state.optimizer.param_groups[0]["lr"]}
            log_progress(ctx.stage, it + 1, loss, values, seconds, log_metrics)
    bar.close()
    return state.best


def step(state: StageState, distiller: Distiller, union: Union, ctx: StageContext) -> float | None:
    """One update of the new images; returns the loss, or ``None`` if a non-finite loss, gradient,
    image or LR made it restore the last good state (with half the image LR)."""
    acc = ctx.accelerator
    good = _snapshot(state, distiller)
    loss = distiller.loss(union.images(state.new), union.labels())
    state.optimizer.zero_grad(set_to_none=True)
    # only what the optimiser moves: a method's networks need no gradient of the loss
    loss.backward(inputs=[p for group in state.optimizer.param_groups for p in group["params"]])
    _average_gradients(state.optimizer, acc)
    healthy = _everywhere(bool(torch.isfinite(loss)) and _finite_gradients(state.optimizer), acc)
    if healthy:
        state.optimizer.step()
        distiller.after_step(state.new)
        lr = distiller.stage_lr()
        finite_lr = lr is None or math.isfinite(lr)
        healthy = _everywhere(bool(torch.isfinite(state.new).all()) and finite_lr, acc)
    if healthy:
        state.bad_events = 0
        return loss.item()
    # the iteration is spent; the next one draws new trajectories, networks and batches
    state.bad_events += 1
    _restore(good, state, distiller)
    image_group = state.optimizer.param_groups[0]
    image_group["lr"] *= 0.5
    logger.warning(
        "stage %d it %d: non-finite loss, images or learned LR; restored the last good state and "
        "lowered lr_img to %g (%d/%d in a row)",
        ctx.stage,
        state.iteration,
        image_group["lr"],
        state.bad_events,
        MAX_BAD_EVENTS,
    )
    if state.bad_events >= MAX_BAD_EVENTS:
        raise DistillationDivergedError(
            f"stage {ctx.stage} diverged: {MAX_BAD_EVENTS} non-finite updates in a row at iteration "
            f"{state.iteration} even after lowering lr_img to {image_group['lr']:g}. Lower the method's "
            "image LR (e.g. mtt.lr_img, dm.lr_img) or its step sizes and re-run: finished stages and the "
            "last checkpoint are kept."
        )
    return None


def evaluate_and_select(
    state: StageState,
    distiller: Distiller,
    union: Union,
    ctx: StageContext,
    evaluate: Evaluate,
    log_metrics: LogMetrics,
) -> None:
    """Validation accuracy of networks trained on stages 1..k now; keep the images if they are the
    best so far (on ties the later, more distilled ones)."""
    it, lr = state.iteration, distiller.stage_lr()
    val_acc = evaluate(*union.for_training(state.new), lr, it)
    state.best.history.append({"iteration": it, "val_acc": val_acc, "lr": lr})
    log_metrics({f"stage_{ctx.stage}/val_acc": val_acc}, it)
    if val_acc >= state.best.val_acc:
        state.best = StageResult(
            state.new.detach().clone(), state.best.labels, lr, val_acc, it, state.best.history
        )
    logger.info(
        "stage %d it %d: val acc %.4f (best %.4f at it %d)",
        ctx.stage,
        it,
        val_acc,
        state.best.val_acc,
        state.best.iteration,
    )


def log_progress(
    stage: int, iteration: int, loss: float, values: dict[str, float], seconds: float, log_metrics: LogMetrics
) -> None:
    log_metrics(
        {f"stage_{stage}/loss": loss, **{f"stage_{stage}/{k}": v for k, v in values.items()}}, iteration
    )
    logger.info(
        "stage %d it %d: loss %.4f %s (%.2fs/it)",
        stage,
        iteration,
        loss,
        " ".join(f"{k} {v:.4g}" for k, v in values.items()),
        seconds,
    )


def _snapshot(state: StageState, distiller: Distiller) -> dict:
    optim = state.optimizer.state_dict()
    return {
        "new": state.new.detach().clone(),
        "optimizer": {
            "state": {
                k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                for k, s in optim["state"].items()
            },
            "param_groups": [dict(g) for g in optim["param_groups"]],
        },
        "method": {k: v.clone() for k, v in distiller.state_dict().items()},
    }


def _restore(good: dict, state: StageState, distiller: Distiller) -> None:
    with torch.no_grad():
        state.new.copy_(good["new"])
    state.optimizer.load_state_dict(good["optimizer"])
    distiller.load_state_dict(good["method"])
    state.optimizer.zero_grad(set_to_none=True)


def _average_gradients(optimizer: torch.optim.Optimizer, accelerator) -> None:
    # Every process drew its own trajectories/networks/batches; averaging their gradients keeps the
    # images identical on all processes and makes N processes an N-times larger meta-batch.
    if accelerator.num_processes == 1:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, reduction="mean")


def _everywhere(flag: bool, accelerator) -> bool:
    """``flag`` and'ed over all processes, so that every process takes the same branch."""
    if accelerator.num_processes == 1:
        return flag
    votes = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(votes.item() == accelerator.num_processes)


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    return all(
        p.grad is None or bool(torch.isfinite(p.grad).all())
        for g in optimizer.param_groups
        for p in g["params"]
    )
