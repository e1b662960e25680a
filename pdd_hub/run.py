"""The plumbing of a distillation run: its folder, data on the device, finished stages, export.

<output_dir>/
  config.yaml                  the resolved config (a re-run must use the same one)
  preprocess.json/.safetensors the preprocessing fitted on train (reused on resume)
  start_states/stage_K.safetensors   networks trained on stages 1..K-1 (the transition)
  experts/stage_K/             the method's expert trajectories of stage K (MTT)
  stages/stage_K.safetensors   the chosen images of finished stage K (+ lr, val acc)
  checkpoints/current/         the mid-stage checkpoint
  grids/stage_K.png            each stage's images, written as it finishes
  accuracy_per_stage.png       validation accuracy after each stage
  dataset/                     the Hub-layout export, rewritten after every finished stage
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pdd_hub.augment import augment_spec, build_augment
from pdd_hub.checkpoint import StageCheckpoint
from pdd_hub.config import PDDConfig, config_from_dict, flatten_config, save_config
from pdd_hub.data import ImageSet, Preprocess, RealData, load_real_data
from pdd_hub.errors import ConfigError, ModelNotFoundError
from pdd_hub.hub import Schedule, StageSpec, export_pdd, stage_checksum, stage_split_name
from pdd_hub.io import load_json, save_json, save_tensors
from pdd_hub.models import check_model_builds
from pdd_hub.viz import plot_accuracy_per_stage, save_image_grid

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what it computes.
RESUMABLE_KEYS = {"output_dir", "progress", "log_every", "checkpoint_every", "tracker"}


@dataclass
class FinishedStage:
    images: torch.Tensor  # preprocessed float32, on CPU
    labels: torch.Tensor
    lr: float
    val_acc: float


class Run:
    """A run folder plus the data every stage needs, on the accelerator's device."""

    def __init__(self, config: PDDConfig, accelerator: Accelerator) -> None:
        self.config = config
        self.accelerator = accelerator
        self.dir = Path(config.output_dir)
        self.device = accelerator.device
        self._check_or_write_config()
        with accelerator.main_process_first():  # one process decodes and caches, the others read
            self.real: RealData = load_real_data(
                config.dataset,
                val_per_class=config.val_per_class,
                seed=config.seed,
                image_column=config.image_column,
                label_column=config.label_column,
                test_split=config.test_split,
                image_size=config.image_size,
            )
        self._check_data_fits_config()  # before the (long) preprocessing fit
        self.preprocess = self._fit_or_load_preprocess()  # on the whole training split, as MTT does
        if config.train_per_class is not None:
            generator = torch.Generator().manual_seed(config.seed)
            keep = self.real.train.sample_per_class(config.train_per_class, generator).sort().values
            self.real.train = self.real.train.subset(keep)
        self.train = self._on_device(self.real.train)
        self.val = self._on_device(self.real.val)
        self.augment = build_augment(config.augment)
        self.checkpoint = StageCheckpoint(self.dir / "checkpoints", accelerator)

    def _check_data_fits_config(self) -> None:
        cfg = self.config
        try:
            check_model_builds(cfg.model, self.num_classes, self.image_shape)
        except ModelNotFoundError as exc:
            raise ConfigError(f"config key 'model': {exc}") from exc
        fewest = min(self.real.train.class_counts())
        if cfg.train_per_class is not None:
            fewest = min(fewest, cfg.train_per_class)
        if cfg.init == "real" and fewest < cfg.ipc_per_stage:
            raise ConfigError(
                f"config key 'ipc_per_stage' = {cfg.ipc_per_stage} needs that many real training images of "
                f"every class, but one class has only {fewest} (after val_per_class / train_per_class)"
            )

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.real.image_shape

    @property
    def dataset_dir(self) -> Path:
        return self.dir / "dataset"

    # --- set-up ---------------------------------------------------------------------------------
    def _check_or_write_config(self) -> None:
        path = self.dir / "config.yaml"
        if path.exists():
            import yaml

            try:
                previous = config_from_dict(yaml.safe_load(path.read_text()) or {})
            except (ConfigError, yaml.YAMLError) as exc:
                raise ConfigError(
                    f"the run's saved config {path} is unreadable ({exc}); move it away"
                ) from exc
            before = flatten_config(previous.to_dict())
            changed = sorted(
                k
                for k, v in flatten_config(self.config.to_dict()).items()
                if k.split(".")[0] not in RESUMABLE_KEYS and before.get(k) != v
            )
            if changed:
                raise ConfigError(
                    f"{self.dir} holds a run with a different config (changed: {', '.join(changed)}); "
                    "resume it with the same config or choose a new output_dir"
                )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, path)
        self.accelerator.wait_for_everyone()

    def _fit_or_load_preprocess(self) -> Preprocess:
        json_path, tensor_path = self.dir / "preprocess.json", self.dir / "preprocess.safetensors"
        if self.exists_on_all(json_path):
            tensors = load_file(str(tensor_path)) if tensor_path.exists() else {}
            return Preprocess.from_config(load_json(json_path), tensors)
        cfg = self.config
        if self.accelerator.is_main_process:
            logger.info(
                "fitting preprocessing on %d training images (ZCA: %s)", len(self.real.train), cfg.zca
            )
            pre = Preprocess.fit(
                self.real.train.images, normalize=cfg.normalize, zca=cfg.zca, zca_eps=cfg.zca_eps
            )
            if pre.tensors():
                save_tensors(pre.tensors(), tensor_path)
            save_json(pre.to_config(), json_path)
        self.accelerator.wait_for_everyone()
        return self._fit_or_load_preprocess()

    def exists_on_all(self, path: Path) -> bool:
        """``path.exists()``, seen the same by every process: all look before any may go on (and
        write it), so no process can take the other branch and miss a barrier."""
        exists = path.exists()
        self.accelerator.wait_for_everyone()
        return exists

    def _on_device(self, data: ImageSet) -> ImageSet:
        images = self.preprocess.apply_all(data.images.to(self.device))
        return ImageSet(images, data.labels.to(self.device), data.class_names)

    # --- finished stages -----------------------------------------------------------------------
    def stage_file(self, stage: int) -> Path:
        return self.dir / "stages" / f"stage_{stage}.safetensors"

    def load_finished(self, stage: int) -> FinishedStage | None:
        path = self.stage_file(stage)
        if not path.exists():
            return None
        tensors = load_file(str(path))
        meta = load_json(path.with_suffix(".json"))
        return FinishedStage(tensors["images"], tensors["labels"], meta["lr"], meta["val_acc"])

    def save_finished(self, stage: int, finished: FinishedStage, history: list[dict]) -> None:
        """Keep stage ``stage`` (images, labels, learned LR, validation history) and draw its grid."""
        if not self.accelerator.is_main_process:
            return
        save_json(
            {"lr": finished.lr, "val_acc": finished.val_acc, "history": history},
            self.stage_file(stage).with_suffix(".json"),
        )
        save_tensors({"images": finished.images, "labels": finished.labels}, self.stage_file(stage))
        save_image_grid(
            self.preprocess.inverse(finished.images),
            finished.labels,
            self.num_classes,
            self.dir / "grids" / f"stage_{stage}.png",
        )

    def export(self, finished: list[FinishedStage]) -> Path:
        """Write ``dataset/`` (atomically) with the finished stages, in the Hub format, unless it
        already holds exactly them (a resumed run does not rewrite an export that is current)."""
        cfg = self.config
        specs = [
            StageSpec(
                split=stage_split_name(k),
                ipc=cfg.ipc_per_stage,
                lr=f.lr,
                epochs=cfg.train_epochs_per_stage,
                batch_size=cfg.train_batch_size,
            )
            for k, f in enumerate(finished, start=1)
        ]
        schedule = Schedule(
            stages=specs,
            class_names=self.real.class_names,
            image_shape=self.image_shape,
            preprocess=self.preprocess.to_config(),
            method=cfg.method,
            distill_model=cfg.model,
            source=self.real.source.to_dict(),
            training={"augment": augment_spec(self.augment), "mode": "progressive"},
            config=cfg.to_dict(),
        )
        if self.accelerator.is_main_process and not self.export_is_current(finished):
            export_pdd(self.dataset_dir, schedule, [(f.images, f.labels) for f in finished], self.preprocess)
            plot_accuracy_per_stage(
                {f"{cfg.model} (val)": [(f.val_acc, 0.0) for f in finished]},
                self.dir / "accuracy_per_stage.png",
                title=f"PDD + {cfg.method.upper()}: validation accuracy",
            )
        self.accelerator.wait_for_everyone()
        return self.dataset_dir

    def export_is_current(self, finished: list[FinishedStage]) -> bool:
        """Whether ``dataset/`` holds exactly these stages (by the checksums in its schedule)."""
        schedule = self.dataset_dir / "pdd_schedule.json"
        if not schedule.exists():
            return False
        exported = [s.get("sha256") for s in load_json(schedule)["stages"]]
        return exported == [stage_checksum(f.images, f.labels) for f in finished]

    # --- start states (the transition's output) -------------------------------------------------
    def start_states_file(self, stage: int) -> Path:
        return self.dir / "start_states" / f"stage_{stage}.safetensors"
