"""ResNet-10/18 for small images (CIFAR-style): 3x3 stride-1 stem, no max-pool, registered in timm.

The dataset-condensation literature evaluates cross-architecture transfer on these; as there, the
default norm is instance norm, with ``*_bn`` variants (or ``norm="batchnorm"``) for batch norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from pdd_hub.models.layers import ClassifierHead, build_untrained, make_norm, untrained_cfg


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), make_norm(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(ClassifierHead):
    """ResNet with a CIFAR stem; ``layers`` blocks per stage, widths 64-128-256-512."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        norm: str = "instancenorm",
        drop_rate: float = 0.0,
        **_: object,  # img_size and timm's pretrained_* kwargs: the network adapts to any size
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(norm, 64)
        stages, in_planes = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            for b in range(blocks):
                stages.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, norm))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.num_features = in_planes
        self.init_head(in_planes, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _resnet(variant: str, layers: tuple[int, int, int, int], default_norm: str, **kwargs) -> ResNetCifar:
    kwargs.setdefault("norm", default_norm)
    return build_untrained(ResNetCifar, variant, layers=layers, **kwargs)


# what timm knows about each network: CIFAR-sized by default; global pooling takes any input size
default_cfgs = generate_default_cfgs(
    {
        name: untrained_cfg((3, 32, 32), 10, "conv1", fixed_input_size=False)
        for name in ("resnet10_cifar", "resnet18_cifar", "resnet10_cifar_bn", "resnet18_cifar_bn")
    }
)


@register_model
def resnet10_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-10 (one block per stage), CIFAR stem, instance norm."""
    return _resnet("resnet10_cifar", (1, 1, 1, 1), "instancenorm", **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-18, CIFAR stem, instance norm."""
    return _resnet("resnet18_cifar", (2, 2, 2, 2), "instancenorm", **kwargs)


@register_model
def resnet10_cifar_bn(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-10, CIFAR stem, batch norm."""
    return _resnet("resnet10_cifar_bn", (1, 1, 1, 1), "batchnorm", **kwargs)


@register_model
def resnet18_cifar_bn(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-18, CIFAR stem, batch norm."""
    return _resnet("resnet18_cifar_bn", (2, 2, 2, 2), "batchnorm", **kwargs)
