"""Normalisation layers by the names the dataset-condensation literature uses."""

from __future__ import annotations

import torch
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


class ClassifierHead(nn.Module):
    """The timm-style head both model families share: pool, dropout, linear classifier, with
    ``forward_features``/``forward_head``/``get_classifier``/``reset_classifier``."""

    num_classes: int
    head_in: int
    drop_rate: float

    def init_head(self, head_in: int, num_classes: int, drop_rate: float) -> None:
        self.head_in = head_in
        self.drop_rate = drop_rate
        self.reset_classifier(num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_in, num_classes) if num_classes > 0 else nn.Identity()


def without_pretrained_kwargs(kwargs: dict) -> dict:
    """timm passes ``pretrained*`` arguments to every entrypoint; these networks have no weights."""
    return {
        k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay")
    }
