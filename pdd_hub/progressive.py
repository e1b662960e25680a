"""Progressive Dataset Distillation (Chen, Yang, Wang, Mirzasoleiman, ICLR 2024): the stage loop.

For stage k = 1..P:
  1. start states: networks trained on stages 1..k-1 (random initialisations for k = 1);
  2. the base method prepares the stage from them (MTT: expert trajectories on real data);
  3. new images (real or noise) are optimised with the earlier stages frozen in the union
     (conditioning), and the best iteration on the validation split is kept;
  4. the stage is saved and the dataset re-exported, so stages 1..k are usable from now on;
  5. transition: every start state is trained on stages 1..k with their learned LR, giving the
     start states of stage k+1.
Finished stages are never recomputed; an interrupted stage resumes from its checkpoint.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm

from pdd_hub.config import PDDConfig
from pdd_hub.distill import distill_stage
from pdd_hub.io import save_tensors
from pdd_hub.methods import build_distiller
from pdd_hub.methods.base import StageContext
from pdd_hub.methods.experts import ExpertSet
from pdd_hub.methods.params import build_network, flat_params, load_flat_params
from pdd_hub.run import FinishedStage, Run
from pdd_hub.train import StagePlan, evaluate_accuracy, train_stages

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_LR = 0.01  # for methods that learn no LR


def run_pdd(config: PDDConfig, accelerator: Accelerator | None = None) -> Path:
    """Distil ``config.dataset`` into ``config.num_stages`` conditioned stages; returns the export."""
    accelerator = accelerator or Accelerator()
    set_seed(config.seed)
    run = Run(config, accelerator)
    distiller = build_distiller(config, run.num_classes, run.image_shape)
    if config.tracker != "none":
        accelerator.init_trackers("pdd", config={k: str(v) for k, v in config.to_dict().items()})

    finished: list[FinishedStage] = []
    start_states, start_stage = initial_start_states(run), 1
    for stage in range(1, config.num_stages + 1):
        done = run.load_finished(stage)
        if done is None:
            logger.info(
                "stage %d of %d: %d new images per class, conditioned on %d frozen images",
                stage,
                config.num_stages,
                config.ipc_per_stage,
                sum(len(f.labels) for f in finished),
            )
            ctx = stage_context(run, stage, start_states, start_stage)
            distiller.begin_stage(ctx)
            new_images, new_labels = initial_images(run, stage, ctx.pool)
            frozen_images, frozen_labels = union_of(finished)
            result = distill_stage(
                distiller,
                ctx,
                config,
                frozen_images=frozen_images,
                frozen_labels=frozen_labels,
                new_images=new_images,
                new_labels=new_labels,
                evaluate=functools.partial(validation_accuracy, run, stage, start_states),
                checkpoint=run.checkpoint,
                log_metrics=lambda values, step: accelerator.log(values, step=step),
            )
            lr = result.lr if result.lr is not None else DEFAULT_TRAIN_LR
            done = FinishedStage(result.images.cpu(), result.labels.cpu(), lr, result.val_acc)
            run.save_finished(stage, done, result.history)
            run.checkpoint.clear()
            logger.info("stage %d finished: val acc %.4f, learned lr %.4g", stage, done.val_acc, lr)
        finished.append(done)
        run.export(finished)
        if stage < config.num_stages and config.transition.enabled:
            start_states, start_stage = transition(run, stage + 1, start_states, finished), stage + 1
    if config.tracker != "none":
        accelerator.end_training()
    logger.info("done: %s", run.dataset_dir)
    return run.dataset_dir


def train_stage1_experts(config: PDDConfig, accelerator: Accelerator | None = None) -> ExpertSet:
    """Only the stage-1 expert trajectories of a run (what ``recipes/experts.py`` does)."""
    accelerator = accelerator or Accelerator()
    set_seed(config.seed)
    run = Run(config, accelerator)
    distiller = build_distiller(config, run.num_classes, run.image_shape)
    distiller.begin_stage(stage_context(run, 1, initial_start_states(run), 1))
    return distiller.experts


# --- the pieces of a stage ------------------------------------------------------------------------
def initial_start_states(run: Run) -> torch.Tensor:
    """Stage 1 starts from seeded random initialisations of the distillation network."""
    path = run.start_states_file(1)
    if run.exists_on_all(path):
        return load_file(str(path))["states"]
    count = run.config.experts.num_experts
    states = torch.stack(
        [
            flat_params(
                build_network(
                    run.config.model, run.num_classes, run.image_shape, seed=run.config.seed * 7919 + i
                )
            )
            for i in range(count)
        ]
    )
    if run.accelerator.is_main_process:
        save_tensors({"states": states}, path)
    run.accelerator.wait_for_everyone()
    return states


def stage_context(run: Run, stage: int, start_states: torch.Tensor, start_stage: int) -> StageContext:
    cfg = run.config
    generator = torch.Generator().manual_seed(
        cfg.seed * 1_000_003 + stage * 1009 + run.accelerator.process_index
    )
    return StageContext(
        stage=stage,
        num_stages=cfg.num_stages,
        ipc=cfg.ipc_per_stage,
        real=run.train,
        pool=stage_pool(run, stage),
        start_states=start_states,
        start_states_stage=start_stage,
        model_name=cfg.model,
        augment=run.augment,
        generator=generator,
        accelerator=run.accelerator,
        work_dir=run.dir,
        seed=cfg.seed,
        progress=cfg.progress,
    )


def stage_pool(run: Run, stage: int) -> torch.Tensor:
    """Indices of the real training examples stage ``stage`` learns from: all of them, or (from
    stage 2 on, with forgetting bands) those whose forgetting score is in the stage's band."""
    cfg = run.config.forgetting
    everything = torch.arange(len(run.train))
    if cfg.mode == "off" or stage == 1:
        return everything
    scores = ExpertSet.load(run.dir / "experts" / "stage_1").forgetting_scores()
    low = (stage - 1) * cfg.band_width
    high = stage * cfg.band_width if (cfg.mode == "band" and stage < run.config.num_stages) else None
    keep = scores >= low if high is None else (scores >= low) & (scores < high)
    pool = everything[keep]
    counts = torch.bincount(run.train.labels.cpu()[pool], minlength=run.num_classes).tolist()
    logger.info(
        "stage %d learns from %d examples with forgetting score in [%d, %s) (per class %s)",
        stage,
        len(pool),
        low,
        high if high is not None else "inf",
        counts,
    )
    if len(pool) == 0:
        logger.warning("stage %d: no example has a forgetting score in its band; using all examples", stage)
        return everything
    return pool


