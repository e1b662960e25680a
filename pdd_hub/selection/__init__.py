"""Subset-selection baselines: real images chosen per class, exported as PDD stages."""

from pdd_hub.selection.export import export_selection
from pdd_hub.selection.random import random_stage_indices

__all__ = ["export_selection", "random_stage_indices"]
