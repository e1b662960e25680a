"""Training any model on a sequence of synthetic stages, the way PDD prescribes, and evaluating it.

``progressive``: stage_1, then stage_1 ∪ stage_2, ... (the PDD protocol); ``sequential``: each stage
alone, in order; ``union``: all stages at once. Each stage trains with its own LR and epochs and the
recipe of the method that made it (:class:`TrainingRecipe`: the stage's :class:`SGDRecipe`, by
default momentum 0.9 and weight decay 5e-4 with the LR schedule restarted at every stage, and DSA
and, for IDC, CutMix on every minibatch). One
optimiser lives across stages, so its momentum carries over, as in the official evaluations. The
synthetic set is tiny, so it stays on the device: minibatches are index slices, no DataLoader.
:func:`train_networks` is the one loop: it trains one module or K stacked networks
(:mod:`pdd_hub.networks`) with the same per-network random draws, so the seeds of an evaluation, the
start states of a transition and the validation networks train the same way batched or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdd_hub.augment import DSA, CutMix, build_augment
from pdd_hub.hub import PDDDataset
from pdd_hub.networks import Networks, NetworkStack, SingleNetwork, can_batch, networks_accuracy
from pdd_hub.params import load_flat_params
from pdd_hub.runtime import PLAIN, TrainingRuntime, autocast
from pdd_hub.schedule import SGDRecipe

MODES = ("progressive", "sequential", "union")


@dataclass(frozen=True)
class TrainingRecipe:
    """How networks train on a method's images: each stage's SGD (``sgd``; its LR is the stage's
    own where the method learns one) and the augmentation of every minibatch. Written into
    ``pdd_schedule.json`` (stage entries and ``training``) so that any user, and ``pdd-hub eval``,
    trains each export the way its method says."""

    sgd: SGDRecipe = field(default_factory=SGDRecipe)
    augment: str = "dsa"
    cutmix_prob: float = 0.0
    cutmix_beta: float = 1.0

    def training_dict(self) -> dict[str, Any]:
        """The schedule's ``training`` entry: augmentation and CutMix (``None`` when off)."""
        cutmix = {"prob": self.cutmix_prob, "beta": self.cutmix_beta} if self.cutmix_prob > 0 else None
        return {"augment": self.augment, "cutmix": cutmix}

    def augmentation(self) -> Augmentation:
        """The DSA and CutMix to train with."""
        return recipe_augmentation(self.training_dict())


@dataclass(frozen=True)
class Augmentation:
    """What every training minibatch goes through: DSA per example, then CutMix (``None``: off)."""

    dsa: DSA | None = None
    cutmix: CutMix | None = None


def recipe_augmentation(training: dict[str, Any]) -> Augmentation:
    """The DSA and CutMix of a schedule's ``training`` entry."""
    cutmix = training.get("cutmix")
    return Augmentation(build_augment(training.get("augment", "dsa")), CutMix(**cutmix) if cutmix else None)


