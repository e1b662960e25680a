"""Export real-image selections in the PDD format, so baselines are evaluated like distilled sets."""

from __future__ import annotations

from pathlib import Path

import torch

from pdd_hub.augment import DEFAULT_STRATEGY
from pdd_hub.data import Preprocess, RealData
from pdd_hub.hub import Schedule, StageSpec, export_pdd, stage_split_name


def export_selection(
    folder: str | Path,
    real: RealData,
    stage_indices: list[torch.Tensor],
    preprocess: Preprocess,
    *,
    method: str,
    lr: float = 0.01,
    epochs: int = 500,
    batch_size: int = 256,
    config: dict | None = None,
) -> Path:
    """Export ``real.train[stage_indices[k]]`` as stage k+1 (preprocessed, float32)."""
    stages, specs = [], []
    for k, idx in enumerate(stage_indices, start=1):
        chosen = real.train.subset(idx)
        stages.append((preprocess(chosen.images), chosen.labels))
        specs.append(
            StageSpec(
                split=stage_split_name(k),
                ipc=len(idx) // real.num_classes,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
            )
        )
    schedule = Schedule(
        stages=specs,
        class_names=real.class_names,
        image_shape=real.image_shape,
        preprocess=preprocess.to_config(),
        method=method,
        distill_model="none",
        source=real.source.to_dict(),
        training={"augment": f"dsa:{DEFAULT_STRATEGY}", "mode": "progressive"},
        config=config or {},
    )
    return export_pdd(
        folder, schedule, stages, preprocess, title=f"{Path(real.source.dataset).name}: {method} real images"
    )
