"""Configs: YAML + key=value overrides, and bad keys or values failing before any work, by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdd_hub.config import (
    PDDConfig,
    ScoringConfig,
    build_section,
    load_config,
    parse_key_values,
    parse_recipe_args,
)
from pdd_hub.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert isinstance(config, PDDConfig)
    if config.method == "mtt":
        assert config.mtt.max_start_epoch + config.mtt.expert_epochs <= config.experts.epochs
    assert config.output_dir.endswith(path.stem)  # each config writes to its own folder
    # issue 19: a shipped config states its budget rather than leaving it to a default
    assert yaml.safe_load(path.read_text())["budget"] in ("per_stage", "total")


def test_saved_configs_load_back_equal(tmp_path):
    from pdd_hub.config import save_config

    for path in CONFIGS:
        config = load_config(path)
        save_config(config, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == config


def test_paper_settings_are_what_the_paper_used():
    c10 = load_config(Path(CONFIGS[0]).parent / "cifar10_ipc10.yaml")
    assert (
        c10.num_stages,
        c10.ipc_per_stage,
        c10.mtt.syn_steps,
        c10.mtt.expert_epochs,
        c10.mtt.max_start_epoch,
    ) == (5, 2, 50, 2, 5)
    assert (c10.mtt.lr_img, c10.mtt.lr_lr, c10.mtt.lr_init, c10.zca) == (1000, 1e-7, 0.01, True)
    c50 = load_config(Path(CONFIGS[0]).parent / "cifar10_ipc50.yaml")
    assert (c50.ipc_per_stage, c50.mtt.syn_steps, c50.mtt.max_start_epoch, c50.mtt.lr_lr) == (
        10,
        30,
        15,
        1e-5,
    )


def test_overrides_coerce_types_and_reach_sections():
    config = parse_recipe_args(
        [
            "num_stages=3",
            "mtt.syn_steps=20",
            "zca=true",
            "mtt.batch_syn=none",
            "mtt.lr_lr=1e-6",
            "dataset=../shared/datasets/cifar10",
        ]
    )
    assert (config.num_stages, config.mtt.syn_steps, config.zca, config.mtt.batch_syn) == (3, 20, True, None)
    assert config.mtt.lr_lr == 1e-6 and config.dataset == "../shared/datasets/cifar10"


def test_off_and_no_are_strings_as_the_choices_say_and_true_false_stay_booleans(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("forgetting:\n  mode: off\ntransition:\n  enabled: false\n")
    from_file = load_config(config_file)
    assert from_file.forgetting.mode == "off" and from_file.transition.enabled is False
    config = parse_recipe_args(["forgetting.mode=band", "forgetting.mode=off", "zca=True"])
    assert config.forgetting.mode == "off" and config.zca is True
    assert parse_key_values(["a=no", "b=on", "c=false"]) == [("a", "no"), ("b", "on"), ("c", False)]
    with pytest.raises(ConfigError, match="'zca' must be true or false"):
        parse_recipe_args(["zca=off"])  # not silently False


@pytest.mark.parametrize(
    "override,message",
    [
        ("num_stage=3", "unknown config key 'num_stage'; did you mean 'num_stages'"),
        ("mtt.synsteps=3", "unknown config key 'mtt.synsteps'; did you mean 'mtt.syn_steps'"),
        ("num_stages=0", "'num_stages' must be positive"),
        ("val_per_class=0", "'val_per_class' must be positive"),
        ("ipc_per_stage=two", "'ipc_per_stage' must be an integer"),
        ("zca=maybe", "'zca' must be true or false"),
        ("init=zeros", "unknown selection method 'zeros'; registered selection methods: forgetting"),
        ("model=convnet_d9", "config key 'model': timm does not know a model named 'convnet_d9'"),
        ("mtt.max_start_epoch=60", "exceed 'experts.epochs' = 50"),
        ("augment=dsa:blur", "config key 'augment'"),
        ("mtt=3", "section 'mtt' must be a mapping"),
        ("noequals", "is not of the form key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_recipe_args([override])
    assert message in str(info.value)


def test_key_values_and_sections_outside_a_run_config():
    assert parse_key_values(["a.b=1", "c=x", "d=", "a.b=[1, 2]"]) == [
        ("a.b", 1),
        ("c", "x"),
        ("d", None),
        ("a.b", [1, 2]),
    ]
    with pytest.raises(ValueError, match="--scoring 'epochs' is not of the form key=value"):
        parse_key_values(["epochs"], "--scoring")
    scoring = build_section(ScoringConfig, {"epochs": 3, "lr": "0.5"}, "scoring")
    assert scoring == ScoringConfig(epochs=3, lr=0.5)
    with pytest.raises(ValueError, match="config key 'scoring.epochs' must be positive"):
        build_section(ScoringConfig, {"epochs": 0}, "scoring")
    with pytest.raises(ValueError, match="unknown config key 'scoring.epoch'; did you mean 'scoring.epochs'"):
        build_section(ScoringConfig, {"epoch": 3}, "scoring")


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        parse_recipe_args(["--config", str(tmp_path / "nope.yaml")])
