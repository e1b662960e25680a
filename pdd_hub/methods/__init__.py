"""Base distillation methods, one file each, registered by name with their config dataclass.

Every module of this package is imported here, so a new method is one new file with a
``@register_method("name", NameConfig)`` class (``NameConfig``: a dataclass subclassing
:class:`MethodConfig`); methods of other packages register through the
``pdd_hub.methods`` entry-point group. :func:`build_distiller` builds the one a config names.
"""

from __future__ import annotations

from pdd_hub.config import PDDConfig
from pdd_hub.registry import METHODS, import_submodules

import_submodules(__name__, __path__)

from pdd_hub.methods.base import Distiller, MethodConfig, StageContext  # noqa: E402

__all__ = ["METHODS", "Distiller", "MethodConfig", "StageContext", "build_distiller"]


def build_distiller(config: PDDConfig, num_classes: int, image_shape: tuple[int, int, int]) -> Distiller:
    """The base method ``config.method``, built from its section of the config."""
    entry = METHODS.get(config.method)
    return entry.cls(config.method_config, config, num_classes, image_shape)
