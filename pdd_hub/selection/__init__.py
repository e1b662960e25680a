"""Subset-selection baselines, registered by name like the base methods: random, herding, k-center,
forgetting, unforgettable (its other end) and sensitivity sampling. Each ranks the real images of
every class; ``pdd-hub select`` exports the ranking as stages (stage k: the k-th block), and a
distillation's ``init`` can start from any of them. A new one is one new file with a
``@register_selection("name")`` class."""

from pdd_hub.registry import SELECTIONS, import_submodules

import_submodules(__name__, __path__)

from pdd_hub.selection.base import ClassPool, Selector, selection_indices, staged  # noqa: E402
from pdd_hub.selection.export import export_selection  # noqa: E402
from pdd_hub.selection.random import RandomSelection, random_stage_indices  # noqa: E402

__all__ = [
    "SELECTIONS",
    "ClassPool",
    "RandomSelection",
    "Selector",
    "export_selection",
    "random_stage_indices",
    "selection_indices",
    "staged",
]
