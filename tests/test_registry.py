"""The method registry: a new method is one class and runs on the unchanged driver; config sections per
method; bad method names, sections and data fail before any work, naming the problem."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pdd_hub.config import MethodConfig, PDDConfig, config_from_dict, load_config, positive
from pdd_hub.configs import list_configs
from pdd_hub.errors import ConfigError
from pdd_hub.hub import load_pdd
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.progressive import run_pdd
from pdd_hub.registry import METHODS, Entry, register_method

BUILT_IN = ("dc", "dm", "dsa", "idc", "mtt")


@dataclass
class ToyConfig(MethodConfig):
    """Pull every image of a class towards the mean of the class's real images."""

    lr_img: float = positive(0.5)
    num_networks: int = positive(2)


@register_method("toy", ToyConfig)
class Toy(Distiller):
    """A toy method: squared distance of each synthetic image to its class's real mean."""

    calls = 0

    def __init__(self, config, run, num_classes, image_shape):
        super().__init__(config, run, num_classes, image_shape)
        self.num_start_states = config.num_networks

    def begin_stage(self, ctx: StageContext) -> None:
        real = ctx.real
        self.means = torch.stack([real.images[real.labels == c].mean(0) for c in range(self.num_classes)])

    def image_optimizer(self) -> dict[str, float]:
        return {"lr": self.config.lr_img, "momentum": 0.0}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return (images - self.means[labels]).pow(2).mean()


TOY_RUN = {
    "dataset": "sklearn:digits",
    "method": "toy",
    "model": "convnet_d1",
    "num_stages": 2,
    "ipc_per_stage": 1,
    "iterations": 3,
    "val_per_class": 100,
    "train_epochs_per_stage": 2,
    "checkpoint_every": 2,
    "progress": False,
    "transition": {"syn_epochs": 2},
    "eval": {"every": 3, "num_models": 1, "epochs": 2},
    "toy": {"lr_img": 0.5},
}


def test_a_registered_toy_method_runs_on_the_unchanged_driver(tmp_path):
    assert "toy" in METHODS.names()
    config = config_from_dict({**copy.deepcopy(TOY_RUN), "output_dir": str(tmp_path / "run")})
    assert config.toy.lr_img == 0.5 and config.to_dict()["toy"] == {"lr_img": 0.5, "num_networks": 2}
    run_pdd(config, Accelerator(cpu=True))
    pdd = load_pdd(tmp_path / "run" / "dataset")
    assert pdd.schedule.method == "toy" and pdd.num_stages == 2
    assert Toy.calls == 6  # 3 iterations x 2 stages
    # the images moved towards their class means, and stage 1 stayed as it was during stage 2
    stage_1 = load_file(str(tmp_path / "run" / "stages" / "stage_1.safetensors"))["images"]
    assert torch.equal(pdd.stages[0].images, stage_1)
    assert load_file(str(tmp_path / "run" / "start_states" / "stage_2.safetensors"))["states"].shape[0] == 2


def test_a_method_config_declares_every_hook_the_run_calls():
    # the toy overrides none: the defaults let a method without them run (the test above)
    toy = ToyConfig()
    assert toy.expansion == 1 and toy.check(PDDConfig()) is None and toy.check_data((1, 8, 8)) is None
    assert Toy.citation is None
    for name in BUILT_IN:
        assert issubclass(METHODS.get(name).config_cls, MethodConfig)
    assert PDDConfig(method="idc").idc.expansion == 4  # IDC's multi-formation, factor 2


@dataclass
class PlainConfig:
    lr_img: float = 1.0


def test_a_method_config_that_is_not_a_method_config_is_named(monkeypatch):
    # registered for this test only: the other tests build a config of every registered method
    monkeypatch.setitem(METHODS._entries, "plain", Entry("plain", Toy, PlainConfig, "a plain config"))
    with pytest.raises(TypeError, match="'plain' is registered with the config .*MethodConfig"):
        config_from_dict({"method": "plain"})


def test_every_built_in_method_is_registered_and_ships_a_quickstart_config():
    assert set(BUILT_IN) <= set(METHODS.names())
    shipped = {name for name, _ in list_configs()}
    for method in BUILT_IN:
        quickstart = "quickstart" if method == "mtt" else f"quickstart_{method}"
        cpu_sized = "cifar10_cpu" if method == "mtt" else f"cifar10_{method}_cpu"
        assert quickstart in shipped and cpu_sized in shipped
        assert load_config(config_path(quickstart)).method == method


def config_path(name: str):
    from pdd_hub.configs import shipped_config

    return shipped_config(name)


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"method": "idcc"},
            "unknown method 'idcc'; did you mean 'idc'? registered methods: dc, dm, dsa, idc",
        ),
        ({"method": "dm", "mtt": {"syn_steps": 3}}, "config section 'mtt' belongs to method 'mtt'"),
        ({"method": "dm", "dm": {"lr_imgg": 1}}, "unknown config key 'dm.lr_imgg'; did you mean 'dm.lr_img'"),
        ({"method": "dm", "dm": {"lr_img": -1}}, "config key 'dm.lr_img' must be positive"),
        ({"method": "idc", "idc": {"metric": "cosine"}}, "'idc.metric' must be one of ['mse', 'l1', 'dc']"),
        ({"method": "idc", "idc": {"net_cutmix_prob": 2}}, "'idc.net_cutmix_prob' is a probability"),
        ({"method": "dsa", "dsa": {"augment": "dsa:blur"}}, "config key 'dsa.augment'"),
        ({"method": "dm", "dmm": {}}, "unknown config key 'dmm'; did you mean 'dm'"),
        ({"method": 3}, "config key 'method' must be a method name"),
    ],
)
def test_bad_methods_and_sections_are_named(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert message in str(info.value)


def test_a_section_of_the_chosen_method_only(tmp_path):
    config = config_from_dict({"method": "dm"})
    assert set(config.to_dict()) & set(BUILT_IN) == {"dm"}
    with pytest.raises(AttributeError):
        _ = config.mtt
    assert PDDConfig().mtt.syn_steps == 50  # the default method is MTT


def run_of(method: str, tmp_path, **changes):
    data = {**copy.deepcopy(TOY_RUN), "method": method, "output_dir": str(tmp_path / method), **changes}
    data.pop("toy")
    return config_from_dict(data)


@pytest.mark.parametrize("method", BUILT_IN)
def test_an_ipc_larger_than_a_class_fails_before_any_work_for_every_method(method, tmp_path):
    config = run_of(method, tmp_path, ipc_per_stage=30, train_per_class=20, init="noise")
    with pytest.raises(
        ConfigError, match=r"'ipc_per_stage' = 30 needs .* of every class, but one class has only 20"
    ):
        run_pdd(config, Accelerator(cpu=True))
    assert not (tmp_path / method / "preprocess.json").exists()


def test_idc_counts_the_real_images_its_stored_images_pack(tmp_path):
    config = run_of("idc", tmp_path, ipc_per_stage=6, train_per_class=20, idc={"factor": 2})
    with pytest.raises(ConfigError, match=r"6 x 4 = 24 real training images \(idc packs 4 into each stored"):
        run_pdd(config, Accelerator(cpu=True))


def test_an_idc_factor_that_does_not_divide_the_image_size_fails_before_any_work(tmp_path):
    config = run_of("idc", tmp_path, idc={"factor": 3})
    with pytest.raises(ConfigError, match="'idc.factor' = 3 does not divide the image size 8x8"):
        run_pdd(config, Accelerator(cpu=True))
    assert not (tmp_path / "idc" / "preprocess.json").exists()
