"""What is known about each real training example from networks trained on the real data: forgetting
scores (Toneva et al. 2019) and features, for the selection methods and the forgetting bands.

Forgetting score of example i:

* per training run r: ``events_r[i]``, the number of times i went from correctly classified at one
  presentation to misclassified at the next; an example never classified correctly in run r gets
  the run's largest count, ``max_j events_r[j]`` (it is among the hardest, as in Toneva et al.'s
  reference implementation, instead of the easiest as a count of 0 would say);
* over the runs: the mean of the per-run scores. The scale (events per run) does not depend on how
  many runs there are, so forgetting bands keep their meaning when ``scoring.runs`` changes.

Features: the embedding (the input of the classifier) of the first scoring network after its last
epoch. The networks train on first use (resumable, like experts) and are kept where the caller says:
in a distillation run's folder, or in the cache for ``pdd-hub select``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from accelerate import Accelerator

from pdd_hub.augment import DSA
from pdd_hub.config import ScoringConfig
from pdd_hub.data.images import ImageSet
from pdd_hub.methods.experts import ExpertSet, ExpertTraining, train_experts
from pdd_hub.params import build_network, embed, flat_params, network_from
from pdd_hub.runtime import TrainingRuntime


def forgetting_scores(events: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """Scores ``[N]`` from per-run forgetting events ``[R, N]`` and whether each example was ever
    learned in each run ``[R, N]`` (see the module's docstring)."""
    per_run = events.double()
    run_max = per_run.max(dim=1, keepdim=True).values.expand_as(per_run)
    return torch.where(learned.bool(), per_run, run_max).mean(dim=0)


def train_scoring_networks(
    directory: str | Path,
    real: ImageSet,
    config: ScoringConfig,
    *,
    model_name: str,
    accelerator: Accelerator,
    augment: DSA | None,
    runtime: TrainingRuntime,
) -> ExpertSet:
    """``config.runs`` networks trained on all of ``real`` (preprocessed, on the device) with their
    forgetting events recorded (network i initialised from the runtime's stream ``("scoring", i)``);
    resumable, reused when already there."""
    num_classes, shape = real.num_classes, real.image_shape
    states = torch.stack(
        [
            flat_params(build_network(model_name, num_classes, shape, seed=runtime.stream_seed("scoring", i)))
            for i in range(config.runs)
        ]
    )
    training = ExpertTraining(config.recipe(), augment, track_forgetting=True, runtime=runtime)
    return train_experts(
        directory, real, states, training, model_name=model_name, accelerator=accelerator, stage="scoring"
    )


def scoring_cache_key(
    source_fingerprint: str, preprocess: dict, real: ImageSet, config: ScoringConfig, **settings
) -> str:
    """A key for the scoring networks of these data, preprocessing and settings (``pdd-hub select``)."""
    description = {
        "source": source_fingerprint,
        "preprocess": preprocess,
        "examples": len(real),
        "labels": hashlib.sha256(real.labels.cpu().numpy().tobytes()).hexdigest()[:16],
        "scoring": config.__dict__,
        **settings,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


class RealExamples:
    """The real training examples as selection methods see them: per-class candidate pools with
    features and forgetting scores, from scoring networks trained (by ``train``) on first use."""

    def __init__(self, real: ImageSet, model_name: str, train: Callable[[], ExpertSet]) -> None:
        self.real = real
        self.model_name = model_name
        self._train = train

    @cached_property
    def networks(self) -> ExpertSet:
        return self._train()

    @cached_property
    def scores(self) -> torch.Tensor:
        """Forgetting score of every training example ``[N]``."""
        return forgetting_scores(*self.networks.forgetting_events())

    @cached_property
    def learned(self) -> torch.Tensor:
        """Share of the scoring runs that ever classified each training example correctly ``[N]``."""
        return self.networks.forgetting_events()[1].double().mean(dim=0)

    @cached_property
    def features(self) -> torch.Tensor:
        """Embedding of every training example by the first scoring network ``[N, d]`` (on the device)."""
        state = self.networks.trajectory(0)[-1].to(self.real.images.device)
        network = network_from(self.model_name, self.real.num_classes, self.real.image_shape, state)
        return embed_all(network, self.real.images)

    def class_pools(self, candidates: torch.Tensor | None = None) -> list:
        """The ``candidates`` (indices into the training set; default all) of each class."""
        from pdd_hub.selection.base import ClassPool  # the selection package imports this module

        labels = self.real.labels.cpu()
        candidates = torch.arange(len(labels)) if candidates is None else candidates.cpu()
        pools = []
        for c in range(self.real.num_classes):
            pools.append(
                ClassPool(
                    c,
                    candidates[labels[candidates] == c],
                    features_of=lambda idx: self.features[idx.to(self.features.device)],
                    scores_of=lambda idx: self.scores[idx],
                    learned_of=lambda idx: self.learned[idx],
                )
            )
        return pools


@torch.no_grad()
def embed_all(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The embedding of ``images`` by ``network``, in batches (eval mode)."""
    was_training = network.training
    network.eval()
    out = torch.cat([embed(network, images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    network.train(was_training)
    return out
