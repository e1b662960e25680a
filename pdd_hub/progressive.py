"""Progressive Dataset Distillation (Chen, Yang, Wang, Mirzasoleiman, ICLR 2024): the stage loop.

For stage k = 1..P:
  1. start states: networks trained on stages 1..k-1 (random initialisations for k = 1);
  2. the base method prepares the stage from them (MTT: expert trajectories on real data);
  3. new images (real or noise) are optimised with the earlier stages frozen in the union
     (conditioning), and the best iteration on the validation split is kept;
  4. the stage is saved and the dataset re-exported, so stages 1..k are usable from now on;
  5. transition: every start state is trained on stages 1..k with the method's training recipe,
     giving the start states of stage k+1.
Before stage 1 the run folder is claimed (cheap: lock and config check, so a busy or mismatched
folder stops at once) and only then is the data prepared (:mod:`pdd_hub.run`). Finished stages are
never recomputed; an interrupted stage resumes from its checkpoint. Nothing here knows which base
method runs: it is looked up by name (:mod:`pdd_hub.methods`).
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from pdd_hub.config import PDDConfig, init_selection
from pdd_hub.distill import StageResult, distill_stage
from pdd_hub.forgetting import stage_pool
from pdd_hub.io import load_tensors, save_tensors
from pdd_hub.methods import Distiller, build_distiller
from pdd_hub.methods.base import StageContext
from pdd_hub.params import flat_params, network_from
from pdd_hub.registry import SELECTIONS
from pdd_hub.run import FinishedStage, RunData, RunFolder, prepare_data
from pdd_hub.runtime import make_accelerator
from pdd_hub.selection import selection_indices
from pdd_hub.tracking import log_stage
from pdd_hub.train import StagePlan, TrainingRecipe, train_many

logger = logging.getLogger(__name__)


def run_pdd(config: PDDConfig, accelerator: Accelerator | None = None) -> Path:
    """Distil ``config.dataset`` into ``config.num_stages`` conditioned stages; returns the export."""
    accelerator = accelerator or make_accelerator()
    set_seed(config.seed)
    folder = RunFolder.claim(config, accelerator)  # a locked or mismatched folder stops before any data loads
    run = prepare_data(folder)
    distiller = build_distiller(config, run.num_classes, run.image_shape)
    recipe = distiller.training_recipe()
    if config.tracker != "none":
        accelerator.init_trackers("pdd", config={k: str(v) for k, v in config.to_dict().items()})

    finished: list[FinishedStage] = []
    start_states, start_stage = run.initial_start_states(distiller.num_start_states), 1
    for stage in range(1, config.num_stages + 1):
        done = folder.load_finished(stage)
        if done is not None:
            stored, labels, record = done
            info = {k: record[k] for k in ("pool", "init_indices", "distillation") if k in record}
            finished.append(decoded(distiller, stored, labels, record["lr"], record["val_acc"], info))
        else:
            finished.append(distil_one_stage(run, distiller, stage, start_states, start_stage, finished))
        run.export(finished, recipe, distiller.storage())
        if stage < config.num_stages and config.transition.enabled:
            start_states, start_stage = (
                transition(run, distiller, stage + 1, start_states, finished),
                stage + 1,
            )
    if config.tracker != "none":
        accelerator.end_training()
    logger.info("done: %s", folder.dataset_dir)
    return folder.dataset_dir


def distil_one_stage(
    run: RunData,
    distiller: Distiller,
    stage: int,
    start_states: torch.Tensor,
    start_stage: int,
    finished: list[FinishedStage],
) -> FinishedStage:
    """Prepare, distil and save stage ``stage``, conditioned on the ``finished`` earlier ones."""
    cfg = run.config
    logger.info(
        "stage %d of %d: %d new images per class, conditioned on %d frozen images",
        stage,
        cfg.num_stages,
        cfg.ipc_per_stage,
        sum(len(f.labels) for f in finished),
    )
    pool, pool_info = stage_pool(run, stage, cfg.ipc_per_stage * distiller.expansion)
    ctx = stage_context(run, stage, start_states, start_stage, pool)
    retrain = functools.partial(retrained_pool, run, distiller, stage, finished)
    ctx.networks = ctx.loss_networks(distiller.loss_networks_config(), retrain)
    distiller.begin_stage(ctx)
    used = torch.tensor([i for f in finished for i in f.info.get("init_indices", [])], dtype=torch.long)
    new_images, new_labels, init_indices = initial_images(run, distiller, stage, pool, used)
    recipe = distiller.training_recipe()
    result = distill_stage(
        distiller,
        ctx,
        cfg,
        frozen=union_of(finished),
        new=(new_images, new_labels),
        evaluate=functools.partial(validation_accuracy, run, distiller, stage, start_states),
        checkpoint=run.folder.checkpoint,
        log_metrics=lambda values, step: run.accelerator.log(values, step=step),
    )
    lr = result.lr if result.lr is not None else recipe.sgd.lr
    made = distillation_record(cfg, distiller, result)
    info = {"pool": pool_info, "init_indices": init_indices, "distillation": made}
    done = decoded(distiller, result.images.cpu(), result.labels.cpu(), lr, result.val_acc, info)
    run.save_finished(stage, done, result.history)
    log_stage(run.accelerator, stage, run.layout.grid_file(stage), done.val_acc, lr)
    run.folder.checkpoint.clear()
    logger.info("stage %d finished: val acc %.4f, lr %.4g", stage, done.val_acc, lr)
    return done


def prepare_first_stage(config: PDDConfig, accelerator: Accelerator | None = None) -> Path:
    """Only what the method prepares before stage 1 (MTT: the stage-1 experts), e.g. on more
    processes first (``recipes/experts.py``); returns the run folder."""
    accelerator = accelerator or make_accelerator()
    set_seed(config.seed)
    folder = RunFolder.claim(config, accelerator)
    run = prepare_data(folder)
    distiller = build_distiller(config, run.num_classes, run.image_shape)
    start_states = run.initial_start_states(distiller.num_start_states)
    pool, _ = stage_pool(run, 1, config.ipc_per_stage * distiller.expansion)
    distiller.begin_stage(stage_context(run, 1, start_states, 1, pool))
    return folder.dir


# --- the pieces of a stage ------------------------------------------------------------------------
def stage_context(
    run: RunData, stage: int, start_states: torch.Tensor, start_stage: int, pool: torch.Tensor
) -> StageContext:
    cfg = run.config
    return StageContext(
        stage=stage,
        num_stages=cfg.num_stages,
        ipc=cfg.ipc_per_stage,
        real=run.train,
        pool=pool,
        start_states=start_states,
        start_states_stage=start_stage,
        model_name=cfg.model,
        augment=run.augment,
        accelerator=run.accelerator,
        layout=run.layout,
        runtime=run.runtime,
        generator=run.runtime.stream("stage", stage, "process", run.accelerator.process_index, "loss"),
        preprocess=run.preprocess,
        real_sampling=cfg.real_sampling,
        importance=cfg.importance,
    )


def initial_images(
    run: RunData, distiller: Distiller, stage: int, pool: torch.Tensor, used: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``ipc_per_stage`` new stored images per class: noise, or the method's encoding of real images
    (``expansion`` per stored image) chosen from the stage's pool by the selection method ``init``
    names (``real``: at random), never one an earlier stage started from. Also returns the chosen
    training-set indices (empty for noise)."""
    cfg = run.config
    labels = torch.arange(run.num_classes).repeat_interleave(cfg.ipc_per_stage)
    selection = init_selection(cfg.init)
    if selection is None:
        noise = torch.randn(len(labels), *run.image_shape, generator=run.runtime.stream("init", stage))
        return noise, labels, []
    per_class = cfg.ipc_per_stage * distiller.expansion
    candidates = pool[~torch.isin(pool, used)]
    pools = run.examples.class_pools(candidates)
    for c, class_pool in enumerate(pools):
        if len(class_pool) < per_class:  # too few left in the band: any unused image of the class
            everything = torch.arange(len(run.train))
            everything = everything[~torch.isin(everything, used)]
            pools[c] = run.examples.class_pools(everything)[c]
    selector = SELECTIONS.get(selection).cls(cfg.init_config)
    generators = [run.runtime.stream("init", stage, c) for c in range(run.num_classes)]
    chosen = torch.cat(selection_indices(selector, pools, per_class, generators))
    real = run.train.images[chosen.to(run.train.images.device)].detach().cpu()
    return distiller.encode(real).clone(), labels, chosen.tolist()


