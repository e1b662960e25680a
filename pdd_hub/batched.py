"""Many networks of one architecture trained at once: stacked parameters and ``torch.func.vmap``.

The seeds of an evaluation, the start states of a transition, the validation networks of a stage and
the experts of a stage all train the same architecture on the same kind of data. Stacking their
parameters (``torch.func.stack_module_state``) and running one ``vmap``-ed ``functional_call`` turns K
small trainings into one of K-times larger operations. Each network keeps its own random stream
(minibatch order, DSA and CutMix draws, in the same order as :func:`pdd_hub.train.train_epoch`), and
SGD's momentum and weight decay are element-wise, so every network follows the path it would follow
alone, up to the rounding of the batched kernels.

Networks with buffers that training updates (BatchNorm's running statistics) cannot be stacked this
way; :func:`can_batch` says so and callers train those one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from pdd_hub.augment import DSA, CutMix
from pdd_hub.params import flat_params, load_flat_params
from pdd_hub.runtime import autocast
from pdd_hub.train import StagePlan, evaluate_accuracy, lr_at, train_stages


def can_batch(model: nn.Module) -> bool:
    """Whether ``model`` has no buffers (running statistics), so stacked copies can train under vmap."""
    return next(model.buffers(), None) is None


class NetworkStack:
    """K networks of ``template``'s architecture as stacked parameters ``{name: [K, *shape]}``."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor]) -> None:
        if not can_batch(template):
            raise ValueError(
                f"{type(template).__name__} has buffers (e.g. BatchNorm statistics): not batchable"
            )
        self.template = template
        self.params = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}

    @classmethod
    def of(cls, models: Sequence[nn.Module]) -> NetworkStack:
        """A stack of copies of ``models`` (all of one architecture)."""
        params, _ = stack_module_state(list(models))
        return cls(models[0], params)

    @classmethod
    def from_flat(cls, template: nn.Module, states: torch.Tensor) -> NetworkStack:
        """A stack of ``template``'s architecture with the flat parameter vectors ``states`` ``[K, P]``."""
        params, offset = {}, 0
        for name, p in template.named_parameters():
            params[name] = states[:, offset : offset + p.numel()].reshape(len(states), *p.shape)
            offset += p.numel()
        return cls(template, params)

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def flat(self) -> torch.Tensor:
        """The K flat parameter vectors ``[K, P]`` (detached)."""
        return torch.cat([p.detach().reshape(len(self), -1) for p in self.params.values()], dim=1)

    def load_flat(self, states: torch.Tensor) -> None:
        """Set the K networks to the flat parameter vectors ``states`` ``[K, P]``, in place."""
        offset = 0
        with torch.no_grad():
            for p in self.params.values():
                n = p[0].numel()
                p.copy_(states[:, offset : offset + n].reshape(p.shape))
                offset += n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, B, classes]`` of network k on ``x[k]`` (``x``: ``[K, B, C, H, W]``)."""
        return vmap(self._forward)(self.params, x)

    def on_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, B, classes]`` of every network on the same batch ``x`` ``[B, C, H, W]``."""
        return vmap(self._forward, in_dims=(0, None))(self.params, x)

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, params, (x,))


