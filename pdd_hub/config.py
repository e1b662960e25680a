"""Run configs: dataclasses, YAML files, ``key=value`` overrides, validation that names the key.

    accelerate launch recipes/pdd_mtt.py --config recipes/configs/quickstart.yaml num_stages=3 mtt.lr_lr=1e-6

Every key is checked before any work starts: an unknown key (with a close-match hint), a value of
the wrong type or out of range raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pdd_hub.errors import ConfigError


@dataclass
class ExpertConfig:
    """Expert trajectories on real data (MTT's buffer): plain SGD, a snapshot after every epoch."""

    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256


@dataclass
class MTTConfig:
    """Trajectory matching (Cazenavette et al. 2022) with a learned LR per stage."""

    syn_steps: int = 50
    expert_epochs: int = 2
    max_start_epoch: int = 5
    lr_img: float = 1000.0
    lr_lr: float = 1e-7
    lr_init: float = 0.01  # the learned LR starts here (MTT's lr_teacher)
    lr_min: float = 1e-8  # the learned LR is kept above this (it must stay positive)
    batch_syn: int | None = None  # default: classes x ipc_per_stage, as in the official code
    momentum: float = 0.5  # of the image and LR optimisers


@dataclass
class TransitionConfig:
    """Between stages: train each expert's start on stages 1..k, then record a new trajectory."""

    enabled: bool = True
    syn_epochs: int = 1000  # epochs on stages 1..k (PDD: 1000)


@dataclass
class EvalConfig:
    """Cheap evaluation during distillation; the best images of a stage are chosen on ``val``."""

    every: int = 100  # iterations
    num_models: int = 5
    epochs: int = 1000  # epochs of training on the current union
    batch_size: int = 256


@dataclass
class ForgettingConfig:
    """Later stages may use only harder real examples, by forgetting score (Toneva et al. 2019)."""

    mode: str = "off"  # off | band (stage k uses scores in its band) | drop_easy (scores >= its band)
    band_width: int = 10


@dataclass
class PDDConfig:
    """One progressive distillation run."""

    dataset: str = "sklearn:digits"
    output_dir: str = "runs/quickstart"
    method: str = "mtt"
    model: str = "convnet_d3"
    seed: int = 0
    num_stages: int = 5
    ipc_per_stage: int = 2
    iterations: int = 5000  # per stage
    init: str = "real"  # real | noise
    conditioning: bool = True  # stage k sees stages 1..k-1 (frozen) in the student's minibatches
    # data
    image_column: str | None = None
    label_column: str | None = None
    test_split: str | None = None
    image_size: int | None = None
    val_per_class: int = 50
    train_per_class: int | None = None  # subsample the real training set (CPU-sized runs)
    normalize: bool = True
    zca: bool = False
    zca_eps: float = 0.1
    augment: str = "dsa"
    # training on the result (written into pdd_schedule.json)
    train_epochs_per_stage: int = 500
    train_batch_size: int = 256
    # run management
    log_every: int = 10
    checkpoint_every: int = 50
    tracker: str = "none"  # none | tensorboard
    progress: bool = True
    # sections
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    mtt: MTTConfig = field(default_factory=MTTConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "method": ("mtt",),
    "init": ("real", "noise"),
    "tracker": ("none", "tensorboard"),
    "forgetting.mode": ("off", "band", "drop_easy"),
}
_POSITIVE = {
    "num_stages",
    "ipc_per_stage",
    "iterations",
    "log_every",
    "checkpoint_every",
    "train_epochs_per_stage",
    "train_batch_size",
    "experts.num_experts",
    "experts.epochs",
    "experts.lr",
    "experts.batch_size",
    "mtt.syn_steps",
    "mtt.expert_epochs",
    "mtt.max_start_epoch",
    "mtt.lr_img",
    "mtt.lr_lr",
    "mtt.lr_init",
    "mtt.lr_min",
    "transition.syn_epochs",
    "eval.every",
    "eval.num_models",
    "eval.epochs",
    "eval.batch_size",
    "forgetting.band_width",
    "zca_eps",
    "val_per_class",
    "mtt.batch_syn",
    "image_size",
    "train_per_class",
}
_NON_NEGATIVE = {"experts.momentum", "experts.weight_decay", "mtt.momentum"}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PDDConfig:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> PDDConfig:
    """Build and validate a :class:`PDDConfig` from a (nested) mapping."""
    config = _build(PDDConfig, data, prefix="")
    validate(config)
    return config


def parse_recipe_args(argv: list[str]) -> PDDConfig:
    """``--config FILE key=value ...`` as the recipes take them."""
    path = None
    overrides = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            raise SystemExit(_usage())
        else:
            overrides.append(arg)
    return load_config(path, overrides)


def _usage() -> str:
    lines = ["usage: accelerate launch recipes/pdd_mtt.py --config FILE [key=value ...]", "", "keys:"]
    for key, value in flatten_config(PDDConfig().to_dict()).items():
        lines.append(f"  {key} (default {value!r})")
    return "\n".join(lines)


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.')!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {sorted(fields)}"
        raise ConfigError(f"unknown config key {prefix + key!r}{hint}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(f"{prefix}{name}", hint, value)
    return cls(**values)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = options[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    return value


def validate(config: PDDConfig) -> None:
    """Range and choice checks, naming the offending key."""
    flat = flatten_config(config.to_dict())
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key {key!r} must be one of {list(choices)}, got {flat[key]!r}")
    for key in _POSITIVE:
        if flat[key] is not None and flat[key] <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {flat[key]!r}")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"config key {key!r} must not be negative, got {flat[key]!r}")
    if config.augment not in ("none", "dsa") and not config.augment.startswith("dsa:"):
        raise ConfigError(
            f"config key 'augment' must be 'none', 'dsa' or 'dsa:<t1>_<t2>...', got {config.augment!r}"
        )
    if config.augment != "none":
        from pdd_hub.augment import build_augment

        try:
            build_augment(config.augment)
        except ValueError as exc:
            raise ConfigError(f"config key 'augment': {exc}") from exc
    needed = config.mtt.max_start_epoch + config.mtt.expert_epochs
    if config.method == "mtt" and needed > config.experts.epochs:
        raise ConfigError(
            f"config keys 'mtt.max_start_epoch' + 'mtt.expert_epochs' = {needed} exceed 'experts.epochs' "
            f"= {config.experts.epochs}: the experts' trajectories are too short to match"
        )
    from pdd_hub.models import check_model_name

    try:
        check_model_name(config.model)
    except ValueError as exc:
        raise ConfigError(f"config key 'model': {exc}") from exc
    if config.tracker == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "config key 'tracker' is 'tensorboard' but tensorboard is not installed"
            ) from exc


def save_config(config: PDDConfig, path: str | Path) -> None:
    """Write the config as YAML, atomically (a half-written config would block the resumption)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
