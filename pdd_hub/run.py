"""The plumbing of a distillation run, in two steps of different cost:

  folder = RunFolder.claim(config, accelerator)   # cheap: lock, config check; loads no data
  run = prepare_data(folder)                      # expensive: real data, preprocessing, on the device

:class:`RunFolder` is a handle on the run folder (:class:`RunLayout`, the one owner of its layout):
its lock, saved config, mid-stage checkpoint, preprocessing files and finished stages' files,
validation curves and export checksums; whatever only reads a run needs nothing else.
:func:`prepare_data` returns a :class:`RunData`, what the stage loop (:mod:`pdd_hub.progressive`)
works with: the folder plus the real data and preprocessing on the device, the examples' scores and
features, start states and random network states, and the writing of what needs the data (stage
grids, the export).

<output_dir>/
  config.yaml                  the resolved config (a re-run must use the same one)
  preprocess.json/.safetensors the preprocessing fitted on train (reused on resume)
  start_states/stage_K.safetensors   networks trained on stages 1..K-1 (the transition); a
                               stage_K.parts/ folder holds each network of an unfinished one
  loss_networks/stage_K/       pools of the ``retrained`` loss-network source (pdd_hub.loss_networks)
  experts/stage_K/             networks trained on real data from stage K's start states (MTT, IDC)
  scoring/                     networks trained on all real data: forgetting scores, selection features
  forgetting_scores.parquet    each real example's forgetting score (when a run uses them)
  method/                      anything else a base method keeps
  stages/stage_K.safetensors   the stored images of finished stage K (+ .json: lr, val acc, history)
  checkpoints/current/         the mid-stage checkpoint
  grids/stage_K.png            each stage's stored images, written as it finishes
  accuracy_per_stage.png       validation accuracy after each stage
  validation_curves.png        validation accuracy per distillation iteration, one line per stage
  logs/                        tracker logs (tensorboard, aim, ...: any tracker accelerate supports)
  dataset/                     the Hub-layout export, rewritten after every finished stage
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from pdd_hub.augment import DSA, build_augment
from pdd_hub.checkpoint import StageCheckpoint
from pdd_hub.config import PDDConfig, config_from_dict, flatten_config, save_config, unused_sections
from pdd_hub.data import ImageSet, Preprocess, PreprocessedImages, RealData, load_real_data
from pdd_hub.errors import ConfigError, CorruptStateError, ExportFormatError, ModelNotFoundError, OutputError
from pdd_hub.hub import StageFacts, build_schedule, export_pdd, stage_checksum
from pdd_hub.io import RUN_FILE_HINT, load_json, load_tensors, save_json, save_tensors
from pdd_hub.methods.experts import ExpertSet
from pdd_hub.models import check_model_builds
from pdd_hub.outputs import acquire_output_lock, check_writable, release_output_lock
from pdd_hub.params import build_network, flat_params
from pdd_hub.registry import METHODS
from pdd_hub.runtime import TrainingRuntime
from pdd_hub.scoring import RealExamples, train_scoring_networks
from pdd_hub.train import TrainingRecipe
from pdd_hub.validate import PREPROCESS_RULES, check_numbers
from pdd_hub.viz import plot_accuracy_per_stage, plot_validation_curves, save_image_grid

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what it computes.
RESUMABLE_KEYS = {"output_dir", "progress", "log_every", "checkpoint_every", "tracker", "num_threads"}


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run folder."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def preprocess_files(self) -> tuple[Path, Path]:
        return self.root / "preprocess.json", self.root / "preprocess.safetensors"

    def start_states_file(self, stage: int) -> Path:
        return self.root / "start_states" / f"stage_{stage}.safetensors"

    def loss_networks_file(self, stage: int, refresh: int) -> Path:
        """The ``refresh``-th pool of networks the ``retrained`` loss-network source trained for ``stage``."""
        return self.root / "loss_networks" / f"stage_{stage}" / f"pool_{refresh:04d}.safetensors"

    def experts_dir(self, stage: int) -> Path:
        return self.root / "experts" / f"stage_{stage}"

    @property
    def scoring_dir(self) -> Path:
        """Networks trained on all the real data: forgetting scores and selection features."""
        return self.root / "scoring"

    @property
    def method_dir(self) -> Path:
        return self.root / "method"

    def stage_file(self, stage: int) -> Path:
        return self.root / "stages" / f"stage_{stage}.safetensors"

    def stage_record(self, stage: int) -> Path:
        return self.root / "stages" / f"stage_{stage}.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def grid_file(self, stage: int) -> Path:
        return self.root / "grids" / f"stage_{stage}.png"

    @property
    def accuracy_plot(self) -> Path:
        return self.root / "accuracy_per_stage.png"

    @property
    def validation_curves(self) -> Path:
        return self.root / "validation_curves.png"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"


@dataclass
class FinishedStage:
    """A finished stage: what the method stored, what networks train on (decoded), its LR."""

    stored: torch.Tensor  # float32, on CPU, in the preprocessed space
    stored_labels: torch.Tensor
    images: torch.Tensor  # decoded (IDC: expansion x as many as stored)
    labels: torch.Tensor
    lr: float
    val_acc: float
    info: dict = field(default_factory=dict)  # what else the stage's record holds (pool, init images)


def preprocess_from_run_files(json_path: Path, config: Any, tensors: dict[str, torch.Tensor]) -> Preprocess:
    """The run's saved preprocessing (``preprocess.json`` + ``.safetensors``), checked as an export's."""
    try:
        check_numbers(config, PREPROCESS_RULES, str(json_path), ExportFormatError)
        return Preprocess.from_config(config, tensors)
    except (ExportFormatError, TypeError, AttributeError) as exc:
        raise CorruptStateError(f"{json_path} is damaged ({exc}); {RUN_FILE_HINT}") from exc


class RunFolder:
    """A cheap handle on a run folder: its layout, lock, config, checkpoint and the files finished
    stages leave. Constructing one reads and writes nothing; :meth:`claim` takes the folder for a run.
    Loading the data is a separate, explicit step (:func:`prepare_data`), so whatever only reads a run
    (its finished stages, curves, export checksums) never pays for it."""

    def __init__(self, config: PDDConfig, accelerator: Accelerator) -> None:
        self.config = config
        self.accelerator = accelerator
        self.layout = RunLayout(Path(config.output_dir))
        self.checkpoint = StageCheckpoint(self.layout.checkpoints_dir, accelerator)

    @classmethod
    def claim(cls, config: PDDConfig, accelerator: Accelerator) -> RunFolder:
        """The folder of ``config.output_dir``, locked for this run (as long as the handle lives) with
        the config checked against the one saved there (or written), before any data is loaded."""
        folder = cls(config, accelerator)
        folder._claim_output_dir()
        folder._check_or_write_config()
        return folder

    @property
    def dir(self) -> Path:
        return self.layout.root

    @property
    def dataset_dir(self) -> Path:
        return self.layout.dataset_dir

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @cached_property
    def runtime(self) -> TrainingRuntime:
        """Where and how the run's networks train, and the seed of its random streams (built once)."""
        return TrainingRuntime.for_run(self.config, self.accelerator)

    def exists_on_all(self, path: Path) -> bool:
        """``path.exists()``, seen the same by every process: all look before any may go on (and
        write it), so no process can take the other branch and miss a barrier."""
        exists = path.exists()
        self.accelerator.wait_for_everyone()
        return exists

    # --- claim ------------------------------------------------------------------------------------
    def _claim_output_dir(self) -> None:
        """Lock the run folder for this run (a second run on it stops at once, naming this one's pid)
        and check that it can be written and has free space, before any work. The main process does
        it; the others stop with the same error."""
        error = None
        if self.accelerator.is_main_process:
            try:
                lock = acquire_output_lock(self.dir)
                weakref.finalize(self, release_output_lock, lock)  # held as long as this handle
                check_writable(self.dir)
            except OutputError as exc:
                error = str(exc)
        if self.accelerator.num_processes > 1:
            error = broadcast_object_list([error])[0]
        if error is not None:
            raise OutputError(error)

    def _check_or_write_config(self) -> None:
        path = self.layout.config_file
        if path.exists():
            self._check_same_config(path)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, path)
        self.accelerator.wait_for_everyone()

    def _check_same_config(self, path: Path) -> None:
        """Stop unless the config saved at ``path`` computes what this run's does."""
        import yaml

        try:
            previous = config_from_dict(yaml.safe_load(path.read_text()) or {})
        except (ConfigError, yaml.YAMLError) as exc:
            raise ConfigError(f"the run's saved config {path} is unreadable ({exc}); move it away") from exc
        before = flatten_config(previous.to_dict())
        # a section unused before and now (e.g. a changed default of forgetting bands that are
        # off) does not stop a resumption
        ignored = RESUMABLE_KEYS | (unused_sections(previous) & unused_sections(self.config))
        changed = sorted(
            k
            for k, v in flatten_config(self.config.to_dict()).items()
            if k.split(".")[0] not in ignored and before.get(k) != v
        )
        if changed:
            raise ConfigError(
                f"{self.dir} holds a run with a different config (changed: {', '.join(changed)}); "
                "resume it with the same config or choose a new output_dir"
            )

    # --- preprocessing files ----------------------------------------------------------------------
    def load_preprocess(self) -> Preprocess | None:
        """The preprocessing saved in the folder, or ``None`` (seen the same by every process)."""
        json_path, tensor_path = self.layout.preprocess_files
        if not self.exists_on_all(json_path):
            return None
        tensors = load_tensors(tensor_path) if tensor_path.exists() else {}
        return preprocess_from_run_files(json_path, load_json(json_path), tensors)

    def save_preprocess(self, preprocess: Preprocess) -> None:
        """Keep ``preprocess`` (the JSON last: it marks the pair complete). Main process only."""
        json_path, tensor_path = self.layout.preprocess_files
        if preprocess.tensors():
            save_tensors(preprocess.tensors(), tensor_path)
        save_json(preprocess.to_config(), json_path)

    # --- finished stages --------------------------------------------------------------------------
    def load_finished(self, stage: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
        """``(stored images, labels, record)`` of finished stage ``stage``, or ``None``."""
        path = self.layout.stage_file(stage)
        if not path.exists():
            return None
        tensors = load_tensors(path, ("images", "labels"))
        record_path = self.layout.stage_record(stage)
        record = load_json(record_path) if record_path.exists() else None
        if not isinstance(record, dict) or not {"lr", "val_acc"} <= set(record):
            raise CorruptStateError(
                f"{record_path} is missing or damaged (the record of finished stage {stage}, beside "
                f"{path.name}): delete both to recompute the stage, or start clean with a new output folder"
            )
        return tensors["images"], tensors["labels"], record

    def save_stage(self, stage: int, finished: FinishedStage, history: list[dict]) -> None:
        """Keep stage ``stage``'s record (learned LR, validation history) and stored images: the record
        first, since the images file is what marks a stage finished. Main process only."""
        record = {"lr": finished.lr, "val_acc": finished.val_acc, "history": history, **finished.info}
        save_json(record, self.layout.stage_record(stage))
        save_tensors(
            {"images": finished.stored, "labels": finished.stored_labels}, self.layout.stage_file(stage)
        )

    def plot_validation_curves(self, upto: int) -> Path:
        """``validation_curves.png``: each finished stage's validation accuracy per iteration."""
        curves = {}
        for stage in range(1, upto + 1):
            history = load_json(self.layout.stage_record(stage)).get("history", [])
            curves[f"stage {stage}"] = [(h["iteration"], h["val_acc"]) for h in history]
        title = f"PDD + {self.config.method.upper()}: validation accuracy while distilling"
        return plot_validation_curves(curves, self.layout.validation_curves, title=title)

    def export_is_current(self, finished: list[FinishedStage]) -> bool:
        """Whether ``dataset/`` holds exactly these stages (by the checksums in its schedule)."""
        schedule = self.dataset_dir / "pdd_schedule.json"
        if not schedule.exists():
            return False
        try:
            exported = [s.get("sha256") for s in load_json(schedule)["stages"]]
        except (CorruptStateError, KeyError, TypeError, AttributeError):
            return False  # a damaged export is written again
        return exported == [stage_checksum(f.images, f.labels) for f in finished]


@dataclass(eq=False)
class RunData:
    """A claimed run folder plus the data every stage needs, on the accelerator's device: what the
    stage loop works with. Made by :func:`prepare_data`."""

    folder: RunFolder
    real: RealData  # as loaded (its ``train`` cut to ``train_per_class``), uint8 on CPU
    preprocess: Preprocess
    train: ImageSet  # uint8 on the device, preprocessed a batch at a time
    val: ImageSet  # preprocessed, on the device
    augment: DSA | None  # how networks train here (experts, MTT's student)

    # what every piece of the stage loop reads of the folder
    @property
    def config(self) -> PDDConfig:
        return self.folder.config

    @property
    def accelerator(self) -> Accelerator:
        return self.folder.accelerator

    @property
    def layout(self) -> RunLayout:
        return self.folder.layout

    @property
    def device(self) -> torch.device:
        return self.folder.device

    @property
    def runtime(self) -> TrainingRuntime:
        return self.folder.runtime

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.real.image_shape

    @cached_property
    def examples(self) -> RealExamples:
        """The training examples with forgetting scores and features, from the run's scoring networks
        (trained in ``scoring/`` on first use)."""
        cfg = self.config
        model = cfg.scoring.model or cfg.model

        def train() -> ExpertSet:
            return train_scoring_networks(
                self.layout.scoring_dir,
                self.train,
                cfg.scoring,
                model_name=model,
                accelerator=self.accelerator,
                augment=self.augment,
                runtime=self.runtime,
            )

        return RealExamples(self.train, model, train)

    # --- start states -----------------------------------------------------------------------------
    def initial_start_states(self, count: int) -> torch.Tensor:
        """Stage 1 starts from ``count`` seeded random initialisations of the distillation network."""
        path = self.layout.start_states_file(1)
        if self.folder.exists_on_all(path):
            states = load_tensors(path, ("states",))["states"]
            if len(states) == count:
                return states
            self.accelerator.wait_for_everyone()
        states = torch.stack([self.random_network_state(("start_state", i)) for i in range(count)])
        if self.accelerator.is_main_process:
            save_tensors({"states": states}, path)
        self.accelerator.wait_for_everyone()
        return states

    def random_network_state(self, name: tuple) -> torch.Tensor:
        """Flat parameters of a random initialisation of the run's network, from stream ``name``."""
        seed = self.runtime.stream_seed(*name)
        return flat_params(build_network(self.config.model, self.num_classes, self.image_shape, seed=seed))

    # --- what a finished stage leaves -----------------------------------------------------------
    def save_finished(self, stage: int, finished: FinishedStage, history: list[dict]) -> None:
        """Keep stage ``stage`` (stored images, labels, learned LR, validation history), draw its grid
        (decoded with the run's preprocessing) and the validation curves so far."""
        if not self.accelerator.is_main_process:
            return
        self.folder.save_stage(stage, finished, history)
        save_image_grid(
            self.preprocess.inverse(finished.stored),
            finished.stored_labels,
            self.num_classes,
            self.layout.grid_file(stage),
            class_names=self.real.class_names,
        )
        self.folder.plot_validation_curves(stage)

    def export(self, finished: list[FinishedStage], recipe: TrainingRecipe, storage: dict) -> Path:
        """Write ``dataset/`` (atomically) with the finished stages, in the Hub format, unless it
        already holds exactly them (a resumed run does not rewrite an export that is current)."""
        cfg, dataset_dir = self.config, self.folder.dataset_dir
        stages = [
            StageFacts(
                len(f.labels) // self.num_classes, f.lr, f.info.get("pool"), f.info.get("distillation")
            )
            for f in finished
        ]
        schedule = build_schedule(
            stages,
            recipe,
            self.real,
            self.preprocess,
            method=cfg.method,
            distill_model=cfg.model,
            config=cfg.to_dict(),
            storage=storage,
        )
        if self.accelerator.is_main_process and not self.folder.export_is_current(finished):
            export_pdd(dataset_dir, schedule, [(f.images, f.labels) for f in finished], self.preprocess)
            plot_accuracy_per_stage(
                {f"{cfg.model} (val)": [(f.val_acc, 0.0) for f in finished]},
                self.layout.accuracy_plot,
                title=f"PDD + {cfg.method.upper()}: validation accuracy",
            )
        self.accelerator.wait_for_everyone()
        return dataset_dir


def prepare_data(folder: RunFolder) -> RunData:
    """The expensive step of a run, on a claimed ``folder``: load the real data, check that it fits
    the config, fit (or load) the preprocessing and put the training and validation sets on the
    device."""
    config, accelerator, device = folder.config, folder.accelerator, folder.device
    with accelerator.main_process_first():  # one process decodes and caches, the others read
        real = load_real_data(
            config.dataset,
            val_per_class=config.val_per_class,
            seed=config.seed,
            image_column=config.image_column,
            label_column=config.label_column,
            test_split=config.test_split,
            image_size=config.image_size,
        )
    check_data_fits_config(config, real)  # before the (long) preprocessing fit
    preprocess = fit_or_load_preprocess(folder, real.train)  # on the whole training split, as MTT does
    if config.train_per_class is not None:
        real.keep_train_per_class(config.train_per_class, config.seed)
    # the training set stays uint8 on the device and is preprocessed a batch at a time
    raw = real.train
    images = PreprocessedImages(raw.images.to(device), preprocess)
    train = ImageSet(images, raw.labels.to(device), raw.class_names, raw.source_rows)
    val = on_device(real.val, preprocess, device)
    # how networks train here (experts, MTT's student): the config's, else the method's default
    augment = build_augment(config.augment or METHODS.get(config.method).cls.default_augment)
    return RunData(folder, real, preprocess, train, val, augment)


def on_device(data: ImageSet, preprocess: Preprocess, device: torch.device) -> ImageSet:
    """``data`` preprocessed as float images on ``device``."""
    images = preprocess.apply_all(data.images.to(device))
    return ImageSet(images, data.labels.to(device), data.class_names, data.source_rows)


def fewest_per_class(config: PDDConfig, train: ImageSet) -> int:
    """Training examples of the smallest class (after ``train_per_class``)."""
    fewest = min(train.class_counts())
    cap = config.train_per_class
    return fewest if cap is None else min(fewest, cap)


def check_data_fits_config(config: PDDConfig, real: RealData) -> None:
    """Stop with a config error when the model cannot take the data or a class has too few images."""
    section = config.method_config
    try:
        check_model_builds(config.model, real.num_classes, real.image_shape)
    except ModelNotFoundError as exc:
        raise ConfigError(f"config key 'model': {exc}") from exc
    section.check_data(real.image_shape)  # e.g. IDC: the factor divides the image size
    expansion = section.expansion
    needed, fewest = config.ipc_per_stage * expansion, fewest_per_class(config, real.train)
    if needed > fewest:
        what = (
            f"{needed} real training images"
            if expansion == 1
            else (
                f"{config.ipc_per_stage} x {expansion} = {needed} real training images ({config.method} "
                f"packs {expansion} into each stored image)"
            )
        )
        raise ConfigError(
            f"config key 'ipc_per_stage' = {config.ipc_per_stage} needs {what} of every class, but one "
            f"class has only {fewest} (after val_per_class / train_per_class): lower ipc_per_stage"
        )


def fit_or_load_preprocess(folder: RunFolder, train: ImageSet) -> Preprocess:
    """The folder's preprocessing, fitted on ``train`` by the main process first if it has none (so a
    resumed run reuses the first fit)."""
    saved = folder.load_preprocess()
    if saved is not None:
        return saved
    cfg = folder.config
    if folder.accelerator.is_main_process:
        logger.info("fitting preprocessing on %d training images (ZCA: %s)", len(train), cfg.zca)
        pre = Preprocess.fit(train.images, normalize=cfg.normalize, zca=cfg.zca, zca_eps=cfg.zca_eps)
        folder.save_preprocess(pre)
    folder.accelerator.wait_for_everyone()
    return fit_or_load_preprocess(folder, train)
