"""Export real-image selections in the PDD format, so baselines are evaluated like distilled sets."""

from __future__ import annotations

from pathlib import Path

import torch

from pdd_hub.augment import DEFAULT_STRATEGY
from pdd_hub.data import Preprocess, RealData
from pdd_hub.hub import StageFacts, build_schedule, export_pdd
from pdd_hub.train import TrainingRecipe


def export_selection(
    folder: str | Path,
    real: RealData,
    stage_indices: list[torch.Tensor],
    preprocess: Preprocess,
    *,
    method: str,
    recipe: TrainingRecipe | None = None,
    config: dict | None = None,
) -> Path:
    """Export ``real.train[stage_indices[k]]`` as stage k+1 (preprocessed, float32), to be trained
    with ``recipe`` (default: LR 0.01, 500 epochs per stage, DSA)."""
    recipe = recipe or TrainingRecipe(augment=f"dsa:{DEFAULT_STRATEGY}")
    stages = []
    for idx in stage_indices:
        chosen = real.train.subset(idx)
        stages.append((preprocess(chosen.images), chosen.labels))
    facts = [StageFacts(len(idx) // real.num_classes, recipe.sgd.lr) for idx in stage_indices]
    schedule = build_schedule(
        facts, recipe, real, preprocess, method=method, distill_model="none", config=config or {}
    )
    return export_pdd(
        folder, schedule, stages, preprocess, title=f"{Path(real.source.dataset).name}: {method} real images"
    )
