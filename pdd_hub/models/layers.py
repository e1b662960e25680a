"""Normalisation layers by the names the dataset-condensation literature uses."""

from __future__ import annotations

from torch import nn

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
_ALIASES = {"instance": "instancenorm", "batch": "batchnorm", "layer": "layernorm", "group": "groupnorm"}


def make_norm(norm: str, channels: int, spatial: tuple[int, int] | None = None) -> nn.Module:
    """A norm layer for ``channels`` feature maps. ``instancenorm`` is GroupNorm with one group per
    channel and affine weights, as in DC/MTT (it has no running statistics, so a functional
    unroll through it needs no buffers)."""
    norm = _ALIASES.get(norm, norm)
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "layernorm":
        if spatial is None:
            return nn.GroupNorm(1, channels, affine=True)
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; use one of {list(NORMS)}")
