"""Expert trajectories: networks trained on real data with their parameters saved after every epoch.

A trajectory is one safetensors file per expert (``trajectory`` ``[epochs + 1, P]``, flat parameters
at the start and after each epoch) plus a JSON manifest. While an expert trains, each finished epoch
is saved, so a killed run resumes from its last epoch with the same result. Experts are split across
accelerate processes. Stage-1 experts also count forgetting events per example (an example that
goes from correctly to incorrectly classified, Toneva et al. 2019) for the forgetting bands.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from pdd_hub.augment import DSA
from pdd_hub.config import ExpertConfig, ImportanceConfig
from pdd_hub.data.images import ImageSet
from pdd_hub.errors import CorruptStateError, DatasetFormatError
from pdd_hub.io import RUN_FILE_HINT, load_json, load_tensors, save_json, save_tensors
from pdd_hub.methods.base import StageContext
from pdd_hub.methods.sampling import importance_probabilities
from pdd_hub.networks import Networks, as_networks, momentum_of, set_momentum_of
from pdd_hub.params import network_from
from pdd_hub.runtime import PLAIN, TrainingRuntime, autocast
from pdd_hub.schedule import SGDRecipe
from pdd_hub.train import mixed_cross_entropy

MANIFEST = "manifest.json"


def expert_file(directory: Path, index: int) -> Path:
    return directory / f"expert_{index:03d}.safetensors"


@dataclass
class ExpertSet:
    """The experts of one stage, read lazily from disk."""

    directory: Path
    manifest: dict

    @classmethod
    def load(cls, directory: str | Path) -> ExpertSet:
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"no expert manifest at {manifest_path}")
        experts = cls(directory, load_json(manifest_path))
        experts.check_files()
        return experts

    def check_files(self) -> None:
        """Every expert file is there and readable (its header and size), else CorruptStateError."""
        try:
            count = len(self)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"{self.directory / MANIFEST} is damaged ({exc!r}); {RUN_FILE_HINT}"
            ) from exc
        for i in range(count):
            path = expert_file(self.directory, i)
            try:
                with safe_open(str(path), framework="pt") as f:
                    if "trajectory" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                        raise SafetensorError("no trajectory tensor")
            except (SafetensorError, OSError) as exc:
                raise CorruptStateError(f"{path} is missing or damaged ({exc}); {RUN_FILE_HINT}") from exc

    def __len__(self) -> int:
        return int(self.manifest["num_experts"])

    @property
    def epochs(self) -> int:
        return int(self.manifest["epochs"])

    def trajectory(self, index: int, upto: int | None = None) -> torch.Tensor:
        """Flat parameters at epochs ``0..upto`` (all by default) of expert ``index``: ``[E', P]``."""
        with safe_open(str(expert_file(self.directory, index)), framework="pt") as f:
            if upto is None:
                return f.get_tensor("trajectory")
            return f.get_slice("trajectory")[: upto + 1]

    def forgetting_events(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per expert and training example ``[R, N]``: forgetting events, and whether it was ever
        learned (see :func:`pdd_hub.scoring.forgetting_scores` for the scores they give)."""
        events, learned = [], []
        for i in range(len(self)):
            with safe_open(str(expert_file(self.directory, i)), framework="pt") as f:
                if "forgetting_events" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise DatasetFormatError(
                        f"the networks in {self.directory} did not record forgetting events"
                    )
                events.append(f.get_tensor("forgetting_events").long())
                learned.append(f.get_tensor("ever_learned").bool())
        return torch.stack(events), torch.stack(learned)


@dataclass(frozen=True)
class ExpertTraining:
    """How experts train, whatever they start from: ``recipe``, the augmentation of their minibatches,
    importance sampling of the examples (``None``: shuffled passes), whether they count forgetting
    events, and the runtime (whose seed names their random streams)."""

    recipe: SGDRecipe
    augment: DSA | None = None
    importance: ImportanceConfig | None = None
    track_forgetting: bool = False
    runtime: TrainingRuntime = PLAIN


def train_experts(
    directory: str | Path,
    real: ImageSet,
    start_states: torch.Tensor,
    training: ExpertTraining,
    *,
    model_name: str,
    accelerator: Accelerator,
    pool: torch.Tensor | None = None,
    stage: int | str = 1,
) -> ExpertSet:
    """Train one ``model_name`` expert from each row of ``start_states`` on ``real[pool]`` (all of it
    by default) as ``training`` says, skipping finished experts and resuming unfinished ones; expert i
    of ``stage`` draws from the stream ``("experts", stage, i)`` of the runtime. The experts of a
    process train one at a time (through ``torch.compile`` with the runtime's ``compile``), or stacked
    together when it is ``batched``. Returns the loaded :class:`ExpertSet`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    runtime, train_x = training.runtime, real.images
    pool = torch.arange(len(train_x)) if pool is None else pool.cpu()
    mine = list(range(accelerator.process_index, len(start_states), accelerator.num_processes))
    todo = [i for i in mine if not expert_file(directory, i).exists()]
    size = max(1, len(todo)) if runtime.batched else 1
    groups = [todo[first : first + size] for first in range(0, len(todo), size)]
    shown = runtime.progress and accelerator.is_main_process
    for group in tqdm(groups, desc=f"experts ({directory.name})", disable=not shown):
        models = [
            network_from(model_name, real.num_classes, real.image_shape, start_states[i].to(train_x.device))
            for i in group
        ]
        streams = [runtime.stream("experts", stage, i) for i in group]
        networks = as_networks(models, runtime.compile)
        ExpertGroup(directory, group, training).train(networks, train_x, real.labels, pool, streams)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        facts = manifest(model_name, real, start_states, training, len(pool))
        save_json(facts, directory / MANIFEST)
    accelerator.wait_for_everyone()
    return ExpertSet.load(directory)


def manifest(
    model_name: str, real: ImageSet, start_states: torch.Tensor, training: ExpertTraining, train_examples: int
) -> dict:
    """What ``manifest.json`` says about a stage's experts."""
    recipe = training.recipe
    return {
        "format_version": 1,
        "model": model_name,
        "num_classes": real.num_classes,
        "image_shape": list(real.image_shape),
        "num_experts": len(start_states),
        "epochs": recipe.epochs,
        "num_params": int(start_states.shape[1]),
        "optimizer": {
            "name": recipe.optimizer,
            "lr": recipe.lr,
            "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay,
            "batch_size": recipe.batch_size,
        },
        "train_examples": train_examples,
        "forgetting": training.track_forgetting,
        "files": [f"expert_{i:03d}.safetensors" for i in range(len(start_states))],
    }


def experts_for_stage(
    ctx: StageContext, config: ExpertConfig, *, later_epochs: int, track_forgetting: bool = False
) -> ExpertSet:
    """The experts of ``ctx``'s stage: one from each start state (up to ``num_experts``), trained on the
    stage's pool of real data, in the run folder, with ``config``'s recipe. Stage 1's train
    ``config.epochs`` epochs (they also give forgetting scores); later stages, which start from the
    transition, only ``later_epochs``.
    Without a transition (and on the same data) a later stage's experts would repeat stage 1's, so
    stage 1's are used."""
    same_as_stage_1 = ctx.start_states_stage == 1 and len(ctx.pool) == len(ctx.real)
    expert_stage = 1 if same_as_stage_1 else ctx.stage
    recipe = config.recipe() if expert_stage == 1 else replace(config.recipe(), epochs=later_epochs)
    training = ExpertTraining(
        recipe,
        augment=ctx.augment,
        importance=ctx.importance if ctx.real_sampling == "importance" else None,
        track_forgetting=track_forgetting and expert_stage == 1,
        runtime=ctx.runtime,
    )
    return train_experts(
        ctx.layout.experts_dir(expert_stage),
        ctx.real,
        ctx.start_states[: config.num_experts],
        training,
        model_name=ctx.model_name,
        accelerator=ctx.accelerator,
        pool=ctx.pool,
        stage=expert_stage,
    )


class ExpertGroup:
    """Experts trained together (one, or several stacked), with their snapshots and forgetting
    counts kept in a partial folder after every epoch, so a killed run resumes where it stopped,
    bit for bit on the same device; finished experts become ``expert_XXX.safetensors``."""

    def __init__(self, directory: Path, indices: list[int], training: ExpertTraining) -> None:
        self.directory, self.indices, self.training = directory, indices, training
        self.recipe, self.importance = training.recipe, training.importance
        self.probabilities: torch.Tensor | None = None  # [K, pool]: importance sampling's, per expert
        name = (
            f"expert_{indices[0]:03d}" if len(indices) == 1 else f"experts_{indices[0]:03d}-{indices[-1]:03d}"
        )
        self.partial = directory / f"{name}.partial"

    def train(
        self,
        networks: Networks,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        pool: torch.Tensor,
        generators: list[torch.Generator],
    ) -> None:
        """Train the recipe's epochs (from the last saved one), then write each expert's trajectory."""
        epochs = self.recipe.epochs
        optimizer = self.recipe.build_optimizer(networks.parameters())
        self.counts = ForgettingCounts(len(networks), len(train_x), train_x.device)
        snapshots = self.resume(networks, optimizer, generators)
        networks.template.train()
        for epoch in range(len(snapshots) - 1, epochs):
            self.recipe.set_epoch(optimizer, epoch)
            if self.importance is not None and epoch % self.importance.refresh_every == 0:
                self.probabilities = self.importance_probabilities(networks, train_x, train_y, pool)
            self.epoch(networks, optimizer, train_x, train_y, pool.to(train_x.device), generators)
            snapshots.append(networks.flat().cpu())
            self.save_epoch(epoch + 1, snapshots[-1], networks, optimizer, generators)
        trajectories = torch.stack(snapshots, dim=1)  # [K, epochs + 1, P]
        for k, index in enumerate(self.indices):
            final = {"trajectory": trajectories[k]}
            if self.training.track_forgetting:
                final["forgetting_events"] = self.counts.events[k].cpu()
                final["ever_learned"] = self.counts.ever_learned[k].cpu().to(torch.uint8)
            save_tensors(final, expert_file(self.directory, index), metadata={"epochs": str(epochs)})
        shutil.rmtree(self.partial, ignore_errors=True)

    def epoch(
        self,
        networks: Networks,
        optimizer: torch.optim.Optimizer,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        pool: torch.Tensor,
        generators: list[torch.Generator],
    ) -> None:
        """An epoch of every expert: a pass over the pool in its own order (or, by importance, as many
        examples drawn by their probabilities, without replacement within a minibatch), with its own
        DSA draws."""
        by_importance = self.probabilities is not None
        if not by_importance:
            orders = [pool[torch.randperm(len(pool), generator=g).to(pool.device)] for g in generators]
        weights, batch_size, augment = None, self.recipe.batch_size, self.training.augment
        for start in range(0, len(pool), batch_size):
            if by_importance:
                size = min(batch_size, len(pool) - start)
                idx, weights = self.importance_draws(pool, size, generators)
            else:
                idx = torch.stack([order[start : start + batch_size] for order in orders])
            x = torch.stack(
                [augment(train_x[i], g) if augment else train_x[i] for i, g in zip(idx, generators)]
            )
            y = train_y[idx]
            with autocast(x.device, self.training.runtime.precision):
                logits = networks(x)
                # each expert's gradient is that of its own mean loss
                loss = mixed_cross_entropy(logits, y, y, None, weights).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if self.training.track_forgetting:
                self.counts.update(idx, logits.detach().argmax(dim=-1) == y)

    def importance_draws(
        self, pool: torch.Tensor, size: int, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each expert's ``size`` examples drawn by its probabilities ``[K, size]``, and their weights:
        ``1 / (n p_i)`` with replacement (unbiased), or none without replacement (``weighting: none``)."""
        unbiased = self.importance.weighting == "unbiased"
        draws = [
            torch.multinomial(p, size, replacement=unbiased, generator=g)
            for p, g in zip(self.probabilities, generators, strict=True)
        ]
        picked = torch.stack(draws)
        if not unbiased:
            return pool[picked.to(pool.device)], None
        weights = 1.0 / (len(pool) * torch.gather(self.probabilities, 1, picked))
        return pool[picked.to(pool.device)], weights.float().to(pool.device)

    def importance_probabilities(
        self, networks: Networks, train_x: torch.Tensor, train_y: torch.Tensor, pool: torch.Tensor
    ) -> torch.Tensor:
        """Each expert's sampling probabilities over the pool from its current losses ``[K, n]``."""
        idx = pool.to(train_x.device)
        was_training = networks.template.training
        networks.template.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(idx), 1000):
                x, y = train_x[idx[start : start + 1000]], train_y[idx[start : start + 1000]]
                logits = networks.on_shared(x)  # [K, B, classes]
                loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(networks)), reduction="none")
                losses.append(loss.view(len(networks), -1).cpu())
        networks.template.train(was_training)
        return torch.stack(
            [importance_probabilities(row, self.importance.floor) for row in torch.cat(losses, 1)]
        )

    def resume(
        self, networks: Networks, optimizer: torch.optim.Optimizer, generators: list[torch.Generator]
    ) -> list[torch.Tensor]:
        """The snapshots so far (``[K, P]`` each); restores an interrupted group's state."""
        state_path = self.partial / "state.safetensors"
        if not state_path.exists():
            first = networks.flat().cpu()
            save_tensors({"params": first}, self.partial / "epoch_000.safetensors")
            return [first]
        state = load_tensors(state_path, ("epoch",))
        done = int(state["epoch"])
        snapshots = [
            load_tensors(self.partial / f"epoch_{e:03d}.safetensors", ("params",))["params"]
            for e in range(done + 1)
        ]
        device = networks.parameters()[0].device
        networks.load_flat(snapshots[-1].to(device))
        for k, generator in enumerate(generators):
            generator.set_state(state[f"generator_{k}"])
        self.counts.load(state, device)
        self.probabilities = state.get("probabilities")
        if "momentum" in state:
            set_momentum_of(optimizer, networks, state["momentum"].to(device))
        return snapshots

    def save_epoch(
        self,
        epoch: int,
        snapshot: torch.Tensor,
        networks: Networks,
        optimizer: torch.optim.Optimizer,
        generators: list[torch.Generator],
    ) -> None:
        save_tensors({"params": snapshot}, self.partial / f"epoch_{epoch:03d}.safetensors")
        state = {"epoch": torch.tensor(epoch), **self.counts.state()}
        state.update({f"generator_{k}": g.get_state() for k, g in enumerate(generators)})
        if self.probabilities is not None:
            state["probabilities"] = self.probabilities
        momentum = momentum_of(optimizer, networks)
        if momentum is not None:
            state["momentum"] = momentum
        save_tensors(state, self.partial / "state.safetensors")


class ForgettingCounts:
    """Per expert and training example: forgetting events (correct at the previous presentation,
    wrong at this one; Toneva et al. 2019), the last outcome, and whether it was ever learned."""

    def __init__(self, experts: int, examples: int, device: torch.device) -> None:
        self.events = torch.zeros(experts, examples, dtype=torch.int32, device=device)
        self.was_correct = torch.zeros(experts, examples, dtype=torch.bool, device=device)
        self.ever_learned = torch.zeros(experts, examples, dtype=torch.bool, device=device)

    def update(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        """Record the outcomes ``correct`` ``[K, B]`` of the presented examples ``idx`` ``[K, B]``."""
        rows = torch.arange(len(idx), device=idx.device)[:, None].expand_as(idx)
        self.events[rows, idx] += (self.was_correct[rows, idx] & ~correct).int()
        self.was_correct[rows, idx] = correct
        self.ever_learned[rows, idx] |= correct

    def state(self) -> dict[str, torch.Tensor]:
        return {"events": self.events, "was_correct": self.was_correct, "ever_learned": self.ever_learned}

    def load(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        self.events, self.was_correct, self.ever_learned = (
            state[k].to(device) for k in ("events", "was_correct", "ever_learned")
        )
