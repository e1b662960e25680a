"""Which real examples a stage learns from: all of them, or a band of forgetting scores (PDD section
4.2), and the per-example forgetting scores a run saves for its users.

Scores come from the run's scoring networks (:mod:`pdd_hub.scoring`, trained on first use in
``<output_dir>/scoring``). With ``forgetting.mode: band``, stage k learns from the examples whose score
lies in ``[(k-1) w, k w)`` (the last stage: ``>= (P-1) w``); with ``drop_easy``, from those with score
``>= (k-1) w``. Stage 1 learns from the lowest band. The driver asks :func:`stage_pool` and never reads
the networks itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pdd_hub.errors import DatasetFormatError
from pdd_hub.run import RunData

logger = logging.getLogger(__name__)
SCORES_FILE = "forgetting_scores.parquet"


def stage_pool(run: RunData, stage: int, needed_per_class: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Indices (into the run's training set) of the examples stage ``stage`` learns from, and what
    they are (written into the stage's record and ``pdd_schedule.json``). A class with fewer than
    ``needed_per_class`` examples in the band learns from all its examples in this stage."""
    cfg = run.config.forgetting
    labels = run.train.labels.cpu()
    everything = torch.arange(len(labels))
    if cfg.mode == "off":
        return everything, {"examples": len(everything), "forgetting_scores": None}
    scores = run.examples.scores
    save_scores(run, scores)
    low = (stage - 1) * cfg.band_width
    high = stage * cfg.band_width if cfg.mode == "band" and stage < run.config.num_stages else None
    keep = (scores >= low) & (scores < high) if high is not None else scores >= low
    widened = []
    for c in range(run.num_classes):
        of_class = labels == c
        count = int((keep & of_class).sum())
        if count < needed_per_class:
            widened.append(c)
            keep |= of_class
            logger.warning(
                "stage %d: the forgetting band [%g, %s) holds %d examples of class %d (%r), fewer than "
                "the %d its new images start from; this stage learns class %d from all its %d examples",
                stage,
                low,
                high if high is not None else "inf",
                count,
                c,
                run.train.class_names[c],
                needed_per_class,
                c,
                int(of_class.sum()),
            )
    pool = everything[keep]
    counts = torch.bincount(labels[pool], minlength=run.num_classes).tolist()
    logger.info(
        "stage %d learns from %d examples with forgetting score in [%g, %s) (per class %s)",
        stage,
        len(pool),
        low,
        high if high is not None else "inf",
        counts,
    )
    info = {
        "examples": len(pool),
        "per_class": counts,
        "forgetting_scores": [low, high],
        "widened_classes": widened,
    }
    return pool, info


def save_scores(run: RunData, scores: torch.Tensor) -> Path:
    """``<output_dir>/forgetting_scores.parquet``: each training example's row in the source's train
    split, label and forgetting score (written once, by the main process)."""
    import datasets

    path = run.layout.root / SCORES_FILE
    if run.accelerator.is_main_process and not path.exists():
        table = datasets.Dataset.from_dict(
            {
                "row": run.train.source_rows.tolist(),
                "label": run.train.labels.cpu().tolist(),
                "forgetting_score": scores.tolist(),
            }
        )
        tmp = path.with_name(f".{path.name}.tmp")
        table.to_parquet(str(tmp))
        tmp.replace(path)
    run.accelerator.wait_for_everyone()
    return path


def load_forgetting_scores(run_dir: str | Path):
    """The per-example forgetting scores a run saved, as a ``datasets.Dataset`` (columns ``row``: the
    example's row in the source dataset's train split, ``label``, ``forgetting_score``)."""
    import datasets

    path = Path(run_dir) / SCORES_FILE
    if not path.exists():
        raise DatasetFormatError(
            f"the run in {run_dir} recorded no forgetting scores ({SCORES_FILE} is missing): they are "
            "computed when forgetting.mode is band or drop_easy, or init is forgetting"
        )
    return datasets.Dataset.from_parquet(str(path))
