"""Models registered in timm on ``import pdd_hub``, and a factory that builds any timm model."""

from __future__ import annotations

import timm
from torch import nn

from pdd_hub.errors import ModelNotFoundError
from pdd_hub.models.convnet import ConvNet
from pdd_hub.models.resnet_cifar import ResNetCifar

__all__ = ["ConvNet", "ResNetCifar", "check_model_name", "create_model"]


def check_model_name(name: str) -> None:
    """Raise :class:`ModelNotFoundError` (with close matches) unless timm knows ``name``."""
    if timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ModelNotFoundError(f"timm does not know a model named {name!r}{hint}")


def create_model(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
    """``timm.create_model`` for our data. ``img_size`` goes to the models that take it (ViTs and
    ours); most CNNs adapt to any size and reject the argument, so they are built without it."""
    check_model_name(name)
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs
        )
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
