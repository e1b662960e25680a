"""The tensors the reference implementations save, to and from pdd-hub exports.

What ``pdd-hub import-pt SRC`` reads (``torch.load(..., weights_only=True)``: tensors only, no code):

- ProgressiveDD (VITA-Group/ProgressiveDD ``distill_mtt.py``, read by its ``evaluate_mtt.py``): one
  folder per stage, ``interval{k}_epoch{a}-{b}/``, holding ``images_best.pt`` (float ``[N, C, H, W]``
  in the preprocessed space), ``labels_best.pt`` (int64 ``[N]``, class-major) and ``syn_lr_best.pt``
  (a 0-dim tensor: the learned LR). Stage k's files hold stages 1..k, the earlier ones first and
  unchanged (their gradients are zeroed), so stage k is the rows after stage k-1's.
- MTT (GeorgeCazenavette/mtt-distillation ``distill.py``): one folder
  (``logged_files/<dataset>/<run>/``) with ``images_best.pt`` and ``labels_best.pt``; MTT logs its
  learned LR to wandb only, so give it with ``--lr`` (a ``syn_lr_best.pt`` beside them is read).
- DD-Ranking: ``images.pt``, ``labels.pt`` and ``lr.pt``, in one folder or one per stage.
- What ``export-pt`` writes (``stage_{k}/``), with its ``pdd_schedule.json``, for an exact round trip.

Per-stage files that are not cumulative (stage k's rows do not start with stages 1..k-1) are read as
stage k alone. The images must be in the space the reference code trained in: ``--zca`` for the MTT
family's ZCA (kornia, eps 0.1, fitted on the whole training split of ``--real``, no mean/std
normalisation), else ``--normalization cifar10`` (or ``--mean``/``--std``) for its fixed constants.

``pdd-hub export-pt EXPORT OUT`` writes ``OUT/stage_{k}/`` for every stage k with stages 1..k in the
ProgressiveDD names (``--layout progressivedd``, the default: ``images_best.pt``, ``labels_best.pt``,
``syn_lr_best.pt``) or the DD-Ranking names (``--layout ddranking``: ``images.pt``, ``labels.pt``,
``lr.pt``), plus the export's ``pdd_schedule.json`` (and ``preprocess.safetensors`` with ZCA).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pdd_hub.errors import ConfigError, ExportFormatError

if TYPE_CHECKING:
    from pdd_hub.data import Preprocess
    from pdd_hub.hub import Schedule

LAYOUTS = {
    "progressivedd": ("images_best.pt", "labels_best.pt", "syn_lr_best.pt"),
    "ddranking": ("images.pt", "labels.pt", "lr.pt"),
}
STAGE_FOLDER = re.compile(r"^(?:interval|stage_)(\d+)(?:_.*)?$")


@dataclass
class SavedStage:
    """One folder's tensors as the reference code saved them."""

    folder: Path
    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None


@dataclass
class ImportSettings:
    """What the reference files do not record: how the stages were made and are trained."""

    method: str = "mtt"
    distill_model: str = "convnet_d3"
    lr: float | None = None  # for files without a learned LR
    epochs: int = 1000  # the MTT/PDD evaluation's epoch_eval_train
    batch_size: int = 256
    augment: str = "dsa:color_crop_cutout_flip_scale_rotate"


def stage_folders(src: Path) -> list[Path]:
    """The stage folders of ``src`` in stage order (``interval1_*``, ``interval2_*``, ... or
    ``stage_1``, ...), or ``[src]`` when it holds one stage's files itself."""
    if not src.is_dir():
        raise ExportFormatError(f"{src} is not a folder of saved tensors")
    numbered = [
        (int(m.group(1)), p) for p in src.iterdir() if p.is_dir() and (m := STAGE_FOLDER.match(p.name))
    ]
    numbers = sorted(n for n, _ in numbered)
    if numbered and numbers != list(range(1, len(numbers) + 1)):
        raise ExportFormatError(f"{src}: the stage folders are numbered {numbers}, not 1..{len(numbers)}")
    return [p for _, p in sorted(numbered)] or [src]


def read_saved_stage(folder: Path) -> SavedStage:
    """The images, labels and LR in ``folder``, in whichever of :data:`LAYOUTS` it uses."""
    for images_name, labels_name, lr_name in LAYOUTS.values():
        if (folder / images_name).exists() and (folder / labels_name).exists():
            images = _load(folder / images_name).detach().float().contiguous()
            labels = _load(folder / labels_name).detach()
            lr = float(_load(folder / lr_name).item()) if (folder / lr_name).exists() else None
            _check_tensors(folder, images, labels)
            return SavedStage(folder, images, labels.long(), lr)
    names = " or ".join(f"{a} + {b} (+ {c})" for a, b, c in LAYOUTS.values())
    raise ExportFormatError(
        f"{folder} holds none of the layouts import-pt reads: {names} "
        f"(found {sorted(p.name for p in folder.iterdir())})"
    )