@dataclass
class StagePlan:
    """One phase of training: these images, with this recipe."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    recipe: SGDRecipe


def plan_stages(
    pdd: PDDDataset, mode: str = "progressive", epochs_per_stage: int | None = None
) -> list[StagePlan]:
    """The training phases for ``mode`` from a loaded export (``epochs_per_stage`` overrides the
    schedule's epochs, e.g. for a quick look). ``union`` trains once on everything with the last
    stage's recipe, which is what the last progressive phase sees too."""
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; use one of {list(MODES)}")
    plans = []
    specs = pdd.schedule.stages
    for k in [len(specs)] if mode == "union" else range(1, len(specs) + 1):
        spec = specs[k - 1]
        if mode == "sequential":
            images, labels, name = pdd.stages[k - 1].images, pdd.stages[k - 1].labels, spec.split
        else:
            images, labels = pdd.union(k)
            name = "union" if mode == "union" else (specs[0].split if k == 1 else f"{specs[0].split}..{k}")
        recipe = spec.recipe if epochs_per_stage is None else replace(spec.recipe, epochs=epochs_per_stage)
        plans.append(StagePlan(name, images, labels, recipe))
    return plans


def train_stages(
    model: nn.Module,
    plans: list[StagePlan],
    *,
    generator: torch.Generator,
    augmentation: Augmentation = Augmentation(),
    after_stage: Callable[[int, nn.Module], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    runtime: TrainingRuntime = PLAIN,
    description: str = "train",
) -> torch.optim.Optimizer:
    """Train ``model`` (already on its device) through ``plans`` with one SGD optimiser whose state
    carries across stages; ``after_stage(k, model)`` runs after each. Returns the optimiser so a
    caller can continue training with its momentum."""
    return train_networks(
        SingleNetwork(model),
        plans,
        generators=[generator],
        augmentation=augmentation,
        after_stage=None if after_stage is None else lambda k, _: after_stage(k, model),
        optimizer=optimizer,
        runtime=runtime,
        description=description,
    )


def train_networks(
    networks: Networks,
    plans: list[StagePlan],
    *,
    generators: Sequence[torch.Generator],
    augmentation: Augmentation = Augmentation(),
    after_stage: Callable[[int, Networks], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    runtime: TrainingRuntime = PLAIN,
    description: str = "train",
) -> torch.optim.Optimizer:
    """:func:`train_stages` for K networks at once (one module, or a stack under vmap), network k
    drawing from ``generators[k]``; stage k's LR schedule restarts, the optimiser's state carries."""
    device = networks.parameters()[0].device
    if optimizer is None:
        optimizer = plans[0].recipe.build_optimizer(networks.parameters())
    total = sum(p.recipe.epochs for p in plans)
    bar = tqdm(total=total, desc=description, disable=not runtime.progress, leave=False)
    for k, plan in enumerate(plans):
        images, labels, recipe = plan.images.to(device), plan.labels.to(device), plan.recipe
        networks.template.train()
        for epoch in range(recipe.epochs):
            recipe.set_epoch(optimizer, epoch)
            train_epoch(
                networks,
                optimizer,
                images,
                labels,
                recipe.batch_size,
                augmentation,
                generators,
                runtime.precision,
            )
            bar.update(1)
        if after_stage is not None:
            after_stage(k, networks)
    bar.close()
    return optimizer


def train_epoch(
    networks: Networks,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    augmentation: Augmentation,
    generators: Sequence[torch.Generator],
    precision: str = "fp32",
) -> None:
    """One shuffled pass over ``images`` for every network, each in its own order and with its own
    augmentation draws."""
    orders = [torch.randperm(len(images), generator=g).to(images.device) for g in generators]
    for start in range(0, len(images), batch_size):
        batches = []
        for order, generator in zip(orders, generators, strict=True):
            idx = order[start : start + batch_size]
            dsa, cutmix = augmentation.dsa, augmentation.cutmix
            batches.append(augmented_minibatch(images[idx], labels[idx], dsa, generator, cutmix))
        x, y, partner = (torch.stack([b[i] for b in batches]) for i in range(3))
        weights = [b[3] for b in batches]
        weight = None if all(w == 1.0 for w in weights) else torch.tensor(weights, device=x.device)
        with autocast(x.device, precision):
            # summed over networks, so that each network's gradient is that of its own mean loss
            loss = mixed_cross_entropy(networks(x), y, partner, weight).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def augmented_minibatch(
    x: torch.Tensor, y: torch.Tensor, augment: DSA | None, generator: torch.Generator, cutmix: CutMix | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One network's minibatch after DSA (per example) and CutMix: images, labels, the CutMix
    partners' labels and the weight of the own labels (``y`` and 1 without CutMix)."""
    if augment is not None:
        x = augment(x, generator)
    if cutmix is None:
        return x, y, y, 1.0
    x, partner, weight = cutmix(x, y, generator)
    return x, y, partner, weight


def mixed_cross_entropy(
    logits: torch.Tensor,
    y: torch.Tensor,
    partner: torch.Tensor,
    weight: torch.Tensor | None,
    example_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each network's mean CutMix loss ``weight * CE(y) + (1 - weight) * CE(partner)``: ``[K]`` from
    logits ``[K, B, classes]``, labels ``[K, B]`` and weights ``[K]`` (``None``: no mixing); with
    ``example_weights`` ``[K, B]`` (importance sampling) each example's loss counts that much."""
    flat = logits.flatten(0, 1)

    def mean_loss(targets: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(flat, targets.flatten(), reduction="none").view(len(y), -1)
        return (losses if example_weights is None else losses * example_weights).mean(1)

    own = mean_loss(y)
    return own if weight is None else weight * own + (1 - weight) * mean_loss(partner)


def minibatch_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    augment: DSA | None,
    generator: torch.Generator,
    cutmix: CutMix | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of one augmented minibatch of one model (DSA per example, then CutMix with
    mixed labels), each example counted ``weights`` times if given (importance sampling)."""
    x, y, partner, weight = augmented_minibatch(x, y, augment, generator, cutmix)
    mixing = None if weight == 1.0 else torch.tensor([weight], device=x.device)
    example_weights = None if weights is None else weights.to(x.device)[None]
    return mixed_cross_entropy(model(x)[None], y[None], partner[None], mixing, example_weights)[0]


def train_many(
    models: Sequence[nn.Module],
    plans: list[StagePlan],
    *,
    generators: Sequence[torch.Generator],
    augmentation: Augmentation = Augmentation(),
    runtime: TrainingRuntime = PLAIN,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    description: str = "train",
) -> list[list[float]]:
    """Train every model (in place) through ``plans``, model k drawing from ``generators[k]``; stacked
    under vmap when ``runtime.batched`` (and the models allow it), else one after the other, each
    through ``torch.compile`` with ``runtime.compile``. With ``test``, returns each model's accuracy
    on it after every stage (``[model][stage]``)."""
    if runtime.batched and len(models) > 1 and can_batch(models[0]):
        groups = [(NetworkStack.of(models), list(range(len(models))))]
    else:
        groups = [(SingleNetwork(model, runtime.compile), [k]) for k, model in enumerate(models)]
    accuracies: list[list[float]] = [[] for _ in models]
    for networks, members in groups:

        def test_after_stage(_stage: int, trained: Networks, members: list[int] = members) -> None:
            for k, acc in zip(members, networks_accuracy(trained, *test), strict=True):
                accuracies[k].append(acc)

        train_networks(
            networks,
            plans,
            generators=[generators[k] for k in members],
            augmentation=augmentation,
            after_stage=test_after_stage if test is not None else None,
            runtime=runtime,
            description=description,
        )
        if isinstance(networks, NetworkStack):
            for model, trained in zip(models, networks.flat(), strict=True):
                load_flat_params(model, trained)
    return accuracies


def evaluate_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` on preprocessed ``images`` (moved to the model's device in chunks)."""
    return networks_accuracy(SingleNetwork(model), images, labels, batch_size)[0]
