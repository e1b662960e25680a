"""The stage loop with a stand-in method: conditioning, selection, non-finite recovery, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from pdd_hub.checkpoint import StageCheckpoint
from pdd_hub.config import config_from_dict
from pdd_hub.data.images import ImageSet
from pdd_hub.distill import distill_stage
from pdd_hub.errors import ConfigError
from pdd_hub.io import load_json, save_json
from pdd_hub.methods.base import Distiller, StageContext
from pdd_hub.run import RunLayout
from pdd_hub.runtime import TrainingRuntime


class Quadratic(Distiller):
    """Pull the union towards a target; optionally return NaN at chosen calls; records its inputs."""

    expansion = 1  # built without a method config section: one image per stored image

    def __init__(self, target: torch.Tensor, nan_at: tuple[int, ...] = ()):
        self.target, self.nan_at, self.calls, self.seen = target, nan_at, 0, []
        self.lr = torch.tensor(0.5, requires_grad=True)

    def begin_stage(self, ctx: StageContext) -> None:
        pass

    def image_optimizer(self) -> dict[str, float]:
        return {"lr": 0.1, "momentum": 0.5}

    def param_groups(self):
        return [{"params": [self.lr], "lr": 1e-4, "momentum": 0.0}]

    def loss(self, images, labels):
        self.calls += 1
        self.seen.append(images.detach().clone())
        loss = ((images - self.target) ** 2).sum() * self.lr
        return loss * float("nan") if self.calls in self.nan_at else loss

    def stage_lr(self) -> float:
        return self.lr.item()

    def state_dict(self):
        return {"lr": self.lr.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.lr.copy_(state["lr"])


def setting(tmp_path: Path, iterations: int = 6, nan_at: tuple[int, ...] = ()):
    config = config_from_dict(
        {
            "iterations": iterations,
            "checkpoint_every": 100,
            "eval": {"every": 2},
            "progress": False,
            "log_every": 100,
        }
    )
    accelerator = Accelerator(cpu=True)
    frozen = torch.ones(2, 1, 2, 2)
    target = torch.cat([frozen, torch.full((2, 1, 2, 2), 3.0)])
    ctx = StageContext(
        stage=2,
        num_stages=2,
        ipc=1,
        real=ImageSet(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ["a", "b"]),
        pool=torch.arange(2),
        start_states=torch.zeros(1, 1),
        start_states_stage=2,
        model_name="convnet_d1",
        augment=None,
        accelerator=accelerator,
        layout=RunLayout(tmp_path),
        runtime=TrainingRuntime(seed=0),
        generator=torch.Generator().manual_seed(0),
    )
    return config, ctx, Quadratic(target, nan_at), frozen


def run(tmp_path, config, ctx, method, frozen, evaluate=None):
    return distill_stage(
        method,
        ctx,
        config,
        frozen=(frozen, torch.tensor([0, 1])),
        new=(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])),
        evaluate=evaluate or (lambda images, labels, lr, it: -float(((images[2:] - 3) ** 2).mean())),
        checkpoint=StageCheckpoint(tmp_path / "ckpt", ctx.accelerator),
    )


def test_only_the_new_images_move_and_the_best_iteration_is_kept(tmp_path):
    config, ctx, method, frozen = setting(tmp_path)
    result = run(tmp_path, config, ctx, method, frozen)
    assert all(torch.equal(seen[:2], frozen) for seen in method.seen)  # earlier stage frozen in the union
    assert result.images.shape == (2, 1, 2, 2) and result.iteration == 6  # closest to the target at the end
    assert [h["iteration"] for h in result.history] == [0, 2, 4, 6]


def test_non_finite_step_restores_the_last_good_state_and_halves_lr_img(tmp_path, caplog):
    config, ctx, method, frozen = setting(tmp_path, iterations=4, nan_at=(2,))
    with caplog.at_level("WARNING"):
        run(tmp_path, config, ctx, method, frozen)
    # call 2 saw the state after one update; its update was rejected, so call 3 sees the same state
    assert torch.equal(method.seen[2], method.seen[1])
    assert not torch.equal(method.seen[1], method.seen[0])
    assert "lowered lr_img to 0.05 (1/3 in a row)" in caplog.text


def test_three_non_finite_steps_in_a_row_stop_with_a_clear_error(tmp_path):
    from pdd_hub.errors import DistillationDivergedError

    config, ctx, method, frozen = setting(tmp_path, nan_at=(2, 3, 4))
    with pytest.raises(DistillationDivergedError, match="3 non-finite updates in a row at iteration 3"):
        run(tmp_path, config, ctx, method, frozen)


def test_checkpoint_survives_a_leftover_and_refuses_another_process_count(tmp_path):
    acc = Accelerator(cpu=True)
    ckpt = StageCheckpoint(tmp_path, acc)
    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    (tmp_path / ".outgoing").mkdir(parents=True)
    (tmp_path / ".outgoing" / "junk").write_text("left by a run killed while cleaning up")
    for iteration in (1, 2):
        ckpt.save(
            stage=1,
            iteration=iteration,
            tensors={"x": torch.ones(1)},
            optimizer=opt,
            generator=generator,
            meta={},
        )
    tensors, progress = ckpt.load(1, opt, generator)
    assert progress["iteration"] == 2 and torch.equal(tensors["x"], torch.ones(1))
    assert ckpt.load(2, opt, generator) is None  # a checkpoint of another stage is not used
    data = load_json(ckpt.path / "progress.json")
    save_json({**data, "num_processes": 2}, ckpt.path / "progress.json")
    with pytest.raises(ConfigError, match="written by 2 process"):
        ckpt.load(1, opt, generator)
