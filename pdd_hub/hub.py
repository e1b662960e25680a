"""The pdd-hub export format (``format_version`` 1): write atomically, validate, load, push.

An export is a folder in Hugging Face Hub dataset layout::

    README.md                 dataset card; YAML ``configs:`` lists the splits in stage order
    pdd_schedule.json         the source of truth: per-stage ipc / lr / epochs / optimiser, classes,
                              image shape, preprocessing, method, source dataset, full config
    preprocess.safetensors    ZCA tensors (only when ZCA is used)
    data/stage_K-00000-of-00001.parquet   columns image (Array3D float32 C x H x W, exact learned
                              values), label (ClassLabel), preview (uint8 image for the Hub viewer)
    images/stage_K.png        a grid of each stage's images

``datasets.load_dataset(folder)`` alone returns the ``DatasetDict`` of splits ``stage_1..stage_P``;
:func:`load_pdd` adds the schedule and preprocessing and checks that everything agrees.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from pdd_hub.card import render_card
from pdd_hub.data.transforms import Preprocess
from pdd_hub.errors import ExportFormatError, ExportNotFoundError
from pdd_hub.io import tensors_sha256

if TYPE_CHECKING:
    from pdd_hub.publish import PushOptions
    from pdd_hub.train import TrainingRecipe

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCHEDULE_FILE = "pdd_schedule.json"
PREPROCESS_FILE = "preprocess.safetensors"
CARD_FILE = "README.md"
DATA_DIR = "data"
GRID_DIR = "images"


@dataclass
class StageSpec:
    """How to train on one stage: the learned LR and the evaluation protocol around it."""

    split: str
    ipc: int
    lr: float
    epochs: int
    batch_size: int = 256
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step_at_half"  # see pdd_hub.train.LR_SCHEDULES
    stored_ipc: int | None = None  # images per class the method stored (IDC: ipc / factor**2)
    real_pool: dict[str, Any] | None = None  # the real examples the stage learned from (forgetting band)
    sha256: str | None = None  # of the stage's float32 images and int64 labels, set on export

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        required = ("split", "ipc", "lr", "epochs")
        missing = [k for k in required if k not in data]
        if missing:
            raise ExportFormatError(f"{SCHEDULE_FILE}: stage entry {data!r} lacks {missing}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Schedule:
    """The content of ``pdd_schedule.json``."""

    stages: list[StageSpec]
    class_names: list[str]
    image_shape: tuple[int, int, int]
    preprocess: dict[str, Any]
    method: str = "unknown"
    distill_model: str = "unknown"
    source: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)  # how stored images decode into the exported
    config: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def split_names(self) -> list[str]:
        return [s.split for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_shape"] = list(self.image_shape)
        order = [
            "format_version",
            "method",
            "distill_model",
            "source",
            "num_classes",
            "class_names",
            "image_shape",
            "preprocess",
            "training",
            "storage",
            "stages",
            "config",
        ]
        data["num_classes"] = self.num_classes
        return {k: data[k] for k in order}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportFormatError(
                f"{SCHEDULE_FILE} has format_version {version!r}, but this pdd-hub reads format_version "
                f"{FORMAT_VERSION}; upgrade pdd-hub (pip install -U pdd-hub) or re-export the dataset"
            )
        missing = [k for k in ("stages", "class_names", "image_shape", "preprocess") if k not in data]
        if missing:
            raise ExportFormatError(f"{SCHEDULE_FILE} lacks required keys {missing}")
        if not data["stages"]:
            raise ExportFormatError(f"{SCHEDULE_FILE} lists no stages")
        return cls(
            stages=[StageSpec.from_dict(s) for s in data["stages"]],
            class_names=list(data["class_names"]),
            image_shape=tuple(data["image_shape"]),
            preprocess=data["preprocess"],
            method=data.get("method", "unknown"),
            distill_model=data.get("distill_model", "unknown"),
            source=data.get("source", {}),
            training=data.get("training", {}),
            storage=data.get("storage", {}),
            config=data.get("config", {}),
            format_version=version,
        )


@dataclass
class SyntheticStage:
    """One stage's images (float32, in the preprocessed space) and labels."""

    spec: StageSpec
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class PDDDataset:
    """A loaded export: schedule, per-stage tensors and the preprocessing for real data."""

    schedule: Schedule
    stages: list[SyntheticStage]
    preprocess: Preprocess
    path: Path

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def union(self, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of stages ``1..upto`` concatenated in stage order."""
        chosen = self.stages[:upto]
        return torch.cat([s.images for s in chosen]), torch.cat([s.labels for s in chosen])


def build_schedule(
    *,
    ipcs: list[int],
    lrs: list[float],
    recipe: TrainingRecipe,
    class_names: list[str],
    image_shape: tuple[int, int, int],
    preprocess: Preprocess,
    source: dict[str, Any],
    method: str,
    distill_model: str,
    config: dict[str, Any],
    storage: dict[str, Any] | None = None,
    pools: list[dict[str, Any] | None] | None = None,
) -> Schedule:
    """The schedule of an export whose stage k holds ``ipcs[k]`` images per class, trained with
    ``lrs[k]`` and ``recipe``; ``storage`` (with an ``expansion``) says how many stored images
    made them (IDC's multi-formation). The one way schedules are made."""
    expansion = int((storage or {}).get("expansion", 1))
    stages = [
        StageSpec(
            split=stage_split_name(k),
            ipc=ipc,
            lr=float(lr),
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            lr_schedule=recipe.lr_schedule,
            stored_ipc=ipc // expansion,
            real_pool=pool,
        )
        for k, (ipc, lr, pool) in enumerate(zip(ipcs, lrs, pools or [None] * len(ipcs), strict=True), start=1)
    ]
    return Schedule(
        stages=stages,
        class_names=list(class_names),
        image_shape=tuple(image_shape),
        preprocess=preprocess.to_config(),
        method=method,
        distill_model=distill_model,
        source=source,
        training={**recipe.training_dict(), "mode": "progressive"},
        storage=storage or {"kind": "images", "expansion": 1},
        config=config,
    )


def stage_split_name(index: int) -> str:
    """The split of the ``index``-th stage (1-based): ``stage_1``, ``stage_2``, ..."""
    return f"stage_{index}"


# --- writing ------------------------------------------------------------------------------------
def export_pdd(
    folder: str | Path,
    schedule: Schedule,
    stages: list[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    *,
    title: str | None = None,
) -> Path:
    """Write an export to ``folder`` atomically: everything goes to a temporary sibling folder that
    replaces ``folder`` only once complete, so a crash never leaves a half-written export."""
    import datasets

    folder = Path(folder)
    _check_stages_match(schedule, stages)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_export(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / DATA_DIR).mkdir()
        (tmp / GRID_DIR).mkdir()
        features = stage_features(schedule)
        from pdd_hub.viz import save_image_grid, to_uint8_pictures

        for spec, (images, labels) in zip(schedule.stages, stages):
            images = images.detach().float().cpu().contiguous()
            labels = labels.detach().long().cpu()
            pictures = preprocess.inverse(images)
            ds = datasets.Dataset.from_dict(
                {
                    "image": images.numpy(),
                    "label": labels.tolist(),
                    "preview": list(to_uint8_pictures(pictures).numpy().squeeze(-1))
                    if images.shape[1] == 1
                    else list(to_uint8_pictures(pictures).numpy()),
                },
                features=features,
            )
            ds.to_parquet(str(tmp / DATA_DIR / f"{spec.split}-00000-of-00001.parquet"))
            save_image_grid(
                pictures,
                labels,
                schedule.num_classes,
                tmp / GRID_DIR / f"{spec.split}.png",
                class_names=schedule.class_names,
            )

        checked = [
            replace(spec, sha256=stage_checksum(*stage)) for spec, stage in zip(schedule.stages, stages)
        ]
        schedule = replace(schedule, stages=checked)
        with open(tmp / SCHEDULE_FILE, "w") as f:
            json.dump(schedule.to_dict(), f, indent=2)
        tensors = preprocess.tensors()
        if tensors:
            save_file(tensors, str(tmp / PREPROCESS_FILE))
        render_card(schedule, tmp / CARD_FILE, title=title, location=str(folder))
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def stage_features(schedule: Schedule):
    """The ``datasets.Features`` of every split: the exact float32 images, the labels with their
    class names, and a uint8 preview for the Hub's viewer."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Array3D(shape=tuple(schedule.image_shape), dtype="float32"),
            "label": datasets.ClassLabel(names=schedule.class_names),
            "preview": datasets.Image(),
        }
    )


def _check_stages_match(schedule: Schedule, stages: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if len(stages) != len(schedule.stages):
        raise ExportFormatError(
            f"schedule lists {len(schedule.stages)} stages but {len(stages)} image sets were given"
        )
    for spec, (images, labels) in zip(schedule.stages, stages):
        if tuple(images.shape[1:]) != tuple(schedule.image_shape):
            raise ExportFormatError(
                f"split {spec.split!r}: images have shape {tuple(images.shape[1:])}, "
                f"schedule says {tuple(schedule.image_shape)}"
            )
        if len(images) != len(labels) or len(images) != spec.ipc * schedule.num_classes:
            raise ExportFormatError(
                f"split {spec.split!r}: {len(images)} images and {len(labels)} labels, but ipc {spec.ipc} x "
                f"{schedule.num_classes} classes = {spec.ipc * schedule.num_classes}"
            )
        if not torch.isfinite(images).all():
            raise ExportFormatError(f"split {spec.split!r}: images contain NaN or infinite values")


def _swap_into_place(tmp: Path, folder: Path) -> None:
    # Two renames: the old export is moved aside before the new one takes its name. A crash in
    # between leaves the old export as a `.NAME.old-*` sibling, which recover_interrupted_export
    # puts back; at no point is a partially written folder visible under `folder`.
    backup = None
    if folder.exists():
        backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(folder, backup)
    try:
        os.rename(tmp, folder)
    except BaseException:
        if backup is not None:
            os.rename(backup, folder)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def recover_interrupted_export(folder: str | Path) -> bool:
    """If a previous export died between its two renames, put the previous export back."""
    folder = Path(folder)
    if folder.exists() or not folder.parent.exists():
        return False
    backups = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not backups:
        return False
    os.rename(backups[-1], folder)
    logger.warning("restored %s from an interrupted export", folder)
    return True


# --- reading ------------------------------------------------------------------------------------
def resolve_export(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """A local folder as is, else the Hub dataset repo ``path_or_repo_id`` via ``snapshot_download``."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportNotFoundError(f"{path} is a file; a pdd-hub export is a folder")
        return path
    backups = list(path.parent.glob(f".{path.name}.old-*")) if path.parent.exists() else []
    if backups:
        # Only the writer restores a backup: a reader doing it could break an export in progress.
        raise ExportNotFoundError(
            f"no export folder at {path}, but {backups[0].name} beside it holds the previous export: an "
            "export is being replaced right now, or was interrupted (the next export restores it)"
        )
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise ExportNotFoundError(f"no export folder at {repo_id!r} (and it is not a Hub repo id 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, repo_type="dataset", revision=revision, endpoint=endpoint, token=token)
        )
    except Exception as exc:
        raise ExportNotFoundError(
            f"could not download the dataset repo {repo_id!r} (revision {revision or 'main'}) "
            f"from the Hub: {exc}"
        ) from exc


def read_schedule(folder: str | Path) -> Schedule:
    """Parse and check ``pdd_schedule.json`` of an export folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportNotFoundError(f"no export folder at {folder}")
    schedule_path = folder / SCHEDULE_FILE
    if not schedule_path.exists():
        raise ExportFormatError(
            f"{folder} is not a complete pdd-hub export: it has no {SCHEDULE_FILE} "
            f"(found: {sorted(p.name for p in folder.iterdir())})"
        )
    try:
        data = json.loads(schedule_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{schedule_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportFormatError(f"{schedule_path} must hold a JSON object, not {type(data).__name__}")
    try:
        return Schedule.from_dict(data)
    except ExportFormatError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise ExportFormatError(f"{schedule_path} is malformed: {exc!r}") from exc


def stage_checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of a stage's float32 images and int64 labels (what pdd_schedule.json records)."""
    return tensors_sha256(images.float(), labels.long())


def load_pdd(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
) -> PDDDataset:
    """Load an export from a folder or a Hub dataset repo id, checking that splits, schedule, shapes
    and labels agree; raises :class:`ExportFormatError` naming what is wrong otherwise."""
    import datasets

    folder = resolve_export(path_or_repo_id, revision, endpoint=endpoint, token=token)
    schedule = read_schedule(folder)
    _check_data_files(folder, schedule)
    # A private, throw-away datasets cache: datasets' shared cache of a local folder with README
    # `configs:` is keyed by the folder's name only, so a re-export would be read back stale.
    with tempfile.TemporaryDirectory(prefix="pdd_hub_load_") as cache_dir:
        try:
            dataset_dict = datasets.load_dataset(str(folder), cache_dir=cache_dir, keep_in_memory=True)
        except Exception as exc:
            raise ExportFormatError(f"datasets could not read the export at {folder}: {exc}") from exc
        found = list(dataset_dict.keys())
        if found != schedule.split_names:
            raise ExportFormatError(
                f"{folder}: the dataset's splits {found} do not match the stages of {SCHEDULE_FILE} "
                f"{schedule.split_names}"
            )
        stages = [_read_stage(dataset_dict[spec.split], spec, schedule) for spec in schedule.stages]
    preprocess = _read_preprocess(folder, schedule)
    return PDDDataset(schedule=schedule, stages=stages, preprocess=preprocess, path=folder)


def _check_data_files(folder: Path, schedule: Schedule) -> None:
    data_dir = folder / DATA_DIR
    for spec in schedule.stages:
        if not list(data_dir.glob(f"{spec.split}-*.parquet")):
            raise ExportFormatError(
                f"{folder} is incomplete: split {spec.split!r} listed in {SCHEDULE_FILE} has no data file "
                f"{DATA_DIR}/{spec.split}-*.parquet"
            )


def _read_preprocess(folder: Path, schedule: Schedule) -> Preprocess:
    tensors: dict[str, torch.Tensor] = {}
    zca = schedule.preprocess.get("zca")
    if zca:
        tensor_file = folder / zca.get("file", PREPROCESS_FILE)
        if not tensor_file.exists():
            raise ExportFormatError(f"{folder} is incomplete: ZCA is used but {tensor_file.name} is missing")
        tensors = load_file(str(tensor_file))
    preprocess = Preprocess.from_config(schedule.preprocess, tensors)
    dim = int(torch.tensor(schedule.image_shape).prod())
    if preprocess.zca is not None and preprocess.zca.whiten.shape != (dim, dim):
        raise ExportFormatError(
            f"{PREPROCESS_FILE}: ZCA matrix is {tuple(preprocess.zca.whiten.shape)}, expected {(dim, dim)} "
            f"for images of shape {tuple(schedule.image_shape)}"
        )
    return preprocess


def _read_stage(ds, spec: StageSpec, schedule: Schedule) -> SyntheticStage:
    import datasets

    if "image" not in ds.column_names or "label" not in ds.column_names:
        raise ExportFormatError(f"split {spec.split!r} lacks the image/label columns (has {ds.column_names})")
    label_feature = ds.features["label"]
    if isinstance(label_feature, datasets.ClassLabel) and list(label_feature.names) != schedule.class_names:
        raise ExportFormatError(
            f"split {spec.split!r}: label names {label_feature.names} differ from the schedule's "
            f"{schedule.class_names}"
        )
    table = ds.with_format("torch", columns=["image", "label"])[:]
    images, labels = table["image"], table["label"].long()
    if tuple(images.shape[1:]) != tuple(schedule.image_shape):
        raise ExportFormatError(
            f"split {spec.split!r}: images have shape {tuple(images.shape[1:])}, "
            f"but {SCHEDULE_FILE} says image_shape {list(schedule.image_shape)}"
        )
    expected_rows = spec.ipc * schedule.num_classes
    if len(labels) != expected_rows:
        raise ExportFormatError(
            f"split {spec.split!r} has {len(labels)} rows, but ipc {spec.ipc} x {schedule.num_classes} "
            f"classes = {expected_rows}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= schedule.num_classes):
        raise ExportFormatError(
            f"split {spec.split!r} has labels outside 0..{schedule.num_classes - 1} "
            f"(min {int(labels.min())}, max {int(labels.max())})"
        )
    counts = torch.bincount(labels, minlength=schedule.num_classes)
    if (counts != spec.ipc).any():
        raise ExportFormatError(
            f"split {spec.split!r}: expected {spec.ipc} images of each class, found counts {counts.tolist()}"
        )
    images = images.float().contiguous()
    if spec.sha256 is not None and stage_checksum(images, labels) != spec.sha256:
        raise ExportFormatError(
            f"split {spec.split!r} does not match its sha256 in {SCHEDULE_FILE}: its data file was changed "
            "or belongs to another export"
        )
    return SyntheticStage(spec=spec, images=images, labels=labels)


# --- pushing ------------------------------------------------------------------------------------
def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    options: PushOptions | None = None,
) -> str:
    """Validate the export, then publish it to the dataset repo ``repo_id`` with ``options`` (branch,
    pull request, tag, license, results, dry run: :mod:`pdd_hub.publish`); returns the commit (or
    pull request) URL. The token comes from ``token``, ``HF_TOKEN`` or the cached login, and is never
    written anywhere."""
    from huggingface_hub import HfApi

    from pdd_hub.publish import PushOptions, push_export

    options = replace(
        options or PushOptions(),
        **{
            k: v
            for k, v in {"private": private, "revision": revision, "commit_message": commit_message}.items()
            if v is not None
        },
    )
    pdd = load_pdd(folder)  # never publish an export that does not load
    result = push_export(pdd, repo_id, options, HfApi(endpoint=endpoint, token=token))
    return result.pr_url or result.commit_url or result.plan.describe()
