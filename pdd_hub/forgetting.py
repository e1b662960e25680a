"""Which real examples a stage learns from: all of them, or a band of forgetting scores.

Forgetting scores (Toneva et al. 2019) come from networks trained on all the real data: the run's
stage-1 experts when the method trains experts that record them (MTT with forgetting on), else a
set trained here for the purpose, in the same place and with the same settings. The driver asks
:func:`stage_pool` and never reads experts itself.
"""

from __future__ import annotations

import logging

import torch

from pdd_hub.methods.experts import MANIFEST, ExpertSet, train_experts
from pdd_hub.run import Run

logger = logging.getLogger(__name__)


def stage_pool(run: Run, stage: int) -> torch.Tensor:
    """Indices of the real training examples stage ``stage`` learns from: all of them, or (from
    stage 2 on, with forgetting bands) those whose forgetting score is in the stage's band."""
    cfg = run.config.forgetting
    everything = torch.arange(len(run.train))
    if cfg.mode == "off" or stage == 1:
        return everything
    scores = forgetting_scores(run)
    low = (stage - 1) * cfg.band_width
    high = stage * cfg.band_width if (cfg.mode == "band" and stage < run.config.num_stages) else None
    keep = scores >= low if high is None else (scores >= low) & (scores < high)
    pool = everything[keep]
    counts = torch.bincount(run.train.labels.cpu()[pool], minlength=run.num_classes).tolist()
    logger.info(
        "stage %d learns from %d examples with forgetting score in [%d, %s) (per class %s)",
        stage,
        len(pool),
        low,
        high if high is not None else "inf",
        counts,
    )
    if len(pool) == 0:
        logger.warning("stage %d: no example has a forgetting score in its band; using all examples", stage)
        return everything
    return pool


def forgetting_scores(run: Run) -> torch.Tensor:
    """Forgetting score of every real training example, training the scoring networks if needed."""
    directory = run.layout.experts_dir(1)
    if not run.exists_on_all(directory / MANIFEST):
        cfg = run.config
        count = cfg.experts.num_experts
        train_experts(
            directory,
            model_name=cfg.model,
            num_classes=run.num_classes,
            image_shape=run.image_shape,
            train_x=run.train.images,
            train_y=run.train.labels,
            pool=None,
            start_states=torch.stack([run.random_network_state(("start_state", i)) for i in range(count)]),
            epochs=cfg.experts.epochs,
            config=cfg.experts,
            augment=run.augment,
            seed=cfg.seed,
            stage=1,
            accelerator=run.accelerator,
            track_forgetting=True,
            progress=cfg.progress,
            batched=run.batch_networks,
            precision=cfg.precision,
        )
    return ExpertSet.load(directory).forgetting_scores()
