"""The registered networks: exact sizes, shapes on the image formats we support, timm integration."""

from __future__ import annotations

import pytest
import timm
import torch

import pdd_hub  # noqa: F401  (registers the models)
from pdd_hub.errors import ModelNotFoundError
from pdd_hub.models import create_model

REGISTERED = [
    "convnet_d1",
    "convnet_d2",
    "convnet_d3",
    "convnet_d4",
    "convnet_d3_bn",
    "resnet10_cifar",
    "resnet18_cifar",
    "resnet10_cifar_bn",
    "resnet18_cifar_bn",
]
FORMATS = [(1, 28), (3, 32), (3, 64)]


def test_convnet_d3_has_the_published_parameter_count():
    model = timm.create_model("convnet_d3", num_classes=10, in_chans=3, img_size=32)
    assert sum(p.numel() for p in model.parameters()) == 320_010


def test_convnet_options_change_the_architecture():
    narrow = timm.create_model("convnet_d3", num_classes=10, width=64)
    assert sum(p.numel() for p in narrow.parameters()) < 320_010
    bn = timm.create_model("convnet_d3", num_classes=10, norm="batchnorm")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    inorm = timm.create_model("convnet_d3", num_classes=10)
    assert any(isinstance(m, torch.nn.GroupNorm) and m.num_groups == m.num_channels for m in inorm.modules())
    deep = timm.create_model("convnet_d3", num_classes=10, depth=4, img_size=64)
    assert deep(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("in_chans,size", FORMATS)
def test_registered_models_on_each_image_format(name, in_chans, size):
    model = timm.create_model(name, num_classes=7, in_chans=in_chans, img_size=size)
    out = model(torch.randn(3, in_chans, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_grey_28px_convnet_sees_32px_like_the_dc_code():
    grey = timm.create_model("convnet_d3", num_classes=10, in_chans=1, img_size=28)
    rgb = timm.create_model("convnet_d3", num_classes=10, in_chans=3, img_size=32)
    assert grey.classifier.in_features == rgb.classifier.in_features == 2048


def test_models_follow_timm_conventions():
    model = timm.create_model("resnet18_cifar", num_classes=10)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert set(timm.list_models("convnet_d*")) >= {"convnet_d3", "convnet_d4"}


def test_resnet_cifar_stem_keeps_resolution():
    model = timm.create_model("resnet18_cifar", num_classes=10)
    assert model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sum(p.numel() for p in timm.create_model("resnet18_cifar_bn", num_classes=10).parameters()) > 11e6


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050", "vit_tiny_patch16_224"])
def test_any_timm_model_can_be_built_for_small_images(name):
    model = create_model(name, num_classes=10, in_chans=3, img_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_gets_the_image_size():
    model = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=3, img_size=32)
    assert tuple(model.patch_embed.img_size) == (32, 32)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="convnet_d33"):
        create_model("convnet_d33", num_classes=10, in_chans=3, img_size=32)
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        create_model("resnet18_cifr", num_classes=10, in_chans=3, img_size=32)


def test_instance_norm_on_one_pixel_maps_is_flagged(caplog):
    from pdd_hub.models import check_model_builds

    with caplog.at_level("WARNING", logger="pdd_hub.models"):
        check_model_builds("resnet18_cifar", 10, (1, 8, 8))
    assert "1x1 feature maps" in caplog.text and "resnet18_cifar_bn" in caplog.text
    # the network really does ignore its input there: two different images, one output
    model = create_model("resnet18_cifar", 10, 1, 8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert torch.allclose(out[0], out[1], atol=1e-4)  # equal up to the kernels' rounding

    caplog.clear()
    with caplog.at_level("WARNING", logger="pdd_hub.models"):
        check_model_builds("resnet18_cifar_bn", 10, (1, 8, 8))
        check_model_builds("resnet18_cifar", 10, (3, 32, 32))
        check_model_builds("convnet_d3", 10, (1, 8, 8))
    assert caplog.text == ""


def test_every_registered_model_has_a_pretrained_cfg_timm_reads():
    ours = timm.list_models(module=["convnet", "resnet_cifar"])
    assert set(REGISTERED) <= set(ours) and "convnet_d5" in ours
    for name in ours:
        cfg = timm.get_pretrained_cfg(name)
        assert cfg is not None and not cfg.has_weights, name
        assert len(cfg.input_size) == 3 and len(cfg.mean) == len(cfg.std) == 3 and cfg.num_classes > 0
        model = timm.create_model(name)
        assert model.pretrained_cfg["architecture"] == name
        data = timm.data.resolve_data_config(model=model)
        assert data["input_size"] == cfg.input_size and data["mean"] == cfg.mean
        # the model built for the images it trains on says so
        model = timm.create_model(name, num_classes=10, in_chans=1, img_size=8 if "d1" in name else 28)
        size = 8 if "d1" in name else 28
        assert timm.data.resolve_data_config(model=model)["input_size"] == (1, size, size)
        assert len(model.pretrained_cfg["mean"]) == 1
    assert timm.get_pretrained_cfg("convnet_d3").mean == (0.4914, 0.4822, 0.4465)
    assert timm.get_pretrained_cfg("convnet_d4").input_size == (3, 64, 64)
