"""Base distillation methods behind one interface (:class:`Distiller`), and expert trajectories."""

from __future__ import annotations

from pdd_hub.config import PDDConfig
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.methods.mtt import MTT

METHODS = ("mtt",)

__all__ = ["METHODS", "MTT", "Distiller", "StageContext", "build_distiller"]


def build_distiller(config: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]) -> Distiller:
    """The base method named by ``config.method``."""
    if config.method == "mtt":
        return MTT(
            config.mtt,
            config.experts,
            num_classes,
            image_shape,
            track_forgetting=config.forgetting.mode != "off",
        )
    raise ValueError(f"unknown method {config.method!r}; available: {list(METHODS)}")
