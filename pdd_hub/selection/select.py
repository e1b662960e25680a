"""A selection baseline end to end: rank each class's real images with a registered method and export
the ranking as stages (``pdd-hub select``), in the format of a distilled set.

Features and forgetting scores come from scoring networks trained on the real training split (in the
export's preprocessing), cached under ``$PDD_HUB_CACHE/scoring/<key>`` where the key covers the
dataset's fingerprint, the split, the preprocessing and the scoring settings: a second selection on
the same data trains nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from pdd_hub.augment import build_augment
from pdd_hub.config import ScoringConfig, build_section
from pdd_hub.data import Preprocess, PreprocessedImages, RealData, default_cache_dir
from pdd_hub.data.images import ImageSet
from pdd_hub.errors import ConfigError
from pdd_hub.registry import SELECTIONS
from pdd_hub.runtime import CPU, TrainingRuntime
from pdd_hub.scoring import RealExamples, scoring_cache_key, train_scoring_networks
from pdd_hub.selection.base import selection_indices, staged
from pdd_hub.selection.export import export_selection
from pdd_hub.train import TrainingRecipe

logger = logging.getLogger(__name__)
DEFAULT_SCORING_MODEL = "convnet_d3"


def build_selector(method: str, options: dict[str, Any] | None = None):
    """The registered selection method ``method`` with its settings ``options`` (validated by name)."""
    entry = SELECTIONS.get(method)
    options = options or {}
    if entry.config_cls is None:
        if options:
            raise ConfigError(f"selection method {method!r} takes no settings, got {sorted(options)}")
        return entry.cls(None)
    return entry.cls(build_section(entry.config_cls, options, method))


@dataclass(frozen=True)
class Selection:
    """A selection baseline: the top ``num_stages * ipc`` training images of each class by the
    selection method ``method`` (with its settings ``options``), as ``num_stages`` stages of ``ipc``."""

    method: str
    num_stages: int
    ipc: int
    options: dict[str, Any] | None = None
    seed: int = 0


def select_and_export(
    output: str | Path,
    real: RealData,
    preprocess: Preprocess,
    selection: Selection,
    *,
    scoring: ScoringConfig | None = None,
    recipe: TrainingRecipe | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> Path:
    """Rank every class's training images as ``selection`` says and export the top ones as its stages
    (stage k: the k-th block of ``ipc``). Features and forgetting scores come from ``scoring``
    networks (default architecture ConvNet-D3), trained only if the method asks; every random draw
    comes from a stream of ``selection.seed``."""
    method, seed = selection.method, selection.seed
    selector = build_selector(method, selection.options)
    scoring = scoring or ScoringConfig()
    device = accelerator.device if accelerator is not None else CPU
    runtime = TrainingRuntime(progress=progress, device=device, seed=seed)
    examples = scored_examples(real, preprocess, scoring, runtime, accelerator)
    generators = [runtime.stream("selection", method, c) for c in range(real.num_classes)]
    chosen = selection_indices(
        selector, examples.class_pools(), selection.num_stages * selection.ipc, generators
    )
    config = {
        "selection": {"method": method, "settings": asdict(selector.config) if selector.config else {}},
        "num_stages": selection.num_stages,
        "ipc": selection.ipc,
        "seed": seed,
        "scoring": {**asdict(scoring), "model": examples.model_name} if _uses_scoring(examples) else None,
        "preprocess": preprocess.to_config(),
    }
    stages = staged(chosen, selection.num_stages, selection.ipc)
    return export_selection(output, real, stages, preprocess, method=method, recipe=recipe, config=config)


def scored_examples(
    real: RealData,
    preprocess: Preprocess,
    scoring: ScoringConfig,
    runtime: TrainingRuntime,
    accelerator: Accelerator | None,
) -> RealExamples:
    """The training examples in ``preprocess``'s space, with the features and forgetting scores of
    ``scoring`` networks trained on first use, in the cache (under a key of the data, the
    preprocessing and the settings: a second selection on the same data trains nothing)."""
    scoring_model = scoring.model or DEFAULT_SCORING_MODEL
    device = runtime.device
    train = ImageSet(
        PreprocessedImages(real.train.images.to(device), preprocess),
        real.train.labels.to(device),
        real.class_names,
        real.train.source_rows,
    )
    source, settings = real.source.fingerprint, preprocess.to_config()
    key = scoring_cache_key(source, settings, real.train, scoring, model=scoring_model, seed=runtime.seed)

    def train_networks():
        folder = default_cache_dir() / "scoring" / key
        logger.info(  # a cached set is read, not retrained: say which one
            "scoring networks: %d x %d epochs on %d images (%s %s)", scoring.runs, scoring.epochs, len(train),
            "reused or resumed from" if folder.exists() else "training into", folder,
        )  # fmt: skip
        return train_scoring_networks(
            folder,
            train,
            scoring,
            model_name=scoring_model,
            accelerator=accelerator or Accelerator(cpu=device.type == "cpu"),
            augment=build_augment("dsa"),
            runtime=runtime,
        )

    return RealExamples(train, scoring_model, train_networks)


def _uses_scoring(examples: RealExamples) -> bool:
    return "networks" in examples.__dict__  # trained (or loaded) because features or scores were asked for
