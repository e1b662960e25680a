"""One validator for schedules, configs and command-line numbers: every numeric field of
pdd_schedule.json and of a run config, generated from the real structures (not hand-listed), against
NaN, infinities, 0, negative, huge and wrong-type values."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pdd_hub.cli import EVAL_OPTIONS, SELECT_OPTIONS, main
from pdd_hub.config import PDDConfig, config_from_dict, flatten_config
from pdd_hub.errors import ConfigError, ExportFormatError
from pdd_hub.hub import SCHEDULE_FILE, Schedule, StageSpec, read_schedule, stage_split_name
from pdd_hub.registry import METHODS
from pdd_hub.schedule import SGDRecipe
from pdd_hub.validate import SCHEDULE_RULES, field_name
from tests.helpers import SUBPROCESS_ENV, child_cpu_seconds

BAD_VALUES = [math.nan, math.inf, -math.inf, 0, -1, 10**12, 1e12, "3", [1], True]


def full_schedule() -> dict:
    """A schedule with every optional part filled in: ZCA, CutMix, IDC storage, forgetting bands."""
    stages = [
        StageSpec(
            split=stage_split_name(k),
            ipc=4,
            stored_ipc=1,
            recipe=SGDRecipe(lr=0.01 * k, epochs=300, batch_size=64, lr_schedule="steps_at_2/3_5/6_x0.2"),
            real_pool={
                "examples": 90,
                "per_class": [30, 30, 30],
                "forgetting_scores": [k - 1.0, k * 1.0],
                "widened_classes": [2],
            },
            sha256="ab" * 32,
        )
        for k in (1, 2)
    ]
    schedule = Schedule(
        stages=stages,
        class_names=["a", "b", "c"],
        image_shape=(3, 8, 8),
        preprocess={
            "scale": "uint8/255",
            "normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.3]},
            "zca": {"eps": 0.1, "file": "preprocess.safetensors"},
        },
        method="idc",
        distill_model="convnet_d3",
        source={"dataset": "toy", "fingerprint": "x"},
        training={
            "augment": "dsa_idc:color_crop_flip_scale_rotate",
            "cutmix": {"prob": 0.5, "beta": 1.0},
            "mode": "progressive",
        },
        storage={"kind": "multi_formation", "factor": 2, "expansion": 4},
        config={"seed": 0, "image_size": 8, "val_per_class": 50, "idc": {"lr_img": 0.005}},
    )
    return schedule.to_dict()


def numeric_fields(data, path=()) -> list[tuple]:
    """The path of every number in ``data`` (under ``config``: the keys readers use)."""
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [path]
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    out = []
    for key, value in items:
        if path == ("config",) and key not in ("seed", "image_size", "val_per_class"):
            continue
        out += numeric_fields(value, (*path, key))
    return out


def rule_of(path: tuple):
    for key, rule in SCHEDULE_RULES.items():
        parts = key.split(".")
        if len(parts) == len(path) and all(k in ("*", str(p)) for k, p in zip(parts, path)):
            return rule
    return None


def set_path(data, path, value):
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


FIELDS = numeric_fields(full_schedule())


def test_every_numeric_schedule_field_has_a_rule():
    assert len(FIELDS) > 30
    assert [field_name(p) for p in FIELDS if rule_of(p) is None] == []


@pytest.mark.parametrize("path", FIELDS, ids=[field_name(p) for p in FIELDS])
def test_every_bad_number_in_a_schedule_is_refused_naming_file_field_and_value(tmp_path, path):
    folder = tmp_path / "export"
    folder.mkdir()
    rule = rule_of(path)
    for value in BAD_VALUES:
        data = full_schedule()
        set_path(data, path, value)
        (folder / SCHEDULE_FILE).write_text(json.dumps(data))  # NaN/Infinity as Python writes them
        if rule.accepts(value):  # e.g. 0 momentum, a negative mean
            read_schedule(folder)
            continue
        # NaN, inf, huge and wrong types are never acceptable; 0 and -1 only where the rule allows
        assert not (isinstance(value, float) and not math.isfinite(value) and rule.accepts(value))
        with pytest.raises(ExportFormatError) as info:
            read_schedule(folder)
        message = str(info.value)
        assert str(folder / SCHEDULE_FILE) in message and field_name(path) in message, message
        assert repr(value) in message, message


def test_the_full_schedule_itself_is_accepted(tmp_path):
    (tmp_path / SCHEDULE_FILE).write_text(json.dumps(full_schedule()))
    assert read_schedule(tmp_path).stages[1].recipe.lr == 0.02


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda d: d.update(class_names="abc"), "class_names"),
        (lambda d: d.update(class_names=["a", "a", "b"]), "class_names"),
        (lambda d: d.update(image_shape=[3, 8]), "image_shape"),
        (lambda d: d["preprocess"]["normalize"].update(std=[0.2]), "preprocess.normalize.std"),
        (lambda d: d["stages"][1].update(split="../../etc"), "stages[1].split"),
        (lambda d: d["stages"][0].update(lr_schedule="cosine"), "stages[0].lr_schedule"),
        (lambda d: d["stages"][0].update(optimizer="adam"), "stages[0].optimizer"),
        (lambda d: d["stages"][0].update(sha256="zz"), "stages[0].sha256"),
        (lambda d: d["stages"][0].update(stored_ipc=9), "stages[0].stored_ipc"),
        (lambda d: d["training"].update(augment=5), "training.augment"),
        (lambda d: d["training"].update(augment="dsa:blur"), "training.augment"),
        (lambda d: d.update(num_classes=4), "num_classes"),
        (lambda d: d["config"].update(anything=math.nan), "config.anything"),
        (lambda d: d["stages"].append("x"), "stages[2]"),
    ],
)
def test_wrong_types_and_shapes_in_a_schedule_are_named(tmp_path, edit, field):
    data = full_schedule()
    edit(data)
    (tmp_path / SCHEDULE_FILE).write_text(json.dumps(data))
    with pytest.raises(ExportFormatError, match=re.escape(f"field '{field}")):
        read_schedule(tmp_path)


def test_a_writer_cannot_write_what_a_reader_refuses(tmp_path):
    from tests.test_hub import make_export

    schedule, stages, pre = make_export(tmp_path / "ok")
    nan_lr = [dataclasses.replace(s.recipe, lr=math.nan) for s in schedule.stages]
    bad_stages = [dataclasses.replace(s, recipe=r) for s, r in zip(schedule.stages, nan_lr, strict=True)]
    bad = dataclasses.replace(schedule, stages=bad_stages)
    from pdd_hub.hub import export_pdd

    with pytest.raises(ExportFormatError, match=r"stages\[0\].lr' must be positive .*got nan"):
        export_pdd(tmp_path / "bad", bad, stages, pre)
    assert not (tmp_path / "bad").exists()
    text = (tmp_path / "ok" / SCHEDULE_FILE).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the schedule"))


# --- run configs ----------------------------------------------------------------------------------
def config_fields() -> list[tuple[str, str, object]]:
    """(method, dotted key, field rule) of every numeric field of the run config and of every
    registered method's section."""
    out = []
    for method in METHODS.names():
        config = config_from_dict({"method": method})
        flat = flatten_config(config.to_dict())
        rules = _rules(config, "") | _rules(config.method_config, f"{method}.")
        for key, value in flat.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and (method == METHODS.names()[0] or key.startswith(f"{method}.")):
                out.append((method, key, rules.get(key)))
    return out


