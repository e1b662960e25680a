"""One validator for the numbers, types and paths pdd-hub reads and writes.

``pdd_schedule.json`` is checked field by field by :func:`check_schedule` when it is read
(:func:`pdd_hub.hub.read_schedule`) and before it is written (:func:`pdd_hub.hub.export_pdd`), so a
writer cannot produce what a reader refuses. Run configs (:mod:`pdd_hub.config`) and the numeric
options of the command line use the same :class:`Rule` objects: every number must be finite, within
the range its meaning allows and below a stated cap (a typo such as ``epochs=1e12`` would otherwise
run for ever). A failed check raises the caller's error class with one message naming the file, the
field and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdd_hub.errors import PDDError
from pdd_hub.schedule import LR_SCHEDULES

# The caps, stated once (docs/RELIABILITY.md lists them).
MAX_EPOCHS = 100_000  # epochs of one stage, one transition or one evaluation
MAX_COUNT = 10**9  # any other count: iterations, images, examples, batch size
MAX_MAGNITUDE = 1e6  # any other real number (MTT's image LR reaches 1e4)
MAX_LR = 1e3  # a network's SGD learning rate
MAX_CLASSES = 100_000
MAX_CHANNELS = 16
MAX_IMAGE_SIDE = 8192
MAX_SEED = 2**32 - 1

GLOB_CHARACTERS = "*?[]"


@dataclass(frozen=True)
class Rule:
    """A number's type (``int`` or ``float``) and range; ``optional`` allows ``None``."""

    kind: type
    low: float
    high: float
    low_open: bool = False  # low itself is refused
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """E.g. ``positive (an integer, at most 100000)``, ``a number from 0 to 1``."""
        kind = "an integer" if self.kind is int else "a finite number"

        def show(x: float) -> str:
            return str(int(x)) if self.kind is int or (float(x).is_integer() and abs(x) < 1e7) else f"{x:g}"

        high = f"{'below' if self.high_open else 'at most'} {show(self.high)}"
        if self.low == self.high:
            return f"{kind} equal to {show(self.low)}"
        if (self.low == 0 and self.low_open) or (self.kind is int and self.low == 1):
            return f"positive ({kind}, {high})"
        if self.low == 0:
            return f"not negative ({kind}, {high})"
        low = f"above {show(self.low)}" if self.low_open else f"from {show(self.low)}"
        return f"{kind} {low} {'and below' if self.high_open else 'to'} {show(self.high)}"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and (not isinstance(value, int)):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, however large)
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def check(self, value: Any, name: str, error: type[PDDError]) -> Any:
        """``value`` if it passes, else ``error`` naming ``name`` (file and field) and the value."""
        if not self.accepts(value):
            raise error(
                f"{name} must be {self.describe()}{' or null' if self.optional else ''}, got {value!r}"
            )
        return value


def positive_int(high: float = MAX_COUNT, optional: bool = False) -> Rule:
    return Rule(int, 1, high, optional=optional)


def positive_float(high: float = MAX_MAGNITUDE) -> Rule:
    return Rule(float, 0, high, low_open=True)


COUNT = Rule(int, 0, MAX_COUNT)
EPOCHS = positive_int(MAX_EPOCHS)
LR = positive_float(MAX_LR)
FRACTION = Rule(float, 0, 1)
MOMENTUM = Rule(float, 0, 1, high_open=True)
SEED = Rule(int, 0, MAX_SEED)
IMAGE_SIDE = positive_int(MAX_IMAGE_SIDE)

# Every number of pdd_schedule.json, by path (``*``: every item of a list or mapping). Numbers under
# ``config`` are a record of the run; only those that readers use are listed.
SCHEDULE_RULES: dict[str, Rule] = {
    "format_version": Rule(int, 1, 1),
    "num_classes": positive_int(MAX_CLASSES),
    "image_shape.0": positive_int(MAX_CHANNELS),
    "image_shape.1": IMAGE_SIDE,
    "image_shape.2": IMAGE_SIDE,
    "preprocess.normalize.mean.*": Rule(float, -MAX_MAGNITUDE, MAX_MAGNITUDE),
    "preprocess.normalize.std.*": positive_float(),
    "preprocess.zca.eps": positive_float(),
    "training.cutmix.prob": FRACTION,
    "training.cutmix.beta": positive_float(),
    "storage.expansion": positive_int(MAX_IMAGE_SIDE**2),
    "storage.factor": IMAGE_SIDE,
    "stages.*.ipc": positive_int(),
    "stages.*.stored_ipc": positive_int(optional=True),
    "stages.*.lr": LR,
    "stages.*.epochs": EPOCHS,
    "stages.*.batch_size": positive_int(),
    "stages.*.momentum": MOMENTUM,
    "stages.*.weight_decay": FRACTION,
    "stages.*.real_pool.examples": COUNT,
    "stages.*.real_pool.per_class.*": COUNT,
    "stages.*.real_pool.forgetting_scores.*": Rule(float, 0, MAX_MAGNITUDE, optional=True),
    "stages.*.real_pool.widened_classes.*": Rule(int, 0, MAX_CLASSES),
    "config.seed": SEED,
    "config.image_size": positive_int(MAX_IMAGE_SIDE, optional=True),
    "config.val_per_class": positive_int(),
}

