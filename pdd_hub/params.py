"""Networks as flat parameter vectors: what trajectories store and what the unroll differentiates.

Only parameters travel this way (as in MTT): BatchNorm running statistics are not part of a
trajectory or a start state, so a batch-norm network restarts them at each hand-off. The default
distillation networks use instance norm, which has none.
"""

from __future__ import annotations

import torch
from torch import nn

from pdd_hub.models import create_model


def flat_params(model: nn.Module) -> torch.Tensor:
    """A new flat copy of ``model``'s parameters. (Never a view of the live weights: MTT's
    ``p.detach().cpu()`` aliases them on CPU, which made every saved epoch identical.)"""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def load_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector into ``model``'s parameters, in place."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the model {offset}")


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` keyed by ``model``'s parameter names, for ``torch.func.functional_call``."""
    out, offset = {}, 0
    for name, p in model.named_parameters():
        n = p.numel()
        out[name] = flat[offset : offset + n].view_as(p)
        offset += n
    return out


def build_network(
    model_name: str, num_classes: int, image_shape: tuple[int, int, int], seed: int | None = None
) -> nn.Module:
    """``model_name`` for these images; with ``seed``, its random init is reproducible and leaves the
    global RNG untouched."""
    channels, size = image_shape[0], image_shape[1]
    if seed is None:
        return create_model(model_name, num_classes, channels, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model_name, num_classes, channels, size)


def network_from(
    model_name: str, num_classes: int, image_shape: tuple[int, int, int], flat: torch.Tensor
) -> nn.Module:
    """A network of ``model_name`` holding the flat parameters ``flat``, on their device."""
    model = build_network(model_name, num_classes, image_shape).to(flat.device)
    load_flat_params(model, flat)
    return model


def momentum_buffers(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.Tensor | None:
    """An SGD optimiser's momentum buffers of ``model``'s parameters as one flat vector (``None``
    before its first step)."""
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in model.parameters()]
    if any(b is None for b in buffers):
        return None
    return torch.cat([b.reshape(-1) for b in buffers])


def set_momentum_buffers(optimizer: torch.optim.Optimizer, model: nn.Module, flat: torch.Tensor) -> None:
    """Restore what :func:`momentum_buffers` returned."""
    offset = 0
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def embed(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The features before the classifier (``[N, D]``; timm's ``forward_head(pre_logits=True)``)."""
    return network.forward_head(network.forward_features(images), pre_logits=True).flatten(1)
