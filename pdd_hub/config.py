"""Run configs: dataclasses, YAML files, ``key=value`` overrides, validation that names the key.

    pdd-hub distill --config quickstart_dm num_stages=3 dm.lr_img=0.5

A config names its base method (``method: idc``) and holds that method's section only (``idc:``,
the method's own config dataclass from the registry). Every key is checked before any work starts:
an unknown key (with a close-match hint), a section of another method, a value of the wrong type,
out of range or not among the choices raises :class:`ConfigError` naming it. Range and choice rules
live beside each field (:func:`positive`, :func:`one_of`, ...), so a method's config carries its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pdd_hub.augment import build_augment
from pdd_hub.configs import shipped_config
from pdd_hub.errors import ConfigError, UnknownNameError
from pdd_hub.models import check_model_name
from pdd_hub.registry import METHODS, SELECTIONS, Entry
from pdd_hub.schedule import CONSTANT_LR, SGDRecipe
from pdd_hub.tracking import TRACKERS, check_tracker
from pdd_hub.validate import config_number_rule


# --- field rules ---------------------------------------------------------------------------------
def positive(default: Any) -> Any:
    """A field that must be > 0 (or None, where the type allows it)."""
    return field(default=default, metadata={"rule": "positive"})


def non_negative(default: Any) -> Any:
    """A field that must be >= 0."""
    return field(default=default, metadata={"rule": "non_negative"})


def fraction(default: float) -> Any:
    """A field that must lie in [0, 1] (a probability or a share)."""
    return field(default=default, metadata={"rule": "fraction"})


def one_of(default: str, *choices: str) -> Any:
    """A string field that must be one of ``choices``."""
    return field(default=default, metadata={"rule": "choice", "choices": (default, *choices)})


def augmentation(default: str) -> Any:
    """An augmentation spec: ``none``, ``dsa`` or ``dsa:<t1>_<t2>...`` (see :mod:`pdd_hub.augment`)."""
    return field(default=default, metadata={"rule": "augment"})


@dataclass
class ExpertConfig:
    """Networks trained on real data with a snapshot after every epoch (MTT's expert trajectories,
    IDC's pool of pretrained networks)."""

    num_experts: int = positive(100)
    epochs: int = positive(50)
    lr: float = positive(0.01)
    momentum: float = non_negative(0.0)
    weight_decay: float = non_negative(0.0)
    batch_size: int = positive(256)

    def recipe(self) -> SGDRecipe:
        """How each expert trains (stage 1's; later stages' train fewer epochs)."""
        return SGDRecipe.of_section(self, lr_schedule=CONSTANT_LR)


@dataclass
class TransitionConfig:
    """Between stages: train each start state on stages 1..k, giving the start states of stage k+1."""

    enabled: bool = True
    syn_epochs: int = positive(1000)  # epochs on stages 1..k (PDD: 1000)

    def recipe(self, method: SGDRecipe, lr: float) -> SGDRecipe:
        """Training on stages 1..k: the method's recipe with stage k's ``lr``, for ``syn_epochs``."""
        return replace(method, lr=lr, epochs=self.syn_epochs)


@dataclass
class EvalConfig:
    """Cheap evaluation during distillation; the best images of a stage are chosen on ``val``."""

    every: int = positive(100)  # iterations
    num_models: int = positive(5)
    epochs: int = positive(1000)  # epochs of training on the current union
    batch_size: int = positive(256)

    def recipe(self, method: SGDRecipe, lr: float) -> SGDRecipe:
        """Training a validation network: the method's recipe with the ``lr`` being evaluated, for
        this section's ``epochs`` and ``batch_size``."""
        return replace(method, lr=lr, epochs=self.epochs, batch_size=self.batch_size)


@dataclass
class ForgettingConfig:
    """Stages may learn from harder real examples only, by forgetting score (Toneva et al. 2019;
    PDD section 4.2): ``band``: stage k learns from the scores in [(k-1) w, k w) (the last stage from
    all above), ``drop_easy``: stage k from the scores >= (k-1) w; ``w`` is ``band_width``, in
    forgetting events per scoring run (see pdd_hub/scoring.py)."""

    mode: str = one_of("off", "band", "drop_easy")
    band_width: float = positive(1.0)


@dataclass
class ScoringConfig:
    """Networks trained on the real data whose forgetting events give the forgetting scores and whose
    features the selection methods use (the first network's, after its last epoch)."""

    runs: int = positive(3)
    epochs: int = positive(20)
    model: str | None = None  # default: the run's model
    lr: float = positive(0.01)
    momentum: float = non_negative(0.9)
    weight_decay: float = non_negative(5e-4)
    batch_size: int = positive(256)

    def recipe(self) -> SGDRecipe:
        """How each scoring network trains."""
        return SGDRecipe.of_section(self, lr_schedule=CONSTANT_LR)


@dataclass
class ImportanceConfig:
    """Importance-sampled real batches (Tukan et al. 2023): an example is drawn with probability
    ``(1 - floor) * loss_i / sum(loss) + floor / n`` of its cross-entropy under the current network,
    re-computed every ``refresh_every`` draws of the method, and weighted as ``weighting`` says."""

    floor: float = positive(0.1)  # the uniform share, so that no example has probability zero
    refresh_every: int = positive(50)
    # unbiased: draws with replacement weighted by 1 / (n q_i), an unbiased mean; none: unweighted
    weighting: str = one_of("unbiased", "none")


@dataclass
class PDDConfig:
    """One progressive distillation run. ``method_config`` is the section of the method ``method``
    (in YAML, the section named after the method); ``config.<method>`` reads it too."""

    dataset: str = "sklearn:digits"
    output_dir: str = "runs/quickstart"
    method: str = "mtt"
    model: str = "convnet_d3"
    seed: int = 0
    num_stages: int = positive(5)
    ipc_per_stage: int = positive(2)  # images per class a stage stores
    iterations: int = positive(5000)  # image updates: of each stage (budget per_stage) or of all (total)
    budget: str = one_of("per_stage", "total")  # total: each stage gets iterations // num_stages
    init: str = "real"  # noise | real (random real images) | a selection method: herding, sensitivity, ...
    conditioning: bool = True  # stage k sees stages 1..k-1 (frozen) in the method's loss
    # data
    image_column: str | None = None
    label_column: str | None = None
    test_split: str | None = None
    image_size: int | None = positive(None)
    val_per_class: int = positive(50)
    train_per_class: int | None = positive(None)  # subsample the real training set (CPU-sized runs)
    normalize: bool = True
    zca: bool = False
    zca_eps: float = positive(0.1)
    # how networks train (experts, validation, transitions, the export); default: the method's own
    augment: str | None = augmentation(None)
    # training on the result (written into pdd_schedule.json)
    train_epochs_per_stage: int = positive(500)
    train_batch_size: int = positive(256)
    # run management
    num_threads: int | None = positive(None)  # CPU threads per process; default: cores / processes
    batch_networks: bool | None = None  # train many networks at once (vmap); default: on GPUs only
    precision: str = one_of("fp32", "bf16")  # of network training (experts, validation, transitions)
    compile: bool = False  # torch.compile those networks when they train one at a time (not stacked)
    log_every: int = positive(10)
    checkpoint_every: int = positive(50)
    tracker: str = one_of("none", *TRACKERS)  # any tracker accelerate supports
    progress: bool = True
    real_sampling: str = one_of("uniform", "importance")  # how a method draws its real batches
    # sections
    method_config: Any = None
    init_config: Any = None  # the section of a selection method named by ``init`` (if it has one)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)

    def __post_init__(self) -> None:
        if self.method_config is None:
            self.method_config = method_entry(self.method).config_cls()
        if self.init_config is None:
            self.init_config = init_config_cls(self.init)()

    def __getattr__(self, name: str) -> Any:
        # `config.idc` / `config.sensitivity` for the sections named after the method / init, as in YAML
        if name not in ("method", "init"):
            if name == self.__dict__.get("method"):
                return self.__dict__["method_config"]
            if name == self.__dict__.get("init") and self.__dict__.get("init_config") is not None:
                return self.__dict__["init_config"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def stage_iterations(self) -> int:
        """Image updates of each stage: ``iterations``, or its share under ``budget: total``."""
        return self.iterations if self.budget == "per_stage" else max(1, self.iterations // self.num_stages)

    def stage_recipe(self, **method: Any) -> SGDRecipe:
        """How networks train on each stage of the export: ``train_epochs_per_stage`` epochs of
        ``train_batch_size``, with what the method sets (``method``: its LR, LR schedule, ...)."""
        return SGDRecipe(epochs=self.train_epochs_per_stage, batch_size=self.train_batch_size, **method)

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML holds it: the method's (and init's) section under its name."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "method_config":
                out[self.method] = dataclasses.asdict(value)
            elif f.name == "init_config":
                if value is not None:
                    out[self.init] = dataclasses.asdict(value)
            else:
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out


@dataclass
class MethodConfig:
    """The base of every base method's config section (``dm:``, ``idc:``, ...): subclass it as a
    dataclass and register the method with it (``@register_method("dm", DMConfig)``).

    The run calls these hooks on every method's section; the defaults here are what a method without
    multi-formation or cross-key rules needs, so a method overrides only the ones it has. Rules of a
    single key belong beside the field instead (:func:`positive`, :func:`one_of`, ...)."""

    @property
    def expansion(self) -> int:
        """Images one stored image decodes into (IDC's multi-formation: ``factor**2``): a stage starts
        from ``ipc_per_stage * expansion`` real images of every class."""
        return 1

    def check(self, run: PDDConfig) -> None:
        """Rules across keys, of this section or against the whole ``run`` config (e.g. MTT: its
        trajectories fit in ``experts.epochs``), checked with the config before any work; raises
        :class:`ConfigError` naming the keys. The field rules have passed when it is called."""

    def check_data(self, image_shape: tuple[int, int, int]) -> None:
        """Rules against the data, checked once the dataset is loaded and before any work (e.g. IDC:
        ``factor`` divides the image size); raises :class:`ConfigError` naming the key."""


def method_entry(name: str) -> Entry[Any]:
    """The registry entry of base method ``name`` (a :class:`ConfigError` naming the key if unknown)."""
    try:
        entry = METHODS.get(name)
    except UnknownNameError as exc:
        raise ConfigError(f"config key 'method': {exc}") from exc
    config_cls = entry.config_cls
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        # the run calls the section's hooks without asking whether it has them
        raise TypeError(
            f"method {name!r} is registered with the config {config_cls!r}; a method's config must be a "
            "dataclass subclassing pdd_hub.config.MethodConfig"
        )
    return entry


INIT_WITHOUT_SELECTION = {"noise": None, "real": "random"}  # init -> the selection method it uses


def init_selection(init: str) -> str | None:
    """The selection method that picks the real images an ``init`` starts from (``None``: noise)."""
    return INIT_WITHOUT_SELECTION.get(init, init)


def init_config_cls(init: str) -> Callable[[], Any]:
    """The config dataclass of the selection method ``init`` names (a no-op for none)."""
    selection = init_selection(init)
    if selection is None:
        return lambda: None
    try:
        entry = SELECTIONS.get(selection)
    except UnknownNameError as exc:
        raise ConfigError(f"config key 'init' must be noise, real or a selection method: {exc}") from exc
    return entry.config_cls or (lambda: None)


def unused_sections(config: PDDConfig) -> set[str]:
    """The config sections that cannot change what ``config``'s run computes: forgetting bands that
    are off, importance sampling with uniform batches, scoring networks that nothing asks for (no
    bands, and an init that needs neither features nor scores)."""
    unused = set()
    if config.forgetting.mode == "off":
        unused.add("forgetting")
    if config.real_sampling == "uniform":
        unused.add("importance")
    if config.forgetting.mode == "off" and init_selection(config.init) in (None, "random"):
        unused.add("scoring")
    return unused


# --- loading ---------------------------------------------------------------------------------------
class _YamlLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (``true`` / ``false`` only): PyYAML reads ``off``, ``no`` and ``on``
    as booleans (YAML 1.1), which would turn ``forgetting.mode=off`` into ``False``."""

    yaml_implicit_resolvers: typing.ClassVar[dict] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """``text`` parsed as YAML (1.2 booleans; raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no arbitrary objects


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PDDConfig:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = read_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    for key, value in parse_key_values(overrides or []):
        _set_dotted(data, key, value)
    return config_from_dict(data)


def parse_key_values(items: Iterable[str], what: str = "override") -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``: each value read as YAML (an empty one is
    ``None``), in order; an item without ``=`` or key raises :class:`ConfigError` naming ``what``."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not of the form key=value")
        pairs.append((key.strip(), read_yaml(raw) if raw.strip() else None))
    return pairs


def build_section(cls: type, data: dict[str, Any], name: str) -> Any:
    """The config dataclass ``cls`` from a mapping, every value coerced and checked against its field's
    rule, as a config's section ``name`` is (errors name ``<name>.<key>``): for settings given
    outside a run config, such as ``pdd-hub select --scoring`` or a selection method's ``--param``."""
    section = _build(cls, data, prefix=f"{name}.")
    _check_rules(section, prefix=f"{name}.")
    return section


def config_from_dict(data: dict[str, Any]) -> PDDConfig:
    """Build and validate a :class:`PDDConfig` from a (nested) mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {data!r}")
    data = dict(data)
    sections = {"method_config": _method_section(data), "init_config": _init_section(data)}
    config = _build(PDDConfig, data, prefix="", fixed=sections)
    validate(config)
    return config


def _method_section(data: dict[str, Any]) -> Any:
    """Pop and build the section of the method ``data`` names; a section of another method fails."""
    method = data.get("method", PDDConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method' must be a method name, got {method!r}")
    entry = method_entry(method)
    others = [key for key in data if key != method and key in METHODS]
    if others:
        raise ConfigError(
            f"config section {others[0]!r} belongs to method {others[0]!r}, but this run's method is "
            f"{method!r}: remove the section, or set method: {others[0]}"
        )
    return _build(entry.config_cls, data.pop(method, None) or {}, prefix=f"{method}.")


def _init_section(data: dict[str, Any]) -> Any:
    """Pop and build the section of the selection method ``init`` names (``None`` if it has none)."""
    init = data.get("init", PDDConfig.init)
    if not isinstance(init, str):
        raise ConfigError(f"config key 'init' must be noise, real or a selection method, got {init!r}")
    config_cls = init_config_cls(init)
    own = set(PDDConfig.__dataclass_fields__)
    stray = [key for key in data if key != init and key in SELECTIONS and key not in own]
    if stray:
        raise ConfigError(
            f"config section {stray[0]!r} belongs to the selection method {stray[0]!r}, but this run's init "
            f"is {init!r}: remove the section, or set init: {stray[0]}"
        )
    # a selection method named like a section of the run (forgetting) takes no settings of its own
    section = data.pop(init, None) if init not in INIT_WITHOUT_SELECTION and init not in own else None
    if not dataclasses.is_dataclass(config_cls):
        if section is not None:
            raise ConfigError(f"config section {init!r}: the selection method {init!r} takes no settings")
        return None
    return _build(config_cls, section or {}, prefix=f"{init}.")


def parse_recipe_args(argv: list[str]) -> PDDConfig:
    """``--config NAME_OR_FILE key=value ...`` as the recipes and ``pdd-hub distill`` take them."""
    path = None
    overrides = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("--config needs a config name (see `pdd-hub configs`) or a file path")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            raise SystemExit(usage())
        else:
            overrides.append(arg)
    return load_config(None if path is None else resolve_config(path), overrides)


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file path as given, else the shipped config of that name (``quickstart_dm``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return shipped_config(str(name_or_path))


def usage() -> str:
    """The recipes' ``--help``: every key with its default, the method sections included."""
    lines = [
        "usage: pdd-hub distill --config NAME_OR_FILE [key=value ...]",
        "       accelerate launch recipes/pdd_mtt.py --config FILE [key=value ...]",
        "",
        "keys:",
    ]
    common = {k: v for k, v in PDDConfig().to_dict().items() if k != PDDConfig.method}
    for key, value in flatten_config(common).items():
        lines.append(f"  {key} (default {value!r})")
    for name in METHODS.names():
        entry = METHODS.get(name)
        lines.append(f"\nmethod: {name} ({entry.summary}); its section:")
        for key, value in flatten_config(dataclasses.asdict(entry.config_cls()), f"{name}.").items():
            lines.append(f"  {key} (default {value!r})")
    return "\n".join(lines)


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
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


def _build(cls: type, data: dict[str, Any], prefix: str, fixed: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.')!r} must be a mapping, got {data!r}")
    fixed = fixed or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        candidates = list(fields)
        if cls is PDDConfig:
            candidates += METHODS.names() + SELECTIONS.names()
        close = difflib.get_close_matches(str(key), candidates, n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {sorted(fields)}"
        raise ConfigError(f"unknown config key {prefix + str(key)!r}{hint}")
    values = dict(fixed)
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
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
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


# --- validation ------------------------------------------------------------------------------------
def validate(config: PDDConfig) -> None:
    """Every field's rule, the method section's rules across keys (:meth:`MethodConfig.check`), then
    the model and tracker."""
    _check_rules(config, prefix="")
    method_config: MethodConfig = config.method_config
    _check_rules(method_config, prefix=f"{config.method}.")
    if config.init_config is not None:
        _check_rules(config.init_config, prefix=f"{config.init}.")
    method_config.check(config)
    try:
        check_model_name(config.model)
    except ValueError as exc:
        raise ConfigError(f"config key 'model': {exc}") from exc
    check_tracker(config.tracker, key="config key 'tracker'")


def _check_rules(section: Any, prefix: str) -> None:
    for f in dataclasses.fields(section):
        value, key, rule = getattr(section, f.name), prefix + f.name, f.metadata.get("rule")
        if dataclasses.is_dataclass(value) and f.name not in ("method_config", "init_config"):
            _check_rules(value, f"{key}.")
        elif value is None:
            continue
        elif (number := config_number_rule(key, value, rule)) is not None:
            number.check(value, f"config key {key!r}", ConfigError)  # finite, in range, below the caps
        elif rule == "choice" and value not in f.metadata["choices"]:
            raise ConfigError(
                f"config key {key!r} must be one of {list(f.metadata['choices'])}, got {value!r}"
            )
        elif rule == "augment":
            _check_augment(key, value)


def _check_augment(key: str, value: str) -> None:
    try:
        build_augment(value)
    except ValueError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from exc


def save_config(config: PDDConfig, path: str | Path) -> None:
    """Write the config as YAML, atomically (a half-written config would block the resumption)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
