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


# the reference code's normalisation for the data each network is sized for (pdd_hub.data.transforms)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def untrained_cfg(
    input_size: tuple[int, int, int],
    num_classes: int,
    first_conv: str,
    fixed_input_size: bool,
    imagenet_stats: bool = False,
) -> dict:
    """timm's ``pretrained_cfg`` of a network pdd-hub registers: no weights (no URL, no Hub id), the
    input and classes it is sized for by default, the normalisation of the reference code for that
    data (CIFAR's, or ImageNet's for the 64 px and larger networks), its first conv and classifier."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_stats else (CIFAR_MEAN, CIFAR_STD)
    return {
        "input_size": input_size,
        "num_classes": num_classes,
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": first_conv,
        "classifier": "classifier",
        "fixed_input_size": fixed_input_size,
        "license": "apache-2.0",
    }


def build_untrained(model_cls: type[nn.Module], variant: str, **kwargs) -> nn.Module:
    """``model_cls(**kwargs)`` built by timm's ``build_model_with_cfg``, so that it carries its
    ``pretrained_cfg``, with the ``input_size`` (and, for another channel count, the mean and std
    averaged over channels) of the images it is built for. These networks have no weights:
    ``pretrained`` is ignored."""
    from timm.models import build_model_with_cfg, get_pretrained_cfg

    kwargs.pop("pretrained", None)
    default = get_pretrained_cfg(variant)
    channels = kwargs.get("in_chans", default.input_size[0])
    size = kwargs.get("img_size", default.input_size[1:])
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    overlay = {**(kwargs.pop("pretrained_cfg_overlay", None) or {}), "input_size": (channels, height, width)}
    if channels != len(default.mean):
        overlay["mean"] = (sum(default.mean) / len(default.mean),) * channels
        overlay["std"] = (sum(default.std) / len(default.std),) * channels
    return build_model_with_cfg(
        model_cls, variant, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs
    )
