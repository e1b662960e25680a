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

import glob
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from pdd_hub.card import render_card
from pdd_hub.data.transforms import Preprocess
from pdd_hub.errors import ExportFormatError, ExportNotFoundError, HubPushError
from pdd_hub.io import load_tensors, read_json, save_json, tensors_sha256
from pdd_hub.outputs import check_writable, output_lock
from pdd_hub.schedule import SGDRecipe
from pdd_hub.validate import check_literal_path, check_schedule, confined_file

if TYPE_CHECKING:
    from pdd_hub.data import RealData
    from pdd_hub.publish import PushOptions
    from pdd_hub.train import TrainingRecipe

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCHEDULE_FILE = "pdd_schedule.json"
PREPROCESS_FILE = "preprocess.safetensors"
CARD_FILE = "README.md"
DATA_DIR = "data"
GRID_DIR = "images"
CARD_TEMPLATE = "pdd_dataset_card.md"
# The files of the export format, the one place that names them (fnmatch patterns, as
# huggingface_hub's allow_patterns takes them): `push` uploads these and nothing else, a download
# fetches these and nothing else.
EXPORT_PATTERNS = (
    CARD_FILE,
    SCHEDULE_FILE,
    PREPROCESS_FILE,
    f"{DATA_DIR}/stage_*-*.parquet",
    f"{GRID_DIR}/stage_*.png",
    "results/eval-*.json",  # pdd-hub eval results put on the card (pdd_hub.results)
)