def initial_images(run: Run, stage: int, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc_per_stage`` new images per class: random real images from the pool, or noise."""
    cfg = run.config
    generator = torch.Generator().manual_seed(cfg.seed * 31 + stage)
    labels = torch.arange(run.num_classes).repeat_interleave(cfg.ipc_per_stage)
    if cfg.init == "noise":
        return torch.randn(len(labels), *run.image_shape, generator=generator), labels
    train_labels = run.train.labels.cpu()
    chosen = []
    for c in range(run.num_classes):
        candidates = pool[train_labels[pool] == c]
        if len(candidates) < cfg.ipc_per_stage:  # a band may hold too few of a class
            candidates = torch.nonzero(train_labels == c).flatten()
        chosen.append(candidates[torch.randperm(len(candidates), generator=generator)[: cfg.ipc_per_stage]])
    index = torch.cat(chosen).to(run.train.images.device)
    return run.train.images[index].detach().cpu().clone(), labels


def union_of(finished: list[FinishedStage]) -> tuple[torch.Tensor, torch.Tensor]:
    if not finished:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat([f.images for f in finished]), torch.cat([f.labels for f in finished])


def validation_accuracy(
    run: Run,
    stage: int,
    start_states: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float | None,
    iteration: int,
) -> float:
    """Mean validation accuracy of ``eval.num_models`` networks that start where this stage starts
    (trained on the earlier stages; cycling through the start states) and train on ``images``
    with ``lr``; the networks are split over processes."""
    cfg = run.config
    plan = StagePlan(
        "union", images.detach(), labels, lr or DEFAULT_TRAIN_LR, cfg.eval.epochs, cfg.eval.batch_size
    )
    accs = []
    with run.accelerator.split_between_processes(list(range(cfg.eval.num_models))) as mine:
        for j in mine:
            model = build_network(cfg.model, run.num_classes, run.image_shape).to(run.device)
            load_flat_params(model, start_states[j % len(start_states)].to(run.device))
            generator = torch.Generator().manual_seed(cfg.seed * 65_537 + stage * 8191 + iteration * 127 + j)
            train_stages(model, [plan], augment=run.augment, generator=generator)
            accs.append(evaluate_accuracy(model, run.val.images, run.val.labels))
    if run.accelerator.num_processes > 1:
        accs = gather_object(accs)
    return sum(accs) / len(accs)


def transition(
    run: Run, next_stage: int, start_states: torch.Tensor, finished: list[FinishedStage]
) -> torch.Tensor:
    """Train each start state on stages 1..k (their union, with stage k's learned LR) so that stage
    k+1 starts where training on the distilled data so far ends. Resumable per network."""
    path = run.start_states_file(next_stage)
    if run.exists_on_all(path):
        return load_file(str(path))["states"]
    cfg = run.config
    images, labels = union_of(finished)
    plan = StagePlan(
        f"stage_1..{next_stage - 1}",
        images.to(run.device),
        labels.to(run.device),
        finished[-1].lr,
        cfg.transition.syn_epochs,
        cfg.train_batch_size,
    )
    parts = path.parent / f"stage_{next_stage}.parts"
    count = len(start_states)
    mine = list(range(run.accelerator.process_index, count, run.accelerator.num_processes))
    show = cfg.progress and run.accelerator.is_main_process
    for i in tqdm(mine, desc=f"transition to stage {next_stage}", disable=not show):
        part = parts / f"{i:04d}.safetensors"
        if part.exists():
            continue
        model = build_network(cfg.model, run.num_classes, run.image_shape).to(run.device)
        load_flat_params(model, start_states[i].to(run.device))
        generator = torch.Generator().manual_seed(cfg.seed * 524_287 + next_stage * 131 + i)
        train_stages(model, [plan], augment=run.augment, generator=generator)
        save_tensors({"state": flat_params(model).cpu()}, part)
    run.accelerator.wait_for_everyone()
    states = torch.stack([load_file(str(parts / f"{i:04d}.safetensors"))["state"] for i in range(count)])
    if run.accelerator.is_main_process:
        save_tensors({"states": states}, path)
    run.accelerator.wait_for_everyone()
    return states
