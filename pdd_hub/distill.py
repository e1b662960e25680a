"""One stage's optimisation loop, shared by every base method.

Only the new images (and the method's extra tensors, e.g. MTT's LR) are in the optimiser; earlier
stages enter the union detached, so their gradient is exactly zero (conditioning). The loop
evaluates on the validation split every ``eval.every`` iterations and keeps the best images,
checkpoints every ``checkpoint_every`` iterations, and survives non-finite values by restoring the
last good state with a lower image LR for the rest of the stage (the failed iteration counts as
spent; three such events in a row end the run with a clear error).
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


@dataclass
class StageResult:
    """The best new images of a stage (chosen on the validation split) and their learned LR."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None
    val_acc: float
    iteration: int
    history: list[dict] = field(default_factory=list)


def distill_stage(
    distiller: Distiller,
    ctx: StageContext,
    config: PDDConfig,
    *,
    frozen_images: torch.Tensor,
    frozen_labels: torch.Tensor,
    new_images: torch.Tensor,
    new_labels: torch.Tensor,
    evaluate: Callable[[torch.Tensor, torch.Tensor, float | None, int], float],
    checkpoint: StageCheckpoint,
    log_metrics: Callable[[dict[str, float], int], None] = lambda values, step: None,
) -> StageResult:
    """Optimise ``new_images`` for ``config.iterations`` steps of ``distiller.loss`` on the union
    (``frozen`` first when ``config.conditioning``); ``evaluate(images, labels, lr, iteration)``
    returns validation accuracy of networks trained on that union."""
    acc = ctx.accelerator
    device = acc.device
    new = new_images.detach().clone().to(device).requires_grad_(True)
    new_labels = new_labels.to(device)
    frozen_images, frozen_labels = frozen_images.to(device), frozen_labels.to(device)
    conditioned = config.conditioning and len(frozen_images) > 0
    union_labels = torch.cat([frozen_labels, new_labels]) if conditioned else new_labels
    optimizer = torch.optim.SGD([{"params": [new], **distiller.image_optimizer()}, *distiller.param_groups()])
    best = StageResult(new.detach().clone(), new_labels.clone(), distiller.stage_lr(), -math.inf, -1)
    start, bad_events = 0, 0

    resumed = checkpoint.load(ctx.stage, optimizer, ctx.generator)
    if resumed is not None:
        tensors, progress = resumed
        with torch.no_grad():
            new.copy_(tensors["new_images"])
        distiller.load_state_dict(
            {k[len("method.") :]: v.to(device) for k, v in tensors.items() if k.startswith("method.")}
        )
        best = StageResult(
            tensors["best_images"].to(device),
            new_labels.clone(),
            progress["best_lr"],
            progress["best_val_acc"],
            progress["best_iteration"],
            progress["history"],
        )
        start, bad_events = progress["iteration"], progress["bad_events"]
        logger.info("stage %d: resumed at iteration %d from %s", ctx.stage, start, checkpoint.path)

    def union() -> torch.Tensor:
        return torch.cat([frozen_images, new]) if conditioned else new

    def save(iteration: int) -> None:
        tensors = {
            "new_images": new.detach(),
            "best_images": best.images,
            **{f"method.{k}": v for k, v in distiller.state_dict().items()},
        }
        meta = {
            "best_lr": best.lr,
            "best_val_acc": best.val_acc,
            "best_iteration": best.iteration,
            "history": best.history,
            "bad_events": bad_events,
        }
        checkpoint.save(
            stage=ctx.stage,
            iteration=iteration,
            tensors=tensors,
            optimizer=optimizer,
            generator=ctx.generator,
            meta=meta,
        )

    bar = tqdm(
        total=config.iterations,
        initial=start,
        desc=f"stage {ctx.stage}/{ctx.num_stages}",
        disable=not (ctx.progress and acc.is_main_process),
    )
    tick = time.perf_counter()
    for it in range(start, config.iterations + 1):
        if start < it < config.iterations and it % config.checkpoint_every == 0:
            save(it)
        if it % config.eval.every == 0 or it == config.iterations:
            eval_images = torch.cat([frozen_images, new.detach()])
            eval_labels = torch.cat([frozen_labels, new_labels])
            val_acc = evaluate(eval_images, eval_labels, distiller.stage_lr(), it)
            best.history.append({"iteration": it, "val_acc": val_acc, "lr": distiller.stage_lr()})
            log_metrics({f"stage_{ctx.stage}/val_acc": val_acc}, it)
            if val_acc >= best.val_acc:  # on ties, prefer the more distilled images
                best = StageResult(
                    new.detach().clone(), new_labels.clone(), distiller.stage_lr(), val_acc, it, best.history
                )
            logger.info(
                "stage %d it %d: val acc %.4f (best %.4f at it %d)",
                ctx.stage,
                it,
                val_acc,
                best.val_acc,
                best.iteration,
            )
        if it == config.iterations:
            break

        good = _snapshot(new, optimizer, distiller)
        loss = distiller.loss(union(), union_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(optimizer, acc)
        healthy = _everywhere(bool(torch.isfinite(loss)) and _finite_gradients(optimizer), acc)
        if healthy:
            optimizer.step()
            distiller.after_step()
            lr = distiller.stage_lr()
            finite_lr = lr is None or bool(torch.isfinite(torch.tensor(lr)))
            healthy = _everywhere(bool(torch.isfinite(new).all()) and finite_lr, acc)
        if not healthy:  # the iteration is spent; the next one draws new trajectories and batches
            bad_events += 1
            _restore(good, new, optimizer, distiller)
            optimizer.param_groups[0]["lr"] *= 0.5
            logger.warning(
                "stage %d it %d: non-finite loss, images or learned LR; restored the last good state and "
                "lowered lr_img to %g (%d/%d in a row)",
                ctx.stage,
                it,
                optimizer.param_groups[0]["lr"],
                bad_events,
                MAX_BAD_EVENTS,
            )
            if bad_events >= MAX_BAD_EVENTS:
                raise DistillationDivergedError(
                    f"stage {ctx.stage} diverged: {MAX_BAD_EVENTS} non-finite updates in a row at "
                    f"iteration {it} even after lowering lr_img to {optimizer.param_groups[0]['lr']:g}. "
                    "Lower mtt.lr_img or mtt.lr_lr (or mtt.syn_steps) and re-run: finished stages and the "
                    "last checkpoint are kept."
                )
            continue
        bad_events = 0
        bar.update(1)
        if (it + 1) % config.log_every == 0:
            per_it = (time.perf_counter() - tick) / config.log_every
            tick = time.perf_counter()
            values = {
                f"stage_{ctx.stage}/loss": loss.item(),
                **{f"stage_{ctx.stage}/{k}": v for k, v in distiller.log_values().items()},
            }
            log_metrics(values, it + 1)
            logger.info(
                "stage %d it %d: loss %.4f %s (%.2fs/it)",
                ctx.stage,
                it + 1,
                loss.item(),
                " ".join(f"{k} {v:.4g}" for k, v in distiller.log_values().items()),
                per_it,
            )
    bar.close()
    return best


def _snapshot(new: torch.Tensor, optimizer: torch.optim.Optimizer, distiller: Distiller) -> dict:
    state = optimizer.state_dict()
    return {
        "new": new.detach().clone(),
        "optimizer": {
            "state": {
                k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                for k, s in state["state"].items()
            },
            "param_groups": [dict(g) for g in state["param_groups"]],
        },
        "method": {k: v.clone() for k, v in distiller.state_dict().items()},
    }


def _restore(good: dict, new: torch.Tensor, optimizer: torch.optim.Optimizer, distiller: Distiller) -> None:
    with torch.no_grad():
        new.copy_(good["new"])
    optimizer.load_state_dict(good["optimizer"])
    distiller.load_state_dict(good["method"])
    optimizer.zero_grad(set_to_none=True)


def _average_gradients(optimizer: torch.optim.Optimizer, accelerator) -> None:
    # Every process drew its own trajectories/batches; averaging their gradients keeps the images
    # identical on all processes and makes N processes an N-times larger meta-batch.
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
