"""Which network each draw of a stage's loss uses: DM's embedding, DC/DSA/IDC's matched network.

Stage 1 draws a fresh random initialisation every time, as the base methods do. From stage 2 on, the
method's ``networks.source`` chooses (a per-method setting; docs/METHODS.md says which is shipped):

* ``start_states``: one of the stage's start states at random (the transition's networks, trained
  on stages 1..k-1). Few distinct networks per stage: ``num_networks`` of them.
* ``random``: a fresh random initialisation per draw, as in stage 1. Conditioning then acts only
  through the union of stages in the loss.
* ``perturbed``: a start state at random plus ``perturb_steps`` SGD steps on random real batches of
  the stage's pool: a distinct network per draw, near where training on stages 1..k-1 ends.
* ``retrained``: fresh random initialisations trained on stages 1..k-1 with the export's own
  progressive schedule; a pool of ``pool_size`` of them, renewed every ``refresh_every`` draws and
  kept in the run folder (the driver trains them: :func:`pdd_hub.progressive.retrained_pool`).
* ``mixed``: a fresh random initialisation with probability ``random_fraction``, else a start state.

A draw is a function of the run seed, the stage, the process and the draw's index only, so a resumed
run draws exactly what an uninterrupted one drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pdd_hub.config import fraction, one_of, positive
from pdd_hub.data.images import ImageSet
from pdd_hub.params import build_network, flat_params, load_flat_params
from pdd_hub.rng import Name
from pdd_hub.runtime import TrainingRuntime
from pdd_hub.train import minibatch_loss

SOURCES = ("start_states", "random", "perturbed", "retrained", "mixed")


@dataclass
class LossNetworksConfig:
    """Where the networks of a stage's loss come from from stage 2 on (stage 1: fresh random)."""

    source: str = one_of("start_states", *SOURCES[1:])
    random_fraction: float = fraction(0.5)  # mixed: share of fresh random networks
    perturb_steps: int = positive(5)  # perturbed: real-data SGD steps after the start state
    perturb_batch: int = positive(128)
    perturb_lr: float = positive(0.01)
    pool_size: int = positive(4)  # retrained: networks in the pool
    refresh_every: int | None = positive(None)  # retrained: draws per pool (default: the whole stage)


def with_source(source: str, **settings: float) -> Callable[[], LossNetworksConfig]:
    """A default factory for a method config's ``networks`` section (its shipped source)."""
    return lambda: LossNetworksConfig(source=source, **settings)


RetrainPool = Callable[[int], torch.Tensor]  # refresh index -> [pool_size, P] flat parameters


@dataclass
class LossNetworks:
    """The flat parameters of the ``draw``-th network of one stage's loss (on one process)."""

    config: LossNetworksConfig
    runtime: TrainingRuntime  # the run's (its seed names every draw's stream)
    prefix: tuple[Name, ...]  # the stage's (and process's) stream name
    model_name: str
    real: ImageSet  # the preprocessed training images (perturbed: their SGD steps)
    pool: torch.Tensor  # indices into ``real`` the stage learns from
    start_states: torch.Tensor  # [n, P]: trained on stages 1..k-1 (random inits at stage 1)
    first_stage: bool  # no transition yet: every draw a fresh random network
    retrain: RetrainPool | None = None
    _pool: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def state(self, draw: int) -> torch.Tensor:
        """Flat parameters of the ``draw``-th network (a new tensor or a start state; never modified)."""
        source = "random" if self.first_stage else self.config.source
        generator = self.runtime.stream(*self.prefix, "network", draw)
        if source == "mixed":
            fresh = bool(torch.rand((), generator=generator) < self.config.random_fraction)
            source = "random" if fresh else "start_states"
        if source == "random":
            return self.random_state(draw)
        if source == "retrained":
            return self.retrained_state(draw, generator)
        state = self.start_states[int(torch.randint(len(self.start_states), (), generator=generator))]
        return self.perturbed(state, generator) if source == "perturbed" else state

    def random_state(self, draw: int) -> torch.Tensor:
        seed = self.runtime.stream_seed(*self.prefix, "network", draw)
        real = self.real
        return flat_params(build_network(self.model_name, real.num_classes, real.image_shape, seed=seed))

    def retrained_state(self, draw: int, generator: torch.Generator) -> torch.Tensor:
        if self.retrain is None:
            raise RuntimeError("the 'retrained' loss-network source needs the driver's retrain function")
        refresh = draw // (self.config.refresh_every or 2**62)
        if self._pool is None or self._pool[0] != refresh:
            self._pool = (refresh, self.retrain(refresh))
        pool = self._pool[1]
        return pool[int(torch.randint(len(pool), (), generator=generator))]

    def perturbed(self, state: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``state`` after ``perturb_steps`` plain SGD steps on uniform real batches of the pool."""
        cfg, real = self.config, self.real
        device = real.images.device
        network = build_network(self.model_name, real.num_classes, real.image_shape).to(device).train()
        load_flat_params(network, state.to(device))
        optimizer = torch.optim.SGD(network.parameters(), lr=cfg.perturb_lr)
        for _ in range(cfg.perturb_steps):
            pick = torch.randperm(len(self.pool), generator=generator)[: cfg.perturb_batch]
            idx = self.pool[pick].to(device)
            loss = minibatch_loss(network, real.images[idx], real.labels[idx], None, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return flat_params(network)
