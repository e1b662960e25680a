"""Progressive / sequential / union training of any model on a schedule."""

from __future__ import annotations

import pytest
import timm
import torch

import pdd_hub.train as train_mod
from pdd_hub.augment import DSA
from pdd_hub.data import Preprocess
from pdd_hub.hub import PDDDataset, Schedule, StageSpec, SyntheticStage, stage_split_name
from pdd_hub.runtime import TrainingRuntime
from pdd_hub.schedule import SGDRecipe
from pdd_hub.selection import random_stage_indices
from pdd_hub.train import Augmentation, StagePlan, evaluate_accuracy, plan_stages, train_stages


def toy_pdd(num_stages: int = 3, ipc: int = 2, classes: int = 3, shape=(1, 8, 8)) -> PDDDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(ipc)
    specs = [
        StageSpec(split=stage_split_name(k), ipc=ipc, recipe=SGDRecipe(lr=0.1 * k, epochs=4))
        for k in range(1, num_stages + 1)
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
    assert [p.recipe.lr for p in plans] == pytest.approx([0.1, 0.2, 0.3])
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
    assert union[0].recipe.lr == pytest.approx(0.3) and union[0].recipe.epochs == 9
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
    train_stages(model, plan_stages(pdd, "progressive"), generator=torch.Generator().manual_seed(0))
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
        augmentation=Augmentation(DSA()),
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
            augmentation=Augmentation(DSA()),
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
            recipe=SGDRecipe(lr=0.01, epochs=40),
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
        augmentation=Augmentation(DSA()),
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


def test_idc_schedule_steps_down_by_a_fifth_at_two_thirds_and_five_sixths():
    from pdd_hub.schedule import lr_at

    lrs = [lr_at("steps_at_2/3_5/6_x0.2", 1.0, epoch, 12) for epoch in range(12)]
    assert lrs == pytest.approx([1.0] * 8 + [0.2] * 2 + [0.04] * 2)
    assert [lr_at("step_at_half", 1.0, e, 4) for e in range(4)] == pytest.approx([1, 1, 0.1, 0.1])
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        lr_at("cosine", 1.0, 0, 4)


def test_cutmix_pastes_a_box_of_a_partner_and_weights_the_labels_by_its_area():
    from pdd_hub.augment import CutMix

    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous()  # image i is all i
    y = torch.tensor([0, 1, 2, 3])
    mixed, partner, weight = CutMix(prob=1.0, beta=1.0)(x, y, torch.Generator().manual_seed(3))
    for i in range(4):
        pasted = mixed[i] != x[i]
        # the pasted pixels are the partner's, and the weight of the own label is the area left
        assert torch.equal(mixed[i][pasted], x[int(partner[i])][pasted]) or not pasted.any()
        if int(partner[i]) != i:
            assert weight == pytest.approx(1 - pasted.float().mean().item())
    assert CutMix(prob=0.0)(x, y, torch.Generator()) == (x, y, 1.0)


def test_minibatch_loss_with_cutmix_mixes_the_two_cross_entropies():
    from pdd_hub.augment import CutMix
    from pdd_hub.train import minibatch_loss

    model = timm.create_model("convnet_d1", num_classes=3, in_chans=1, img_size=8)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    cutmix = CutMix(prob=1.0, beta=1.0)
    loss = minibatch_loss(model, x, y, None, torch.Generator().manual_seed(5), cutmix)
    mixed, partner, weight = cutmix(x, y, torch.Generator().manual_seed(5))
    logits = model(mixed)
    expected = weight * torch.nn.functional.cross_entropy(logits, y) + (
        1 - weight
    ) * torch.nn.functional.cross_entropy(logits, partner)
    torch.testing.assert_close(loss, expected)


def test_the_random_baseline_holds_real_images_as_many_as_the_export_stores(digits):
    from dataclasses import replace

    from pdd_hub.evaluate import random_baseline

    pdd = toy_pdd(num_stages=2, ipc=4, classes=10, shape=(1, 8, 8))
    pdd.schedule.stages = [replace(s, stored_ipc=1) for s in pdd.schedule.stages]  # as IDC with factor 2
    baseline = random_baseline(pdd, digits.train, seed=0)
    assert baseline.schedule.method == "random real"
    assert [s.ipc for s in baseline.schedule.stages] == [1, 1]  # the storage budget, not the decoded count
    assert [s.recipe for s in baseline.schedule.stages] == [s.recipe for s in pdd.schedule.stages]
    real = pdd.preprocess(digits.train.images).float()
    picked = []
    for stage in baseline.stages:
        assert torch.bincount(stage.labels, minlength=10).tolist() == [1] * 10
        for image, label in zip(stage.images, stage.labels):
            match = torch.nonzero((real == image).flatten(1).all(1)).flatten()
            assert len(match) >= 1 and int(digits.train.labels[match[0]]) == int(label)
            picked.append(int(match[0]))
    assert len(set(picked)) == len(picked)  # disjoint across stages


def test_bf16_autocast_trains_to_the_accuracy_of_fp32_within_noise(digits):
    pre = Preprocess.fit(digits.train.images)
    idx = torch.cat(random_stage_indices(digits.train, num_stages=1, ipc=20, seed=0))
    recipe = SGDRecipe(lr=0.01, epochs=30, batch_size=64)
    plan = StagePlan("s", pre(digits.train.images[idx]), digits.train.labels[idx], recipe)
    test_x, test_y = pre(digits.test.images), digits.test.labels
    accuracy = {}
    for precision in ("fp32", "bf16"):
        accs = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = timm.create_model("convnet_d3", num_classes=10, in_chans=1, img_size=8)
            generator = torch.Generator().manual_seed(seed)
            runtime = TrainingRuntime(precision=precision)
            train_stages(
                model, [plan], generator=generator, augmentation=Augmentation(DSA()), runtime=runtime
            )
            accs.append(evaluate_accuracy(model, test_x, test_y))
        accuracy[precision] = sum(accs) / len(accs)
    assert accuracy["fp32"] > 0.6  # it learned (chance: 0.1)
    assert abs(accuracy["bf16"] - accuracy["fp32"]) < 0.04  # 3-seed means: within noise