def distillation_record(config: PDDConfig, distiller: Distiller, result: StageResult) -> dict:
    """How a stage was distilled, for its record and ``pdd_schedule.json``: the budget (every
    iteration updates every new image once) and the iteration chosen on the validation split."""
    return {
        "budget": config.budget,
        "iterations": config.stage_iterations,
        "selected_iteration": result.iteration,
        "network_source": distiller.loss_networks_config().source,
    }


def decoded(
    distiller: Distiller,
    stored: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    val_acc: float,
    info: dict | None = None,
) -> FinishedStage:
    """A finished stage with the images networks train on."""
    with torch.no_grad():
        images = distiller.decode(stored)
    return FinishedStage(stored, labels, images, distiller.decode_labels(labels), lr, val_acc, info or {})


def union_of(finished: list[FinishedStage]) -> tuple[torch.Tensor, torch.Tensor]:
    if not finished:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat([f.images for f in finished]), torch.cat([f.labels for f in finished])


def validation_accuracy(
    run: RunData,
    distiller: Distiller,
    stage: int,
    start_states: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float | None,
    iteration: int,
) -> float:
    """Mean validation accuracy of ``eval.num_models`` networks that start where this stage starts
    (trained on the earlier stages; cycling through the start states) and train on ``images`` with
    the method's recipe and ``lr``; the networks are split over processes."""
    cfg = run.config
    recipe = distiller.training_recipe()
    plan = StagePlan("union", images.detach(), labels, cfg.eval.recipe(recipe.sgd, lr or recipe.sgd.lr))
    with run.accelerator.split_between_processes(list(range(cfg.eval.num_models))) as mine:
        accs = train_networks(
            run,
            recipe,
            [plan],
            [start_states[j % len(start_states)] for j in mine],
            [run.runtime.stream("validation", stage, iteration, j) for j in mine],
            test=(run.val.images, run.val.labels),
        )
    if run.accelerator.num_processes > 1:
        accs = gather_object(accs)
    return sum(accs) / len(accs)