def _rules(section, prefix: str) -> dict:
    rules = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value) and f.name not in ("method_config", "init_config"):
            rules |= _rules(value, f"{prefix}{f.name}.")
        else:
            rules[prefix + f.name] = f.metadata.get("rule")
    return rules


CONFIG_FIELDS = config_fields()


def _with(method: str, key: str, value) -> dict:
    data: dict = {"method": method}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


@pytest.mark.parametrize("method,key,rule", CONFIG_FIELDS, ids=[f"{m}:{k}" for m, k, _ in CONFIG_FIELDS])
def test_every_bad_number_in_a_config_is_refused_naming_key_and_value(method, key, rule):
    default = flatten_config(config_from_dict({"method": method}).to_dict())[key]
    bad = [math.nan, math.inf, -math.inf, 1e12, 10**12, "abc", [1]]
    if rule == "positive":
        bad += [0, -1]
    elif rule == "non_negative":
        bad += [-1]
    for value in bad:
        if isinstance(default, int) and value in (1e12,):
            continue  # 1e12 as a float is not an integer: refused as a wrong type with 10**12 below
        with pytest.raises(ConfigError) as info:
            config_from_dict(_with(method, key, value))
        message = str(info.value)
        assert key in message, message
        assert repr(value) in message or str(value) in message, message


