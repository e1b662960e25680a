"""Models registered in timm on ``import pdd_hub``, and a factory that builds any timm model."""

from __future__ import annotations

import logging

import timm
import torch
from torch import nn

from pdd_hub.errors import ModelNotFoundError
from pdd_hub.models.convnet import ConvNet
from pdd_hub.models.resnet_cifar import ResNetCifar

__all__ = ["ConvNet", "ResNetCifar", "check_model_builds", "check_model_name", "create_model"]

logger = logging.getLogger(__name__)


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


def check_model_builds(name: str, num_classes: int, image_shape: tuple[int, int, int]) -> None:
    """Build ``name`` for these images and run two blank images through it, so that a network that
    cannot take them (too deep for the size, a patch size that does not fit, ...) fails now, with
    a clear :class:`ModelNotFoundError`, not in the middle of a run."""
    check_model_name(name)
    channels, height, width = image_shape
    collapsed: list[str] = []
    try:
        model = create_model(name, num_classes, channels, height).eval()
        hooks = [
            module.register_forward_hook(
                lambda _m, inputs, _o, where=where: (
                    collapsed.append(where) if inputs[0].shape[2:].numel() == 1 else None
                )
            )
            for where, module in model.named_modules()
            if _normalises_each_map_alone(module)
        ]
        with torch.no_grad():
            out = model(torch.zeros(2, channels, height, width))
        for hook in hooks:
            hook.remove()
    except Exception as exc:  # timm and torch raise many types here; the user needs the reason
        raise ModelNotFoundError(
            f"model {name!r} cannot take {channels}x{height}x{width} images with {num_classes} classes: {exc}"
        ) from exc
    if tuple(out.shape) != (2, num_classes):
        raise ModelNotFoundError(
            f"model {name!r} returns {tuple(out.shape)} for 2 images, not (2, {num_classes})"
        )
    if collapsed:
        # instance norm of a single value is always its bias: everything after it ignores the image
        logger.warning(
            "model %r shrinks %dx%d images to 1x1 feature maps before its instance norm (%s), which then "
            "outputs a constant: expect chance accuracy. Use a batch-norm variant (e.g. resnet18_cifar_bn) "
            "or larger images.",
            name,
            height,
            width,
            collapsed[0],
        )


def _normalises_each_map_alone(module: nn.Module) -> bool:
    if isinstance(module, nn.GroupNorm):
        return module.num_groups == module.num_channels
    return isinstance(module, nn.InstanceNorm2d)