class SingleNetwork:
    """One network behind :class:`NetworkStack`'s interface (K = 1), running the module itself
    (faster than a one-network stack on a CPU)."""

    def __init__(self, model: nn.Module) -> None:
        self.template = model

    def __len__(self) -> int:
        return 1

    def parameters(self) -> list[torch.Tensor]:
        return list(self.template.parameters())

    def flat(self) -> torch.Tensor:
        return flat_params(self.template)[None]

    def load_flat(self, states: torch.Tensor) -> None:
        load_flat_params(self.template, states[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.template(x[0])[None]

    def on_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.template(x)[None]


Networks = NetworkStack | SingleNetwork


def as_networks(models: Sequence[nn.Module]) -> Networks:
    """A stack of ``models``, or the one model itself."""
    return SingleNetwork(models[0]) if len(models) == 1 else NetworkStack.of(models)


def momentum_of(optimizer: torch.optim.Optimizer, networks: Networks) -> torch.Tensor | None:
    """The SGD momentum of each network as ``[K, P]`` (``None`` before the first step)."""
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in networks.parameters()]
    if any(b is None for b in buffers):
        return None
    return torch.cat([b.reshape(len(networks), -1) for b in buffers], dim=1)


def set_momentum_of(optimizer: torch.optim.Optimizer, networks: Networks, flat: torch.Tensor) -> None:
    """Restore what :func:`momentum_of` returned."""
    offset = 0
    for p in networks.parameters():
        n = p.numel() // len(networks)
        optimizer.state[p]["momentum_buffer"] = flat[:, offset : offset + n].reshape(p.shape).clone()
        offset += n


def train_stack(
    stack: NetworkStack,
    plans: list[StagePlan],
    *,
    augment: DSA | None,
    generators: Sequence[torch.Generator],
    cutmix: CutMix | None = None,
    precision: str = "fp32",
    after_stage: Callable[[int, NetworkStack], None] | None = None,
    progress: bool = False,
    description: str = "train",
) -> None:
    """:func:`pdd_hub.train.train_stages` for every network of ``stack`` at once, network k drawing
    from ``generators[k]``: one SGD optimiser over the stacked parameters, state carried across
    stages, each stage's LR schedule restarted."""
    first = plans[0]
    optimizer = torch.optim.SGD(
        stack.parameters(), lr=first.lr, momentum=first.momentum, weight_decay=first.weight_decay
    )
    device = stack.parameters()[0].device
    stack.template.train()
    bar = tqdm(total=sum(p.epochs for p in plans), desc=description, disable=not progress, leave=False)
    for k, plan in enumerate(plans):
        images, labels = plan.images.to(device), plan.labels.to(device)
        for epoch in range(plan.epochs):
            for group in optimizer.param_groups:
                group.update(
                    lr=lr_at(plan.lr_schedule, plan.lr, epoch, plan.epochs),
                    momentum=plan.momentum,
                    weight_decay=plan.weight_decay,
                )
            train_stack_epoch(
                stack, optimizer, images, labels, plan.batch_size, augment, generators, cutmix, precision
            )
            bar.update(1)
        if after_stage is not None:
            after_stage(k, stack)
    bar.close()


def train_stack_epoch(
    stack: NetworkStack,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    augment: DSA | None,
    generators: Sequence[torch.Generator],
    cutmix: CutMix | None = None,
    precision: str = "fp32",
) -> None:
    """One shuffled pass over ``images`` for every network, each in its own order."""
    orders = [torch.randperm(len(images), generator=g).to(images.device) for g in generators]
    for start in range(0, len(images), batch_size):
        batches = [
            minibatch(images, labels, order[start : start + batch_size], augment, g, cutmix)
            for order, g in zip(orders, generators, strict=True)
        ]
        x, y, partner = (torch.stack([b[i] for b in batches]) for i in range(3))
        weight = torch.tensor([b[3] for b in batches], device=x.device)
        with autocast(x.device, precision):
            logits = stack(x).flatten(0, 1)
            own = F.cross_entropy(logits, y.flatten(), reduction="none").view(len(stack), -1).mean(1)
            mixed = F.cross_entropy(logits, partner.flatten(), reduction="none").view(len(stack), -1).mean(1)
            # summed over networks, so that each network's gradient is that of its own mean loss
            loss = (weight * own + (1 - weight) * mixed).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def minibatch(
    images: torch.Tensor,
    labels: torch.Tensor,
    idx: torch.Tensor,
    augment: DSA | None,
    generator: torch.Generator,
    cutmix: CutMix | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One network's augmented minibatch: images, labels, CutMix partner labels and own-label weight,
    drawn in :func:`pdd_hub.train.minibatch_loss`'s order."""
    x, y = images[idx], labels[idx]
    if augment is not None:
        x = augment(x, generator)
    if cutmix is None:
        return x, y, y, 1.0
    x, partner, weight = cutmix(x, y, generator)
    return x, y, partner, weight


@torch.no_grad()
def stack_accuracy(
    stack: NetworkStack, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> list[float]:
    """Top-1 accuracy of every network of ``stack`` on ``images`` (moved in chunks to its device)."""
    device = stack.parameters()[0].device
    was_training = stack.template.training
    stack.template.eval()
    correct = torch.zeros(len(stack), device=device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        correct += (stack.on_shared(x).argmax(dim=-1) == y).sum(dim=1)
    stack.template.train(was_training)
    return (correct / max(1, len(images))).tolist()


def train_many(
    models: Sequence[nn.Module],
    plans: list[StagePlan],
    *,
    augment: DSA | None,
    generators: Sequence[torch.Generator],
    cutmix: CutMix | None = None,
    batched: bool = False,
    precision: str = "fp32",
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
    description: str = "train",
) -> list[list[float]]:
    """Train every model (in place) through ``plans``, model k drawing from ``generators[k]``; stacked
    under vmap when ``batched`` (and the models allow it), else one after the other. With ``test``,
    returns each model's accuracy on it after every stage (``[model][stage]``)."""
    accuracies: list[list[float]] = [[] for _ in models]
    if batched and len(models) > 1 and can_batch(models[0]):
        stack = NetworkStack.of(models)

        def test_stack(_stage: int, trained: NetworkStack) -> None:
            for k, acc in enumerate(stack_accuracy(trained, *test)):
                accuracies[k].append(acc)

        train_stack(
            stack,
            plans,
            augment=augment,
            generators=generators,
            cutmix=cutmix,
            precision=precision,
            after_stage=test_stack if test is not None else None,
            progress=progress,
            description=description,
        )
        for k, model in enumerate(models):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(stack.params[name][k])
        return accuracies
    for k, (model, generator) in enumerate(zip(models, generators, strict=True)):

        def test_one(_stage: int, trained: nn.Module, k: int = k) -> None:
            accuracies[k].append(evaluate_accuracy(trained, *test))

        train_stages(
            model,
            plans,
            augment=augment,
            cutmix=cutmix,
            generator=generator,
            precision=precision,
            after_stage=test_one if test is not None else None,
            progress=progress,
            description=description,
        )
    return accuracies