def _load(path: Path) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of something other than tensors, or a broken file
        raise ExportFormatError(
            f"{path} is not a tensor file torch.load(weights_only=True) reads: {exc}"
        ) from exc
    if not isinstance(value, torch.Tensor):
        raise ExportFormatError(f"{path} holds a {type(value).__name__}, not a tensor")
    return value


def _check_tensors(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ExportFormatError(f"{folder}: images have shape {tuple(images.shape)}, not [N, C, H, W]")
    if labels.ndim != 1 or labels.is_floating_point():
        raise ExportFormatError(
            f"{folder}: labels have shape {tuple(labels.shape)} and dtype {labels.dtype}; pdd-hub stores "
            "hard labels (one class index per image), not soft labels"
        )
    if len(labels) != len(images):
        raise ExportFormatError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if not torch.isfinite(images).all():
        raise ExportFormatError(f"{folder}: images contain NaN or infinite values")


def split_stages(saved: list[SavedStage]) -> list[SavedStage]:
    """Each stage's own rows: where stage k's files begin with stages 1..k-1 exactly (ProgressiveDD
    saves the union), those rows are dropped; otherwise the files hold stage k alone."""
    own, union_images, union_labels = [], saved[0].images[:0], saved[0].labels[:0]
    for stage in saved:
        n = len(union_images)
        cumulative = (
            n > 0
            and len(stage.images) > n
            and torch.equal(stage.images[:n], union_images)
            and torch.equal(stage.labels[:n], union_labels)
        )
        part = replace(stage, images=stage.images[n:], labels=stage.labels[n:]) if cumulative else stage
        own.append(part)
        union_images = torch.cat([union_images, part.images])
        union_labels = torch.cat([union_labels, part.labels])
    return own


def stage_ipc(stage: SavedStage, num_classes: int) -> int:
    """Images per class of a stage, which must hold as many images of every class."""
    labels = stage.labels
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ExportFormatError(f"{stage.folder}: labels outside 0..{num_classes - 1}")
    counts = torch.bincount(labels, minlength=num_classes)
    if len(labels) == 0 or (counts != counts[0]).any():
        raise ExportFormatError(
            f"{stage.folder}: every class needs as many images per stage, found counts {counts.tolist()}"
        )
    return int(counts[0])


def export_pt(export: str | Path, out: str | Path, layout: str = "progressivedd") -> Path:
    """Write every stage k of ``export`` as ``out/stage_{k}/`` (stages 1..k, see the module)."""
    from pdd_hub.hub import PREPROCESS_FILE, SCHEDULE_FILE, load_pdd

    if layout not in LAYOUTS:
        raise ExportFormatError(f"unknown layout {layout!r}; use one of {sorted(LAYOUTS)}")
    pdd = load_pdd(export)
    out = Path(out)
    images_name, labels_name, lr_name = LAYOUTS[layout]
    for k, spec in enumerate(pdd.schedule.stages, start=1):
        images, labels = pdd.union(k)
        folder = out / f"stage_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(images.clone(), folder / images_name)
        torch.save(labels.clone(), folder / labels_name)
        # float64: the schedule's LR exactly (the reference scripts read it with .item())
        torch.save(torch.tensor(spec.recipe.lr, dtype=torch.float64), folder / lr_name)
    shutil.copyfile(pdd.path / SCHEDULE_FILE, out / SCHEDULE_FILE)
    if (pdd.path / PREPROCESS_FILE).exists():
        shutil.copyfile(pdd.path / PREPROCESS_FILE, out / PREPROCESS_FILE)
    return out


@dataclass
class ReferenceNormalization:
    """How the reference code preprocessed the images it saved (its tensors live in that space)."""

    zca: bool = False  # the MTT family's ZCA whitening, fitted on the whole training split
    zca_eps: float = 0.1
    mean: list[float] | None = None  # fixed per-channel constants (e.g. the cifar10 preset)
    std: list[float] | None = None

    def fit(self, train_images: torch.Tensor) -> Preprocess:
        from pdd_hub.data import Preprocess

        if not self.zca and self.mean is None:
            raise ConfigError(
                "say how the reference code preprocessed its images: --zca (MTT/ProgressiveDD run with "
                "--zca) or --normalization PRESET / --mean ... --std ... (its fixed mean and std)"
            )
        normalize = self.mean is not None
        return Preprocess.fit(
            train_images,
            normalize=normalize,
            zca=self.zca,
            zca_eps=self.zca_eps,
            mean=self.mean,
            std=self.std,
        )


def import_pt(
    src: str | Path,
    output: str | Path,
    *,
    real: str | None = None,
    normalization: ReferenceNormalization | None = None,
    settings: ImportSettings | None = None,
) -> Path:
    """Turn the saved tensors in ``src`` (see the module) into a pdd-hub export at ``output``. A
    folder written by :func:`export_pt` carries its schedule and preprocessing; reference outputs
    take them from ``real`` (the source dataset: classes, image shape, the training split for
    ZCA), ``normalization`` and ``settings``."""
    from pdd_hub.hub import SCHEDULE_FILE, export_pdd

    src = Path(src)
    stages = split_stages([read_saved_stage(folder) for folder in stage_folders(src)])
    if (src / SCHEDULE_FILE).exists():
        schedule, preprocess = _own_schedule(src, stages)
    else:
        if real is None:
            raise ConfigError(
                f"{src} holds no {SCHEDULE_FILE}: give the dataset it was distilled from with --real"
            )
        schedule, preprocess = _reference_schedule(
            src, stages, real, normalization or ReferenceNormalization(), settings or ImportSettings()
        )
    return export_pdd(output, schedule, [(s.images, s.labels) for s in stages], preprocess)


def _own_schedule(src: Path, stages: list[SavedStage]) -> tuple[Schedule, Preprocess]:
    """The schedule and preprocessing an :func:`export_pt` folder carries, with its files' LRs."""
    from safetensors.torch import load_file

    from pdd_hub.data import Preprocess
    from pdd_hub.hub import PREPROCESS_FILE, read_schedule

    schedule = read_schedule(src)
    if len(stages) != len(schedule.stages):
        raise ExportFormatError(
            f"{src}: {len(stages)} stage folders, but its pdd_schedule.json lists "
            f"{len(schedule.stages)} stages"
        )
    specs = []
    for spec, stage in zip(schedule.stages, stages):
        if stage_ipc(stage, schedule.num_classes) != spec.ipc:
            raise ExportFormatError(
                f"{stage.folder}: not the {spec.ipc} images per class pdd_schedule.json says"
            )
        recipe = spec.recipe if stage.lr is None else replace(spec.recipe, lr=stage.lr)
        specs.append(replace(spec, recipe=recipe, sha256=None))
    tensors = load_file(str(src / PREPROCESS_FILE)) if schedule.preprocess.get("zca") else {}
    return replace(schedule, stages=specs), Preprocess.from_config(schedule.preprocess, tensors)


def _reference_schedule(
    src: Path,
    stages: list[SavedStage],
    real: str,
    normalization: ReferenceNormalization,
    settings: ImportSettings,
) -> tuple[Schedule, Preprocess]:
    """The schedule of reference outputs: classes and shape from ``real``, preprocessing fitted as
    ``normalization`` says on its whole training split, training as ``settings`` say."""
    from dataclasses import asdict

    from pdd_hub.data import load_real_data
    from pdd_hub.hub import StageFacts, build_schedule
    from pdd_hub.schedule import SGDRecipe
    from pdd_hub.train import TrainingRecipe

    data = load_real_data(real, val_per_class=1)
    shape = tuple(stages[0].images.shape[1:])
    if shape != tuple(data.image_shape):
        raise ExportFormatError(f"{src}: images of shape {shape}, but {real!r} has {tuple(data.image_shape)}")
    lrs = [settings.lr if stage.lr is None else stage.lr for stage in stages]
    if None in lrs:
        missing = stages[lrs.index(None)].folder
        raise ConfigError(f"{missing} holds no learned LR (syn_lr_best.pt or lr.pt): give the LR with --lr")
    preprocess = normalization.fit(
        torch.cat([data.train.images, data.val.images])
    )  # as the reference: all of train
    sgd = SGDRecipe(lr=lrs[0], epochs=settings.epochs, batch_size=settings.batch_size)
    recipe = TrainingRecipe(sgd=sgd, augment=settings.augment)
    schedule = build_schedule(
        [StageFacts(stage_ipc(stage, data.num_classes), lr) for stage, lr in zip(stages, lrs, strict=True)],
        recipe,
        data,  # its image shape is the stages' (checked above)
        preprocess,
        method=settings.method,
        distill_model=settings.distill_model,
        config={
            "imported_from": {
                "folder": str(src),
                "stages": [str(stage.folder.relative_to(src)) for stage in stages],
                "normalization": asdict(normalization),
                "settings": asdict(settings),
            }
        },
    )
    return schedule, preprocess
