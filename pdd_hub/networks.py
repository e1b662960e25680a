"""K networks of one architecture behind one interface: stacked parameters under ``torch.func.vmap``,
or one plain module.

The seeds of an evaluation, the start states of a transition, the validation networks of a stage and
the experts of a stage all train the same architecture on the same kind of data. Stacking their
parameters (``torch.func.stack_module_state``) and running one ``vmap``-ed ``functional_call`` turns K
small trainings into one of K-times larger operations; :class:`SingleNetwork` gives one module the same
interface, so that :func:`pdd_hub.train.train_networks` is the one training loop of both. SGD's
momentum and weight decay are element-wise, so every stacked network follows the path it would
follow alone, up to the rounding of the batched kernels.

Networks with buffers that training updates (BatchNorm's running statistics) cannot be stacked this
way; :func:`can_batch` says so and callers train those one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pdd_hub.params import flat_params, load_flat_params


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
    (faster than a one-network stack on a CPU), or, with ``compile``, its ``torch.compile``-d forward
    (the same parameters; the compiled code is shared by every network of one architecture, so only
    the first of a process pays the compilation)."""

    def __init__(self, model: nn.Module, compile: bool = False) -> None:
        self.template = model
        self.compiled = torch.compile(model) if compile else None

    def __len__(self) -> int:
        return 1

    def parameters(self) -> list[torch.Tensor]:
        return list(self.template.parameters())

    def flat(self) -> torch.Tensor:
        return flat_params(self.template)[None]

    def load_flat(self, states: torch.Tensor) -> None:
        load_flat_params(self.template, states[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.on_shared(x[0])

    def on_shared(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.template(x)[None]
        # compiled code is specialised to its input's strides, which DSA's transforms vary
        return self.compiled(x.contiguous())[None]


Networks = NetworkStack | SingleNetwork


def as_networks(models: Sequence[nn.Module], compile: bool = False) -> Networks:
    """A stack of ``models``, or the one model itself (compiled with ``compile``; stacks are not)."""
    return SingleNetwork(models[0], compile) if len(models) == 1 else NetworkStack.of(models)


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


@torch.no_grad()
def networks_accuracy(
    networks: Networks, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> list[float]:
    """Top-1 accuracy of every network on ``images`` (moved to the networks' device in chunks)."""
    device = networks.parameters()[0].device
    was_training = networks.template.training
    networks.template.eval()
    correct = torch.zeros(len(networks), dtype=torch.long, device=device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        correct += (networks.on_shared(x).argmax(dim=-1) == y).sum(dim=1)
    networks.template.train(was_training)
    return [count / max(1, len(images)) for count in correct.tolist()]