# The preprocessing a run keeps in preprocess.json: the same numbers as an export's.
PREPROCESS_RULES = {
    k[len("preprocess.") :]: v for k, v in SCHEDULE_RULES.items() if k.startswith("preprocess.")
}


def field_name(parts: tuple[str | int, ...]) -> str:
    """``("stages", 0, "lr")`` -> ``stages[0].lr``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _expand(data: Any, pattern: list[str], done: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, value)`` of every place ``pattern`` names in ``data`` (absent keys are skipped)."""
    if not pattern:
        yield done, data
        return
    head, rest = pattern[0], pattern[1:]
    if isinstance(data, list):
        indices = range(len(data)) if head == "*" else ([int(head)] if head.isdigit() else [])
        for i in indices:
            if i < len(data):
                yield from _expand(data[i], rest, (*done, i))
    elif isinstance(data, dict):
        keys = list(data) if head == "*" else ([head] if head in data else [])
        for key in keys:
            yield from _expand(data[key], rest, (*done, key))


def check_numbers(data: Any, rules: dict[str, Rule], where: str, error: type[PDDError]) -> None:
    """Check every number ``rules`` names in ``data``; ``where`` names the file."""
    for pattern, rule in rules.items():
        for path, value in _expand(data, pattern.split(".")):
            rule.check(value, f"{where}: field {field_name(path)!r}", error)


