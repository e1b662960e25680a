"""The schedule in a user's own loop: the README's plain PyTorch loop over iterate_schedule reaches
exactly the accuracy pdd-hub eval reports for the same model and seed."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import pdd_hub
from pdd_hub.data import Preprocess, load_real_data
from pdd_hub.evaluate import evaluate_export
from pdd_hub.runtime import PLAIN
from pdd_hub.schedule import SGDRecipe
from pdd_hub.selection.export import export_selection
from pdd_hub.train import TrainingRecipe


@pytest.fixture(scope="module")
def digits():
    return load_real_data("sklearn:digits", val_per_class=5)


def make_export(folder, digits, sgd=None, **training):
    g = torch.Generator().manual_seed(0)
    by_class = [torch.nonzero(digits.train.labels == c).flatten() for c in range(10)]
    chosen = [torch.stack([rows[torch.randperm(len(rows), generator=g)[:9]] for rows in by_class])]
    stages = [chosen[0][:, 3 * k : 3 * k + 3].reshape(-1) for k in range(3)]
    preprocess = Preprocess.fit(digits.train.images)
    sgd = SGDRecipe(**{"lr": 0.01, "epochs": 4, "batch_size": 16, **(sgd or {})})
    training = {"augment": "dsa:color_crop_cutout_flip_scale_rotate", **training}
    return export_selection(
        folder, digits, stages, preprocess, method="random", recipe=TrainingRecipe(sgd=sgd, **training)
    )


def test_readme_loop_matches_pdd_hub_eval_on_the_same_seed(tmp_path, digits):
    pdd = pdd_hub.load_pdd(make_export(tmp_path / "export", digits))
    seed = 3
    # the README's loop, plus a test after each phase
    test_x, test_y = pdd.preprocess(digits.test.images), digits.test.labels
    torch.manual_seed(seed)
    model = timm.create_model("convnet_d3", num_classes=10, in_chans=1, img_size=8)
    optimizer, generator, accuracies = None, torch.Generator().manual_seed(seed), []
    for phase in pdd_hub.iterate_schedule(pdd):  # stage_1, stage_1..2, stage_1..3
        optimizer = optimizer or phase.optimizer(model)  # SGD, momentum carried across phases
        model.train()
        for epoch in range(phase.epochs):
            phase.set_epoch(optimizer, epoch)  # the phase's LR schedule
            for x, y in phase.batches(generator):  # shuffled, augmented minibatches
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracies.append((model(test_x).argmax(1) == test_y).float().mean().item())

    report = evaluate_export(pdd, digits.test, ["convnet_d3"], [seed], runtime=PLAIN)
    assert [p.name for p in pdd_hub.iterate_schedule(pdd)] == report.phases
    evaluated = report.accuracies["convnet_d3"][seed]
    assert accuracies == pytest.approx(evaluated, abs=1e-6)  # the same count of correct test digits
    assert len(set(evaluated)) > 1  # and training did move it


def test_phases_carry_the_recipe_and_a_dataloader_gives_the_same_batches(tmp_path, digits):
    export = make_export(tmp_path / "e", digits, {"lr_schedule": "step_at_half"}, cutmix_prob=1.0)
    pdd = pdd_hub.load_pdd(export)
    phases = list(pdd_hub.iterate_schedule(pdd, epochs_per_stage=6))
    assert [len(p.dataset) for p in phases] == [30, 60, 90] and phases[2].lr_at(2) == 0.01
    assert phases[2].lr_at(3) == pytest.approx(0.001) and phases[0].batch_size == 16
    batches = list(phases[1].batches(torch.Generator().manual_seed(0)))
    loaded = list(phases[1].dataloader(torch.Generator().manual_seed(0)))
    assert len(batches) == len(loaded) == 4
    for (x, y), (lx, ly) in zip(batches, loaded, strict=True):
        assert torch.equal(x, lx) and torch.equal(y, ly)
        assert y.shape == (len(x), 10) and torch.allclose(y.sum(1), torch.ones(len(x)))  # CutMix targets
    assert [p.name for p in pdd_hub.iterate_schedule(pdd, mode="sequential")] == [
        "stage_1",
        "stage_2",
        "stage_3",
    ]
