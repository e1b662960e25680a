"""Progressive / sequential / union training of any model on a schedule."""

from __future__ import annotations

import pytest
import timm
import torch

import pdd_hub.train as train_mod
from pdd_hub.augment import DSA
from pdd_hub.data import Preprocess
from pdd_hub.hub import PDDDataset, Schedule, StageSpec, SyntheticStage, stage_split_name
from pdd_hub.selection import random_stage_indices
from pdd_hub.train import StagePlan, evaluate_accuracy, plan_stages, train_stages


def toy_pdd(num_stages: int = 3, ipc: int = 2, classes: int = 3, shape=(1, 8, 8)) -> PDDDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(ipc)
    specs = [
        StageSpec(split=stage_split_name(k), ipc=ipc, lr=0.1 * k, epochs=4) for k in range(1, num_stages + 1)
    ]
    stages = [SyntheticStage(s, torch.randn(len(labels), *shape, generator=g), labels.clone()) for s in specs]
    pre = Preprocess(torch.zeros(shape[0]), torch.ones(shape[0]))
    schedule = Schedule(
        stages=specs,
        class_names=[str(c) for c in range(classes)],
        image_shape=shape,
        preprocess=pre.to_config(),
    )
    return PDDDataset(schedule, stages, pre, path=None)  # type: ignore[arg-type]


def test_progressive_plans_grow_by_one_stage_each():
    pdd = toy_pdd()
    plans = plan_stages(pdd, "progressive")
    assert [len(p.images) for p in plans] == [6, 12, 18]
    assert [p.lr for p in plans] == pytest.approx([0.1, 0.2, 0.3])
    assert torch.equal(plans[2].images[:6], pdd.stages[0].images)  # earlier stages come first
    assert torch.equal(plans[2].images[12:], pdd.stages[2].images)
    assert [p.name for p in plans] == ["stage_1", "stage_1..2", "stage_1..3"]


def test_sequential_and_union_plans():
    pdd = toy_pdd()
    seq = plan_stages(pdd, "sequential")
    assert [len(p.images) for p in seq] == [6, 6, 6]
    assert torch.equal(seq[1].images, pdd.stages[1].images)
    union = plan_stages(pdd, "union", epochs_per_stage=9)
    assert len(union) == 1 and len(union[0].images) == 18
    assert union[0].lr == pytest.approx(0.3) and union[0].epochs == 9
    with pytest.raises(ValueError, match="unknown training mode"):
        plan_stages(pdd, "curriculum")


def test_lr_per_stage_step_decay_and_momentum_carried_across_stages(monkeypatch):
    pdd = toy_pdd()
    model = timm.create_model("convnet_d2", num_classes=3, in_chans=1, img_size=8)
    seen = []
    real_epoch = train_mod.train_epoch

    def spy(model, optimizer, *args):
        state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
        buf = state.get("momentum_buffer")
        seen.append((optimizer.param_groups[0]["lr"], 0.0 if buf is None else float(buf.abs().sum())))
        return real_epoch(model, optimizer, *args)

    monkeypatch.setattr(train_mod, "train_epoch", spy)
    train_stages(
        model, plan_stages(pdd, "progressive"), augment=None, generator=torch.Generator().manual_seed(0)
    )
    lrs = [round(lr, 6) for lr, _ in seen]
    assert lrs == [0.1, 0.1, 0.01, 0.01, 0.2, 0.2, 0.02, 0.02, 0.3, 0.3, 0.03, 0.03]
    assert seen[0][1] == 0.0  # fresh optimiser
    assert seen[4][1] > 0.0 and seen[8][1] > 0.0  # stages 2 and 3 start with stage 1's momentum


@pytest.mark.parametrize("mode", ["progressive", "sequential", "union"])
def test_each_mode_trains_and_reports_after_each_phase(mode):
    pdd = toy_pdd()
    model = timm.create_model("resnet10_cifar_bn", num_classes=3, in_chans=1, img_size=8)
    before = [p.detach().clone() for p in model.parameters()]
    reports = []
    train_stages(
        model,
        plan_stages(pdd, mode, epochs_per_stage=2),
        augment=DSA(),
        generator=torch.Generator().manual_seed(0),
        after_stage=lambda k, m: reports.append(k),
    )
    assert reports == ([0] if mode == "union" else [0, 1, 2])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_is_reproducible_for_a_seed():
    pdd = toy_pdd()

    def run(seed):
        torch.manual_seed(seed)
        model = timm.create_model("convnet_d2", num_classes=3, in_chans=1, img_size=8)
        train_stages(
            model,
            plan_stages(pdd, "progressive", 2),
            augment=DSA(),
            generator=torch.Generator().manual_seed(seed),
        )
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_real_digits_are_learned_from_a_few_images_per_class(digits):
    pre = Preprocess.fit(digits.train.images)
    idx = random_stage_indices(digits.train, num_stages=2, ipc=5, seed=0)
    plans = [
        StagePlan(
            name=f"s{k}",
            images=pre(digits.train.images[torch.cat(idx[: k + 1])]),
            labels=digits.train.labels[torch.cat(idx[: k + 1])],
            lr=0.01,
            epochs=40,
        )
        for k in range(2)
    ]
    torch.manual_seed(0)
    model = timm.create_model("convnet_d3", num_classes=10, in_chans=1, img_size=8)
    accs = []
    test_x, test_y = pre(digits.test.images), digits.test.labels
    train_stages(
        model,
        plans,
        augment=DSA(),
        generator=torch.Generator().manual_seed(0),
        after_stage=lambda k, m: accs.append(evaluate_accuracy(m, test_x, test_y)),
    )
    assert accs[0] > 0.5 and accs[1] > 0.7  # chance is 0.1


def test_evaluate_accuracy_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3) + self.w

    labels = torch.tensor([1, 1, 0, 2, 1, 0, 1, 2])
    assert evaluate_accuracy(Fixed(), torch.zeros(8, 1, 2, 2), labels, batch_size=3) == pytest.approx(0.5)