def test_overrides_from_the_command_line_are_checked_the_same_way():
    for override, message in [
        ("iterations=.nan", "config key 'iterations' must be an integer, got nan"),
        (
            "mtt.lr_img=.inf",
            "config key 'mtt.lr_img' must be positive (a finite number, at most 1000000), got inf",
        ),
        ("train_epochs_per_stage=1000000", "at most 100000"),
        ("experts.lr=1e300", "config key 'experts.lr'"),
    ]:
        from pdd_hub.config import load_config

        with pytest.raises(ConfigError, match=None) as info:
            load_config(None, [override])
        assert message in str(info.value)


def test_defaults_of_every_method_pass_the_caps():
    for method in METHODS.names():
        assert isinstance(config_from_dict({"method": method}), PDDConfig)


# --- command-line numbers ---------------------------------------------------------------------------
OPTION_VALUES = ("nan", "inf", "0", "-3", "1e12", "abc")
OPTION_CASES = [
    (c, n, r) for c, opts in (("select", SELECT_OPTIONS), ("eval", EVAL_OPTIONS)) for n, r in opts.items()
]


@pytest.mark.parametrize("command,name,rule", OPTION_CASES, ids=[f"{c}:{n}" for c, n, _ in OPTION_CASES])
def test_every_numeric_option_is_checked_before_any_work(tmp_path, capsys, command, name, rule):
    flag = f"--{name.replace('_', '-')}"
    base = {
        "select": ["select", "--real", "sklearn:digits", "--output", str(tmp_path / "out")],
        "eval": [
            "eval",
            str(tmp_path / "missing"),
            "--real",
            "sklearn:digits",
            "--model",
            "convnet_d3",
            "--output",
            str(tmp_path / "eval.json"),
        ],
    }[command]
    for value in OPTION_VALUES:
        try:
            parsed = int(value) if rule.kind is int else float(value)
        except ValueError:  # argparse refuses what its type cannot parse: its own one-line message
            with pytest.raises(SystemExit):
                main([*base, flag, value])
            continue
        if rule.accepts(parsed):
            continue  # a good value: the command would start working
        assert main([*base, flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and f"got {parsed!r}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval.json").exists()


def test_select_with_lr_nan_and_negative_epochs_exits_2_at_once(tmp_path):
    args = [
        "select",
        "--real",
        "sklearn:digits",
        "--lr",
        "nan",
        "--epochs",
        "-3",
        "--output",
        str(tmp_path / "s"),
    ]
    with child_cpu_seconds() as spent:
        out = subprocess.run(
            [sys.executable, "-m", "pdd_hub.cli", *args], capture_output=True, text=True, env=SUBPROCESS_ENV
        )
    assert spent[0] < 10
    assert out.returncode == 2, out.stderr
    assert "--lr must be positive" in out.stderr and "got nan" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("pdd-hub select: error: --lr")
    assert not (tmp_path / "s").exists()


def test_a_run_config_with_a_bad_number_is_refused_by_the_cli(tmp_path):
    data = copy.deepcopy({"dataset": "sklearn:digits", "method": "dm", "iterations": 10**12})
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdd_hub.cli",
            "distill",
            "--config",
            str(path),
            f"output_dir={tmp_path / 'r'}",
        ],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert out.returncode == 2 and "'iterations'" in out.stderr and "1000000000000" in out.stderr
    assert "Traceback" not in out.stderr and not Path(tmp_path / "r").exists()