def transition(
    run: RunData,
    distiller: Distiller,
    next_stage: int,
    start_states: torch.Tensor,
    finished: list[FinishedStage],
) -> torch.Tensor:
    """Train each start state on stages 1..k (their union, with stage k's LR and the method's recipe)
    so that stage k+1 starts where training on the distilled data so far ends. Resumable: each
    network's result is kept as soon as it is there."""
    images, labels = union_of(finished)
    recipe = distiller.training_recipe()
    sgd = run.config.transition.recipe(recipe.sgd, finished[-1].lr)
    plan = StagePlan(f"stage_1..{next_stage - 1}", images.to(run.device), labels.to(run.device), sgd)
    logger.info("transition to stage %d", next_stage)
    path = run.layout.start_states_file(next_stage)
    names = [("transition", next_stage, i) for i in range(len(start_states))]
    return train_and_keep(run, recipe, [plan], start_states, names, path)


def retrained_pool(
    run: RunData, distiller: Distiller, stage: int, finished: list[FinishedStage], refresh: int
) -> torch.Tensor:
    """The ``refresh``-th pool of the ``retrained`` loss-network source of ``stage``: fresh random
    networks trained on stages 1..k-1 as the export's schedule trains (stage_1, then stage_1..2, ...,
    each with its LR, ``transition.syn_epochs`` epochs each), kept in the run folder."""
    config, recipe = distiller.loss_networks_config(), distiller.training_recipe()
    names = [("loss_networks", stage, refresh, j) for j in range(config.pool_size)]
    states = torch.stack([run.random_network_state(name) for name in names])
    plans = []
    for upto in range(1, stage):
        images, labels = union_of(finished[:upto])
        sgd = run.config.transition.recipe(recipe.sgd, finished[upto - 1].lr)
        plans.append(StagePlan(f"stage_1..{upto}", images, labels, sgd))
    logger.info("stage %d: training loss-network pool %d (%d networks)", stage, refresh, len(states))
    path = run.layout.loss_networks_file(stage, refresh)
    return train_and_keep(run, recipe, plans, states, names, path)


def train_and_keep(
    run: RunData,
    recipe: TrainingRecipe,
    plans: list[StagePlan],
    states: torch.Tensor,
    names: list[tuple],
    path: Path,
) -> torch.Tensor:
    """``states`` trained through ``plans`` (network i drawing from stream ``names[i]``), split over the
    processes and stacked into ``path``; each network is kept as soon as it is trained, so an
    interrupted call resumes. Returns them from ``path`` if it is there."""
    if run.folder.exists_on_all(path):
        return load_tensors(path, ("states",))["states"]
    parts = path.with_suffix(".parts")
    count, acc = len(states), run.accelerator
    mine = list(range(acc.process_index, count, acc.num_processes))
    todo = [i for i in mine if not (parts / f"{i:04d}.safetensors").exists()]
    chunk = max(1, len(todo)) if run.runtime.batched else 1  # one at a time: each is kept when done
    for first in range(0, len(todo), chunk):
        group = todo[first : first + chunk]
        trained: list[torch.Tensor] = []
        generators = [run.runtime.stream(*names[i]) for i in group]
        train_networks(run, recipe, plans, [states[i] for i in group], generators, trained=trained)
        for i, state in zip(group, trained, strict=True):
            save_tensors({"state": state}, parts / f"{i:04d}.safetensors")
    acc.wait_for_everyone()
    stacked = torch.stack(
        [load_tensors(parts / f"{i:04d}.safetensors", ("state",))["state"] for i in range(count)]
    )
    if acc.is_main_process:
        save_tensors({"states": stacked}, path)
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
    return stacked


def train_networks(
    run: RunData,
    recipe: TrainingRecipe,
    plans: list[StagePlan],
    states: list[torch.Tensor],
    generators: list[torch.Generator],
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    trained: list[torch.Tensor] | None = None,
) -> list[float]:
    """Train networks of the run's architecture from ``states`` with ``recipe`` (stacked when the run
    batches networks); returns their final accuracy on ``test`` and appends their final flat
    parameters to ``trained``."""
    cfg = run.config
    models = [
        network_from(cfg.model, run.num_classes, run.image_shape, state.to(run.device)) for state in states
    ]
    # quietly: validation and transition networks are many short trainings, each under the stage's bar
    runtime = replace(run.runtime, progress=False)
    accuracies = train_many(
        models, plans, generators=generators, augmentation=recipe.augmentation(), runtime=runtime, test=test
    )
    if trained is not None:
        trained.extend(flat_params(model).cpu() for model in models)
    return [acc[-1] for acc in accuracies] if test is not None else []