def check_finite(data: Any, where: str, error: type[PDDError], path: tuple = ()) -> None:
    """Every number anywhere in ``data`` is finite (NaN and infinities are not JSON either)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise error(f"{where}: field {field_name(path)!r} must be a finite number, got {data!r}")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        check_finite(value, where, error, (*path, key))


def check_schedule(data: dict[str, Any], where: str, error: type[PDDError]) -> None:
    """Check the types, ranges and shapes of a ``pdd_schedule.json`` mapping (what a reader needs
    before it loads any tensor or builds any network)."""
    _check_structure(data, where, error)
    check_numbers(data, SCHEDULE_RULES, where, error)
    check_finite(data, where, error)  # the numbers no rule names (the run's config, ...)
    _check_stages(data["stages"], where, error)
    _check_preprocess(data["preprocess"], data["image_shape"][0], where, error)
    _check_training(data.get("training", {}), where, error)
    names = data["class_names"]
    if "num_classes" in data and data["num_classes"] != len(names):
        raise error(
            f"{where}: field 'num_classes' is {data['num_classes']!r} but 'class_names' lists {len(names)}"
        )


def _field(
    data: dict, key: str, kind: type | tuple, where: str, error: type[PDDError], label: str = ""
) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(
            {"dict": "a mapping", "list": "a list", "str": "a string"}.get(k.__name__, k.__name__)
            for k in kinds
        )
        raise error(f"{where}: field {label + key!r} must be {wanted}, got {value!r}")
    return value


def _check_structure(data: dict[str, Any], where: str, error: type[PDDError]) -> None:
    for key in ("stages", "class_names", "image_shape"):
        _field(data, key, list, where, error)
    for key in ("preprocess",):
        _field(data, key, dict, where, error)
    for key in ("source", "training", "storage", "config"):
        if key in data:
            _field(data, key, dict, where, error)
    for key in ("method", "distill_model"):
        if key in data:
            _field(data, key, str, where, error)
    names = data["class_names"]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise error(
            f"{where}: field 'class_names' must be a non-empty list of distinct strings, got {names!r}"
        )
    if len(names) > MAX_CLASSES:
        raise error(f"{where}: field 'class_names' lists {len(names)} classes, more than {MAX_CLASSES}")
    shape = data["image_shape"]
    if len(shape) != 3:
        raise error(f"{where}: field 'image_shape' must be [channels, height, width], got {shape!r}")
    if not data["stages"]:
        raise error(f"{where}: field 'stages' lists no stages")
    for i, stage in enumerate(data["stages"]):
        if not isinstance(stage, dict):
            raise error(f"{where}: field 'stages[{i}]' must be a mapping, got {stage!r}")


def _check_stages(stages: list[dict], where: str, error: type[PDDError]) -> None:
    for i, stage in enumerate(stages):
        name = f"{where}: field 'stages[{i}]"
        missing = [k for k in ("split", "ipc", "lr", "epochs") if k not in stage]
        if missing:
            raise error(f"{name}' lacks {missing}")
        if stage["split"] != f"stage_{i + 1}":
            raise error(
                f"{name}.split' must be 'stage_{i + 1}' (stages are named in order), got {stage['split']!r}"
            )
        if stage.get("optimizer", "sgd") != "sgd":
            raise error(f"{name}.optimizer' must be 'sgd', got {stage['optimizer']!r}")
        if stage.get("lr_schedule", LR_SCHEDULES[0]) not in LR_SCHEDULES:
            raise error(
                f"{name}.lr_schedule' must be one of {list(LR_SCHEDULES)}, got {stage['lr_schedule']!r}"
            )
        stored = stage.get("stored_ipc")
        if stored is not None and isinstance(stage["ipc"], int) and stored > stage["ipc"]:
            raise error(f"{name}.stored_ipc' must be at most ipc ({stage['ipc']}), got {stored!r}")
        digest = stage.get("sha256")
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise error(f"{name}.sha256' must be 64 hexadecimal digits or null, got {digest!r}")
        if stage.get("real_pool") is not None and not isinstance(stage["real_pool"], dict):
            raise error(f"{name}.real_pool' must be a mapping or null, got {stage['real_pool']!r}")


def _check_preprocess(preprocess: dict, channels: int, where: str, error: type[PDDError]) -> None:
    normalize = _field(preprocess, "normalize", dict, where, error, "preprocess.")
    for key in ("mean", "std"):
        values = _field(normalize, key, list, where, error, "preprocess.normalize.")
        if len(values) != channels:
            raise error(
                f"{where}: field 'preprocess.normalize.{key}' has {len(values)} entries for images of "
                f"{channels} channel(s): {values!r}"
            )
    zca = preprocess.get("zca")
    if zca is not None:
        zca = _field(preprocess, "zca", dict, where, error, "preprocess.")
        _field(zca, "eps", (int, float), where, error, "preprocess.zca.")
        _field(zca, "file", str, where, error, "preprocess.zca.")


def _check_training(training: dict, where: str, error: type[PDDError]) -> None:
    from pdd_hub.augment import build_augment

    augment = training.get("augment", "dsa")
    try:
        if not isinstance(augment, str):
            raise ValueError("it must be a string")
        build_augment(augment)
    except ValueError as exc:
        raise error(f"{where}: field 'training.augment' is invalid ({exc}), got {augment!r}") from exc
    cutmix = training.get("cutmix")
    if cutmix is not None:
        cutmix = _field(training, "cutmix", dict, where, error, "training.")
        for key in ("prob", "beta"):
            _field(cutmix, key, (int, float), where, error, "training.cutmix.")


# --- config values ------------------------------------------------------------------------------
def config_number_rule(key: str, value: Any, rule: str | None) -> Rule | None:
    """The :class:`Rule` a config field of ``rule`` (``positive``, ``non_negative``, ``fraction`` or
    none) and the type of ``value`` must follow: finite, within the caps (keys naming epochs:
    :data:`MAX_EPOCHS`; a fraction lies in [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if rule == "fraction":
        return Rule(float, 0.0, 1.0)
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, int):
        high = MAX_EPOCHS if "epoch" in name else (MAX_SEED if name == "seed" else MAX_COUNT)
        low = {"positive": 1, "non_negative": 0}.get(rule or "", -high)
        return Rule(int, low, high)
    low = {"positive": 0.0, "non_negative": 0.0}.get(rule or "", -MAX_MAGNITUDE)
    return Rule(float, low, MAX_MAGNITUDE, low_open=rule == "positive")


# --- paths --------------------------------------------------------------------------------------
def check_literal_path(path: str | Path, what: str, error: type[PDDError]) -> None:
    """Refuse a path with glob characters: ``datasets`` would expand them (``data/g*`` would read
    every sibling folder starting with ``g`` as one dataset)."""
    text = str(path)
    found = sorted({c for c in text if c in GLOB_CHARACTERS})
    if found:
        raise error(
            f"{what} {text!r} contains the glob character(s) {' '.join(found)}, which datasets would "
            "expand into other folders; pdd-hub reads paths literally: rename the folder"
        )


def confined_file(root: Path, folder: Path, relative: Any, name: str, error: type[PDDError]) -> Path:
    """``folder / relative`` if it names a file inside ``root`` (``folder`` or the Hub cache folder
    holding it), else ``error`` naming the field: no absolute path, no ``..``, no link that leads out."""
    if not isinstance(relative, str) or not relative:
        raise error(f"{name} must be a file name relative to the export folder, got {relative!r}")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith("~") or ".." in candidate.parts:
        raise error(f"{name} must stay inside the export folder {folder}, got {relative!r}")
    path = folder / candidate
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise error(f"{name} {relative!r} leads outside the export folder {folder} (to {resolved})")
    if path.exists() and not resolved.is_file():
        raise error(f"{name} {relative!r} is not a regular file")
    return path