@dataclass
class StageSpec:
    """How to train on one stage: its SGD recipe (with the learned LR) and the record of how the
    stage was made."""

    split: str
    ipc: int
    recipe: SGDRecipe
    stored_ipc: int | None = None  # images per class the method stored (IDC: ipc / factor**2)
    real_pool: dict[str, Any] | None = None  # the real examples the stage learned from (forgetting band)
    distillation: dict[str, Any] | None = None  # budget, chosen iteration, loss-network source
    sha256: str | None = None  # of the stage's float32 images and int64 labels, set on export

    def to_dict(self) -> dict[str, Any]:
        """The stage entry of ``pdd_schedule.json``: the recipe's keys after ``split`` and ``ipc``."""
        entry = asdict(self)  # (copies of the records, which a caller of to_dict may change)
        del entry["recipe"]
        return {"split": entry.pop("split"), "ipc": entry.pop("ipc"), **self.recipe.to_dict(), **entry}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        required = ("split", "ipc", "lr", "epochs")
        missing = [k for k in required if k not in data]
        if missing:
            raise ExportFormatError(f"{SCHEDULE_FILE}: stage entry {data!r} lacks {missing}")
        record = {f: data[f] for f in ("stored_ipc", "real_pool", "distillation", "sha256") if f in data}
        return cls(data["split"], data["ipc"], SGDRecipe.from_dict(data), **record)


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
        data["stages"] = [stage.to_dict() for stage in self.stages]
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
    def from_dict(cls, data: dict[str, Any], where: str = SCHEDULE_FILE) -> Schedule:
        """The schedule of a ``pdd_schedule.json`` mapping, checked by :func:`check_schedule` first
        (``where`` names the file in the messages)."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportFormatError(
                f"{where} has format_version {version!r}, but this pdd-hub reads format_version "
                f"{FORMAT_VERSION}; upgrade pdd-hub (pip install -U pdd-hub) or re-export the dataset"
            )
        missing = [k for k in ("stages", "class_names", "image_shape", "preprocess") if k not in data]
        if missing:
            raise ExportFormatError(f"{where} lacks required keys {missing}")
        check_schedule(data, where, ExportFormatError)
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


@dataclass(frozen=True)
class StageFacts:
    """What an exporter says of one stage: ``ipc`` images per class, trained with ``lr``; for a
    distilled stage also the real examples it learned from and how it was distilled (the
    ``real_pool`` and ``distillation`` of :class:`StageSpec`)."""

    ipc: int
    lr: float
    real_pool: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None


def build_schedule(
    stages: list[StageFacts],
    recipe: TrainingRecipe,
    real: RealData,
    preprocess: Preprocess,
    *,
    method: str,
    distill_model: str,
    config: dict[str, Any],
    storage: dict[str, Any] | None = None,
) -> Schedule:
    """The schedule of an export of ``stages``, each trained with ``recipe`` at its own LR, made from
    ``real`` (its classes, image shape and source); ``storage`` (with an ``expansion``) says how many
    stored images made them (IDC's multi-formation). The one way schedules are made."""
    expansion = int((storage or {}).get("expansion", 1))
    specs = [
        StageSpec(
            split=stage_split_name(k),
            ipc=stage.ipc,
            recipe=replace(recipe.sgd, lr=float(stage.lr)),
            stored_ipc=stage.ipc // expansion,
            real_pool=stage.real_pool,
            distillation=stage.distillation,
        )
        for k, stage in enumerate(stages, start=1)
    ]
    return Schedule(
        stages=specs,
        class_names=list(real.class_names),
        image_shape=tuple(real.image_shape),
        preprocess=preprocess.to_config(),
        method=method,
        distill_model=distill_model,
        source=real.source.to_dict(),
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
    replaces ``folder`` only once complete, so a crash never leaves a half-written export. The schedule
    is checked and stripped of local paths first; a second writer of ``folder`` is refused."""
    from pdd_hub.card import source_license

    folder = Path(folder)
    _check_stages_match(schedule, stages)
    license = source_license(schedule)  # while the source still names where it is on this machine
    schedule = schedule_to_publish(schedule, folder)
    with output_lock(folder):
        check_writable(folder.parent, min_free=_export_bytes(stages))
        recover_interrupted_export(folder)
        _write_export(folder, schedule, stages, preprocess, title=title, license=license)
    return folder


def schedule_to_publish(schedule: Schedule, folder: Path) -> Schedule:
    """``schedule`` without local paths (an absolute path in ``source`` or ``config`` becomes its last
    component: it would be published), checked as a reader will check it."""
    schedule = replace(schedule, source=publishable(schedule.source), config=publishable(schedule.config))
    check_schedule(
        schedule.to_dict(), f"the schedule to write to {folder / SCHEDULE_FILE}", ExportFormatError
    )
    return schedule


def publishable(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute local path (``/...``, ``~...``, ``C:\\...``)
    replaced by its last component."""
    if isinstance(value, dict):
        return {k: publishable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [publishable(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or re.match(r"^(~|[A-Za-z]:[\\/])", value)):
        return Path(value.replace("\\", "/")).name or value
    return value


def _export_bytes(stages: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    # the float32 images twice (parquet, and the previous export until the swap) and their previews
    return sum(3 * images.numel() * 4 for images, _ in stages) + 2**20


def _write_export(
    folder: Path,
    schedule: Schedule,
    stages: list[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    *,
    title: str | None,
    license: str | None,
) -> None:
    import datasets

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
        save_json(schedule.to_dict(), tmp / SCHEDULE_FILE, strict=True)
        tensors = preprocess.tensors()
        if tensors:
            save_file(tensors, str(tmp / PREPROCESS_FILE))
        # the folder by name: a card must not publish where it lies on this machine (push renders it
        # again with the repo id)
        render_card(schedule, tmp / CARD_FILE, title=title, location=folder.name, license=license)
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def backups_of(folder: Path) -> list[Path]:
    """The backups ``_swap_into_place`` leaves beside ``folder`` (``.NAME.old-<8 hex digits>``), by
    exact name: neither another export's backup nor glob characters in NAME can match."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.old-[0-9a-f]{{8}}")
    if not folder.parent.is_dir():
        return []
    return [p for p in folder.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]


def recover_interrupted_export(folder: str | Path) -> bool:
    """If a previous export died between its two renames, put the previous export back."""
    folder = Path(folder)
    if folder.exists() or not folder.parent.exists():
        return False
    backups = sorted(backups_of(folder), key=lambda p: p.stat().st_mtime)
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
        check_literal_path(path, "export folder", ExportFormatError)
        return path
    backups = backups_of(path)
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
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                endpoint=endpoint,
                token=token,
                allow_patterns=list(EXPORT_PATTERNS),  # the export's files, no junk
            )
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
    schedule_path = export_file(folder, SCHEDULE_FILE, f"the schedule {SCHEDULE_FILE}")
    if not schedule_path.exists():
        raise ExportFormatError(
            f"{folder} is not a complete pdd-hub export: it has no {SCHEDULE_FILE} "
            f"(found: {sorted(p.name for p in folder.iterdir())})"
        )
    data = read_json(schedule_path, ExportFormatError, strict=False)  # NaN is refused by field, below
    if not isinstance(data, dict):
        raise ExportFormatError(f"{schedule_path} must hold a JSON object, not {type(data).__name__}")
    try:
        return Schedule.from_dict(data, where=str(schedule_path))
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
    and labels agree; raises :class:`ExportFormatError` naming what is wrong otherwise. Every file it
    reads must lie inside the export folder (no absolute path, ``..`` or link out of it)."""
    import datasets

    folder = resolve_export(path_or_repo_id, revision, endpoint=endpoint, token=token)
    schedule = read_schedule(folder)
    _check_data_files(folder, schedule)
    _check_card_splits(folder, schedule)
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


def export_root(folder: Path) -> Path:
    """The folder every file of the export ``folder`` must lie in: ``folder`` itself, or for a Hub
    cache snapshot (``.../snapshots/<commit>``, whose files link into ``../../blobs``) the repo's cache."""
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return folder


def export_file(folder: Path, relative: Any, name: str) -> Path:
    """``folder / relative``, refused unless it is a regular file inside the export (``name``: the
    field or file this path comes from, for the message)."""
    return confined_file(export_root(folder), folder, relative, name, ExportFormatError)


def _check_data_files(folder: Path, schedule: Schedule) -> None:
    data_dir = folder / DATA_DIR
    for spec in schedule.stages:
        files = sorted(data_dir.glob(f"{glob.escape(spec.split)}-*")) if data_dir.is_dir() else []
        if not [f for f in files if f.suffix == ".parquet"]:
            raise ExportFormatError(
                f"{folder} is incomplete: split {spec.split!r} listed in {SCHEDULE_FILE} has no data file "
                f"{DATA_DIR}/{spec.split}-*.parquet"
            )
        for file in files:  # what datasets will read for the split
            export_file(folder, f"{DATA_DIR}/{file.name}", f"data file of split {spec.split!r}")


def _check_card_splits(folder: Path, schedule: Schedule) -> None:
    """The card's ``configs:`` decide what datasets reads: they must name exactly the files of the
    schedule's stages (``data/stage_K-*``), in order, and nothing outside the folder."""
    import yaml
    from huggingface_hub import DatasetCard

    path = export_file(folder, CARD_FILE, f"the dataset card {CARD_FILE}")
    if not path.exists():
        raise ExportFormatError(f"{folder} is incomplete: it has no {CARD_FILE} (the card lists the splits)")
    try:
        configs = DatasetCard.load(path).data.to_dict().get("configs") or []
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"{path}: its YAML header cannot be read ({exc})") from exc
    entries = configs[0].get("data_files") if len(configs) == 1 and isinstance(configs[0], dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ExportFormatError(
            f"{path}: field 'configs' must list one config with data_files, got {configs!r}"
        )
    for i, entry in enumerate(entries):
        split = entry.get("split")
        if entry.get("path") != f"{DATA_DIR}/{split}-*":
            raise ExportFormatError(
                f"{path}: field 'configs[0].data_files[{i}].path' must be {f'{DATA_DIR}/{split}-*'!r} "
                f"(the split's files in the export folder), got {entry.get('path')!r}"
            )
    found = [entry.get("split") for entry in entries]
    if found != schedule.split_names:
        raise ExportFormatError(
            f"{folder}: the dataset's splits {found} do not match the stages of {SCHEDULE_FILE} "
            f"{schedule.split_names}"
        )


def _read_preprocess(folder: Path, schedule: Schedule) -> Preprocess:
    tensors: dict[str, torch.Tensor] = {}
    zca = schedule.preprocess.get("zca")
    if zca:
        field_name = f"{folder / SCHEDULE_FILE}: field 'preprocess.zca.file'"
        tensor_file = export_file(folder, zca.get("file", PREPROCESS_FILE), field_name)
        if zca.get("file", PREPROCESS_FILE) != PREPROCESS_FILE:
            raise ExportFormatError(f"{field_name} must be {PREPROCESS_FILE!r}, got {zca.get('file')!r}")
        if not tensor_file.exists():
            raise ExportFormatError(f"{folder} is incomplete: ZCA is used but {tensor_file.name} is missing")
        tensors = load_tensors(
            tensor_file,
            ("zca.mean", "zca.whiten", "zca.unwhiten"),
            hint="the export is damaged: export it again, or download it again",
        )
    preprocess = Preprocess.from_config(schedule.preprocess, tensors)
    dim = int(torch.tensor(schedule.image_shape).prod())
    if preprocess.zca is not None:
        zca_tensors = (preprocess.zca.mean, preprocess.zca.whiten, preprocess.zca.unwhiten)
        if preprocess.zca.whiten.shape != (dim, dim):
            raise ExportFormatError(
                f"{PREPROCESS_FILE}: ZCA matrix is {tuple(preprocess.zca.whiten.shape)}, "
                f"expected {(dim, dim)} for images of shape {tuple(schedule.image_shape)}"
            )
        if not all(torch.isfinite(t).all() for t in zca_tensors):
            raise ExportFormatError(
                f"{folder / PREPROCESS_FILE}: the ZCA tensors hold NaN or infinite values"
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
    bad = (~torch.isfinite(images.flatten(1))).any(1).nonzero().flatten()
    if len(bad):
        raise ExportFormatError(
            f"split {spec.split!r}: row {int(bad[0])} holds NaN or infinite pixel values "
            f"({len(bad)} such rows)"
        )
    if spec.sha256 is not None and stage_checksum(images, labels) != spec.sha256:
        raise ExportFormatError(
            f"split {spec.split!r} does not match its sha256 in {SCHEDULE_FILE}: its data file was changed "
            "or belongs to another export"
        )
    return SyntheticStage(spec=spec, images=images, labels=labels)


# --- pushing ------------------------------------------------------------------------------------
MAX_FILE_BYTES = 50 * 10**9  # the Hub's limit for one file


def export_files(folder: str | Path) -> tuple[list[str], list[str]]:
    """``(files, others)``: the files of the export format in ``folder`` (relative POSIX paths matching
    :data:`EXPORT_PATTERNS`, what ``push`` uploads) and every other entry, which stays local. An
    export file that is a link or not a regular file raises :class:`ExportFormatError`: its content
    could come from anywhere on this machine."""
    import fnmatch

    folder = Path(folder)
    if not folder.is_dir():
        raise ExportNotFoundError(f"no export folder at {folder}")
    files, others = [], []
    for directory, folders, names in os.walk(folder):  # never descends into linked folders
        for name in sorted(folders + names):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            depth = relative.count("/")
            if not any(fnmatch.fnmatchcase(relative, p) and p.count("/") == depth for p in EXPORT_PATTERNS):
                if path.is_symlink() or not path.is_dir():
                    others.append(relative + (" (link)" if path.is_symlink() else ""))
                continue
            if path.is_symlink() or not path.is_file():
                raise ExportFormatError(
                    f"{path} is {'a link' if path.is_symlink() else 'not a regular file'}: push uploads the "
                    "export's own files only; replace it with the file itself (export again)"
                )
            files.append(relative)
    return sorted(files), sorted(others)


def check_push(pdd: PDDDataset, repo_id: str, api: Any, *, token: bool = True) -> tuple[list[str], list[str]]:
    """Everything a push needs, checked before anything is created on the Hub: the export's files
    (:func:`export_files`: ``(files, others)``) are regular files within the Hub's size limit and,
    with ``token``, the token works."""
    files, others = export_files(pdd.path)
    for name in files:
        size = (pdd.path / name).stat().st_size
        if size > MAX_FILE_BYTES:
            raise HubPushError(f"{pdd.path / name} has {size} bytes, more than the Hub takes in one file")
    if token:
        try:
            api.whoami()
        except Exception as exc:
            cause = push_failure_cause(exc, repo_id, None)
            raise HubPushError(f"cannot push {pdd.path} to the dataset repo {repo_id!r}: {cause}") from exc
    return files, others


def push_failure_cause(exc: Exception, repo_id: str, revision: str | None) -> str:
    """What the user should know about a failed Hub call: the cause, not only the HTTP error."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalTokenNotFoundError):
        return "no Hub token: log in (`hf auth login`) or set HF_TOKEN"
    if isinstance(exc, OfflineModeIsEnabled):
        return "huggingface_hub is offline (HF_HUB_OFFLINE is set): unset it to push"
    if isinstance(exc, RevisionNotFoundError):
        return f"the branch {revision!r} does not exist in {repo_id!r}: create it, or push without --revision"
    if not isinstance(exc, HfHubHTTPError):
        return f"the Hub could not be reached ({type(exc).__name__}: {exc}); check the network"
    status = exc.response.status_code if exc.response is not None else None
    causes = {
        401: "the Hub refused the token (invalid or expired): log in again (`hf auth login`) or set HF_TOKEN",
        403: f"the token may not write to {repo_id!r}: use a token with write access to its namespace",
        404: f"the Hub does not know {repo_id!r} or its revision {revision or 'main'!r}",
        413: "the Hub refused a file as too large",
    }
    if status in causes:
        return causes[status]
    if status is not None and status >= 500:
        return f"the Hub failed (HTTP {status}); try again later"
    return f"the Hub answered HTTP {status}: {str(exc).splitlines()[0]}"


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
