"""Experiment trackers through accelerate's own tracking API: every tracker accelerate supports
(``tracker=tensorboard``, ``wandb``, ``trackio``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``,
``dvclive``, ``swanlab``), scalars through ``accelerator.log`` and images through each tracker's
own image call (accelerate gives ``log_images`` to some trackers only; the others take an image
through the run object accelerate made for them, or as an artifact file).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from PIL import Image

from pdd_hub.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from pdd_hub.evaluate import EvalReport

logger = logging.getLogger(__name__)

TRACKERS: tuple[str, ...] = tuple(LOGGER_TYPE_TO_CLASS)


def check_tracker(name: str, key: str = "tracker") -> None:
    """A :class:`ConfigError` naming ``key`` unless ``name`` is ``none`` or a tracker accelerate
    supports that is installed here."""
    if name == "none":
        return
    if name not in TRACKERS:
        raise ConfigError(f"{key} {name!r} is not a tracker accelerate supports; use one of {list(TRACKERS)}")
    import accelerate.utils

    if not getattr(accelerate.utils, f"is_{name}_available")():
        package = "tensorboard" if name == "tensorboard" else name.replace("_", "-")
        raise ConfigError(f"{key} is {name!r} but {name} is not installed (pip install {package})")


def tracker_kwargs(name: str, logging_dir: str | Path) -> dict[str, Any]:
    """``Accelerator`` arguments for tracker ``name`` (nothing for ``none``), logs under ``logging_dir``."""
    check_tracker(name)
    return {} if name == "none" else {"log_with": name, "project_dir": str(logging_dir)}


def log_images(accelerator: Accelerator, images: dict[str, Image.Image], step: int) -> None:
    """Log every image under its key to every tracker of ``accelerator`` (main process only)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        handler = IMAGE_HANDLERS.get(tracker.name)
        if handler is None:
            logger.info("tracker %s takes no images here; skipping %s", tracker.name, sorted(images))
            continue
        for key, image in images.items():
            handler(tracker, key, image.convert("RGB"), step)


def log_stage(accelerator: Accelerator, stage: int, grid: Path, val_acc: float, lr: float) -> None:
    """A finished stage: its validation accuracy and LR at step ``stage`` and its image grid."""
    if not accelerator.trackers:
        return
    accelerator.log({"stages/val_acc": val_acc, "stages/lr": lr}, step=stage)
    if grid.exists():
        with Image.open(grid) as picture:
            log_images(accelerator, {f"stage_{stage}/grid": picture.copy()}, step=stage)


def log_eval_report(accelerator: Accelerator, report: EvalReport, plot: Path | None = None) -> None:
    """Mean and std test accuracy (%) of every model after every phase (step = phase number), and
    the accuracy plot."""
    if not accelerator.trackers:
        return
    for model, points in report.summary().items():
        name = re.sub(r"[^\w.\-\[\]]+", "_", model)
        for phase, (mean, std) in enumerate(points, start=1):
            accelerator.log({f"eval/{name}/accuracy": 100 * mean, f"eval/{name}/std": 100 * std}, step=phase)
    if plot is not None and plot.exists():
        with Image.open(plot) as picture:
            log_images(accelerator, {"eval/accuracy_per_stage": picture.copy()}, step=len(report.phases))


def _tensorboard(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.log_images({key: np.asarray(image)[None]}, step=step, dataformats="NHWC")


def _image_list(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.log_images({key: [image]}, step=step)  # wandb, swanlab


def _clearml(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.log_images({key: np.asarray(image)}, step=step)


def _aim(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.log_images({key: (image, key)}, step=step)


def _mlflow(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{key.replace('/', '_')}_step{step}.png"
        image.save(path)
        tracker.log_artifact(str(path), artifact_path="images")


def _comet_ml(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.tracker.log_image(image, name=key, step=step)


def _dvclive(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    tracker.tracker.log_image(f"{key.replace('/', '_')}_step{step}.png", image)


def _trackio(tracker: Any, key: str, image: Image.Image, step: int) -> None:
    import trackio

    if hasattr(trackio, "Image"):  # trackio logs media from its 0.3 releases on
        tracker.log({key: trackio.Image(image)}, step=step)


IMAGE_HANDLERS: dict[str, Callable[[Any, str, Image.Image, int], None]] = {
    "tensorboard": _tensorboard,
    "wandb": _image_list,
    "swanlab": _image_list,
    "clearml": _clearml,
    "aim": _aim,
    "mlflow": _mlflow,
    "comet_ml": _comet_ml,
    "dvclive": _dvclive,
    "trackio": _trackio,
}
