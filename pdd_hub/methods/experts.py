"""Expert trajectories: networks trained on real data with their parameters saved after every epoch.

A trajectory is one safetensors file per expert (``trajectory`` ``[epochs + 1, P]``, flat parameters
at the start and after each epoch) plus a JSON manifest. While an expert trains, each finished epoch
is saved, so a killed run resumes from its last epoch with the same result. Experts are split across
accelerate processes. Stage-1 experts also count forgetting events per example (an example that
goes from correctly to incorrectly classified, Toneva et al. 2019) for the forgetting bands.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm

from pdd_hub.augment import DSA
from pdd_hub.config import ExpertConfig
from pdd_hub.io import load_json, save_json, save_tensors
from pdd_hub.methods.base import StageContext
from pdd_hub.methods.params import (
    build_network,
    flat_params,
    load_flat_params,
    momentum_buffers,
    set_momentum_buffers,
)
from pdd_hub.rng import stream

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
        return cls(directory, load_json(manifest_path))

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

    def forgetting_scores(self) -> torch.Tensor:
        """Forgetting events per training example summed over experts; never-learned examples get
        the largest score (they are the hardest), as in Toneva et al."""
        events, learned = None, None
        for i in range(len(self)):
            with safe_open(str(expert_file(self.directory, i)), framework="pt") as f:
                if "forgetting_events" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise ValueError(f"experts in {self.directory} did not record forgetting events")
                e, lrn = f.get_tensor("forgetting_events").long(), f.get_tensor("ever_learned").bool()
            events = e if events is None else events + e
            learned = lrn if learned is None else learned | lrn
        scores = events.clone()
        scores[~learned] = int(events.max()) + 1
        return scores


def train_experts(
    directory: str | Path,
    *,
    model_name: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    pool: torch.Tensor | None,
    start_states: torch.Tensor,
    epochs: int,
    config: ExpertConfig,
    augment: DSA | None,
    seed: int,
    accelerator: Accelerator,
    stage: int = 1,
    track_forgetting: bool = False,
    progress: bool = True,
) -> ExpertSet:
    """Train one expert from each row of ``start_states`` on ``train_x[pool]`` for ``epochs`` epochs,
    skipping finished experts and resuming unfinished ones; expert i of ``stage`` draws from the
    stream ``("experts", stage, i)`` of ``seed``. Returns the loaded :class:`ExpertSet`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    num_experts = len(start_states)
    pool = torch.arange(len(train_x)) if pool is None else pool.cpu()
    mine = list(range(accelerator.process_index, num_experts, accelerator.num_processes))
    show = progress and accelerator.is_main_process
    for index in tqdm(mine, desc=f"experts ({directory.name})", disable=not show):
        if expert_file(directory, index).exists():
            continue
        model = build_network(model_name, num_classes, image_shape).to(train_x.device)
        load_flat_params(model, start_states[index].to(train_x.device))
        generator = stream(seed, "experts", stage, index)
        train_one_expert(
            model,
            train_x,
            train_y,
            pool,
            epochs,
            config,
            augment,
            generator,
            partial_dir=directory / f"expert_{index:03d}.partial",
            final_path=expert_file(directory, index),
            track_forgetting=track_forgetting,
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {
            "format_version": 1,
            "model": model_name,
            "num_classes": num_classes,
            "image_shape": list(image_shape),
            "num_experts": num_experts,
            "epochs": epochs,
            "num_params": int(start_states.shape[1]),
            "optimizer": {
                "name": "sgd",
                "lr": config.lr,
                "momentum": config.momentum,
                "weight_decay": config.weight_decay,
                "batch_size": config.batch_size,
            },
            "train_examples": len(pool),
            "forgetting": track_forgetting,
            "files": [expert_file(directory, i).name for i in range(num_experts)],
        }
        save_json(manifest, directory / MANIFEST)
    accelerator.wait_for_everyone()
    return ExpertSet.load(directory)


def experts_for_stage(
    ctx: StageContext,
    config: ExpertConfig,
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    later_epochs: int,
    track_forgetting: bool = False,
) -> ExpertSet:
    """The experts of ``ctx``'s stage: one from each start state (up to ``num_experts``), trained on the
    stage's pool of real data, in the run folder. Stage 1's train ``config.epochs`` epochs (they also
    give forgetting scores); later stages, which start from the transition, only ``later_epochs``.
    Without a transition (and on the same data) a later stage's experts would repeat stage 1's, so
    stage 1's are used."""
    same_as_stage_1 = ctx.start_states_stage == 1 and len(ctx.pool) == len(ctx.real)
    expert_stage = 1 if same_as_stage_1 else ctx.stage
    return train_experts(
        ctx.layout.experts_dir(expert_stage),
        model_name=ctx.model_name,
        num_classes=num_classes,
        image_shape=image_shape,
        train_x=ctx.real.images,
        train_y=ctx.real.labels,
        pool=ctx.pool,
        start_states=ctx.start_states[: config.num_experts],
        epochs=config.epochs if expert_stage == 1 else later_epochs,
        config=config,
        augment=ctx.augment,
        seed=ctx.seed,
        stage=expert_stage,
        accelerator=ctx.accelerator,
        track_forgetting=track_forgetting and expert_stage == 1,
        progress=ctx.progress,
    )


def train_one_expert(
    model: torch.nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    pool: torch.Tensor,
    epochs: int,
    config: ExpertConfig,
    augment: DSA | None,
    generator: torch.Generator,
    *,
    partial_dir: Path,
    final_path: Path,
    track_forgetting: bool = False,
) -> None:
    """Train ``model`` and write its trajectory to ``final_path``; every finished epoch is saved in
    ``partial_dir`` first, so a killed run resumes where it stopped, bit for bit on the same device."""
    device = train_x.device
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    n = len(train_x)
    events = torch.zeros(n, dtype=torch.int32, device=device)
    was_correct = torch.zeros(n, dtype=torch.bool, device=device)
    ever_learned = torch.zeros(n, dtype=torch.bool, device=device)
    snapshots = [flat_params(model).cpu()]
    start_epoch = 0

    state_path = partial_dir / "state.safetensors"
    if state_path.exists():  # resume an interrupted expert
        state = load_file(str(state_path))
        start_epoch = int(state["epoch"])
        snapshots = [
            load_file(str(partial_dir / f"epoch_{e:03d}.safetensors"))["params"]
            for e in range(start_epoch + 1)
        ]
        load_flat_params(model, snapshots[-1].to(device))
        generator.set_state(state["generator"])
        events, was_correct, ever_learned = (
            state[k].to(device) for k in ("events", "was_correct", "ever_learned")
        )
        if "momentum" in state:
            set_momentum_buffers(optimizer, model, state["momentum"].to(device))
    else:
        save_tensors({"params": snapshots[0]}, partial_dir / "epoch_000.safetensors")

    model.train()
    pool_device = pool.to(device)
    for epoch in range(start_epoch, epochs):
        order = pool_device[torch.randperm(len(pool), generator=generator).to(device)]
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x, y = train_x[idx], train_y[idx]
            if augment is not None:
                x = augment(x, generator)
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if track_forgetting:
                correct = out.detach().argmax(dim=1) == y
                events[idx] += (was_correct[idx] & ~correct).int()
                was_correct[idx] = correct
                ever_learned[idx] |= correct
        snapshots.append(flat_params(model).cpu())
        save_tensors({"params": snapshots[-1]}, partial_dir / f"epoch_{epoch + 1:03d}.safetensors")
        state = {
            "epoch": torch.tensor(epoch + 1),
            "generator": generator.get_state(),
            "events": events,
            "was_correct": was_correct,
            "ever_learned": ever_learned,
        }
        momentum = momentum_buffers(optimizer, model)
        if momentum is not None:
            state["momentum"] = momentum
        save_tensors(state, state_path)

    final = {"trajectory": torch.stack(snapshots)}
    if track_forgetting:
        final["forgetting_events"] = events.cpu()
        final["ever_learned"] = ever_learned.cpu().to(torch.uint8)
    save_tensors(final, final_path, metadata={"epochs": str(epochs)})
    shutil.rmtree(partial_dir, ignore_errors=True)
