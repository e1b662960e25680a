"""ConvNet of the dataset-condensation literature (DC, DSA, DM, MTT, PDD), registered in timm.

``depth`` blocks of [3x3 conv (width channels) -> norm -> ReLU -> 2x2 average pool], then one linear
classifier on the flattened feature map. ``convnet_d3`` on 3x32x32 with 10 classes has 320,010
parameters, the network behind the published PDD/MTT numbers.
"""

from __future__ import annotations

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from pdd_hub.models.layers import ClassifierHead, build_untrained, make_norm, untrained_cfg


class ConvNet(ClassifierHead):
    """DC/MTT ConvNet. ``norm`` is ``instancenorm`` (the literature's default: GroupNorm with one
    group per channel, affine), ``batchnorm``, ``layernorm`` or ``none``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        pooling: str = "avgpool",
        drop_rate: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__()
        height, wid = (img_size, img_size) if isinstance(img_size, int) else img_size
        layers: list[nn.Module] = []
        channels = in_chans
        for d in range(depth):
            # The DC code pads 28x28 grey inputs (MNIST-like) by 3 on the first conv so that they are
            # processed at 32x32, which keeps the published MNIST/FashionMNIST numbers comparable.
            padding = 3 if (d == 0 and in_chans == 1 and (height, wid) == (28, 28)) else 1
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=padding))
            height, wid = height + 2 * padding - 2, wid + 2 * padding - 2
            layers.append(make_norm(norm, width, (height, wid)))
            layers.append(nn.ReLU(inplace=True))
            if pooling == "avgpool":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            elif pooling == "maxpool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif pooling != "none":
                raise ValueError(f"unknown pooling {pooling!r}; use avgpool, maxpool or none")
            if pooling != "none":
                height, wid = height // 2, wid // 2
            if height < 1 or wid < 1:
                raise ValueError(f"ConvNet of depth {depth} is too deep for {img_size} inputs")
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, height, wid)
        self.num_features = width * height * wid  # what forward_head(pre_logits=True) returns
        self.init_head(self.num_features, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _convnet(variant: str, default_depth: int, **kwargs) -> ConvNet:
    kwargs.setdefault("depth", default_depth)
    return build_untrained(ConvNet, variant, **kwargs)


def _cfg(size: int, num_classes: int = 10) -> dict:
    # ConvNet's classifier reads the flattened last feature map: its input size is fixed
    return untrained_cfg((3, size, size), num_classes, "features.0", True, imagenet_stats=size > 32)


# what timm knows about each network (registered with it below): the input and classes it is sized
# for by default (ConvNet-D4: Tiny-ImageNet, D5: 128 px ImageNet subsets), and the normalisation
default_cfgs = generate_default_cfgs(
    {
        "convnet_d1": _cfg(32),
        "convnet_d2": _cfg(32),
        "convnet_d3": _cfg(32),
        "convnet_d4": _cfg(64, 200),
        "convnet_d5": _cfg(128),
        "convnet_d3_bn": _cfg(32),
    }
)


@register_model
def convnet_d1(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet with one conv block."""
    return _convnet("convnet_d1", 1, **kwargs)


@register_model
def convnet_d2(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet with two conv blocks."""
    return _convnet("convnet_d2", 2, **kwargs)


@register_model
def convnet_d3(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet-D3, the standard distillation network for 32x32 images."""
    return _convnet("convnet_d3", 3, **kwargs)


@register_model
def convnet_d4(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet-D4, the standard distillation network for 64x64 images (Tiny-ImageNet)."""
    return _convnet("convnet_d4", 4, **kwargs)


@register_model
def convnet_d5(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet with five conv blocks (128x128 images)."""
    return _convnet("convnet_d5", 5, **kwargs)


@register_model
def convnet_d3_bn(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet-D3 with batch norm (the literature's ConvNetBN)."""
    kwargs.setdefault("norm", "batchnorm")
    return _convnet("convnet_d3_bn", 3, **kwargs)
