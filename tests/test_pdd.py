"""The progressive driver end to end on the embedded digits: conditioning, transitions, selection on
the validation split, exports after every stage, exact resumption, non-finite recovery."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import pdd_hub.progressive as progressive
import pdd_hub.train as train_module
from pdd_hub.config import config_from_dict
from pdd_hub.errors import ConfigError, DistillationDivergedError
from pdd_hub.hub import load_pdd
from pdd_hub.methods.experts import ExpertSet
from pdd_hub.methods.mtt import MTT
from pdd_hub.params import build_network, load_flat_params
from pdd_hub.progressive import run_pdd
from pdd_hub.rng import stream
from pdd_hub.schedule import SGDRecipe
from pdd_hub.train import Augmentation, StagePlan, train_stages

TINY = {
    "dataset": "sklearn:digits",
    "model": "convnet_d1",
    "num_stages": 2,
    "ipc_per_stage": 1,
    "iterations": 4,
    "val_per_class": 100,  # leaves ~40 training images per class: small experts, real validation
    "train_epochs_per_stage": 5,
    "log_every": 2,
    "checkpoint_every": 2,
    "progress": False,
    "experts": {"num_experts": 2, "epochs": 3, "batch_size": 64},
    "mtt": {"syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2, "lr_img": 1.0, "lr_lr": 1e-4},
    "transition": {"syn_epochs": 3},
    "eval": {"every": 2, "num_models": 1, "epochs": 3},
}


def tiny(tmp_path, name: str = "run", **overrides):
    data = copy.deepcopy(TINY)
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    data["output_dir"] = str(tmp_path / name)
    return config_from_dict(data)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted tiny run, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("pdd")
    config = tiny(root)
    run_pdd(config, Accelerator(cpu=True))
    return config, root / "run"


def test_export_after_a_run_loads_with_learned_lrs(finished_run):
    _config, out = finished_run
    pdd = load_pdd(out / "dataset")
    assert pdd.schedule.split_names == ["stage_1", "stage_2"]
    assert pdd.schedule.method == "mtt" and pdd.schedule.distill_model == "convnet_d1"
    assert [s.ipc for s in pdd.schedule.stages] == [1, 1] and pdd.stages[0].images.shape == (10, 1, 8, 8)
    assert all(s.recipe.lr > 0 for s in pdd.schedule.stages)
    assert pdd.schedule.config["mtt"]["syn_steps"] == 3
    assert (out / "grids" / "stage_2.png").exists() and (out / "accuracy_per_stage.png").exists()
    assert not (out / "checkpoints" / "current").exists()  # cleared once its stage finished


def test_selection_is_recorded_on_the_validation_split(finished_run):
    _, out = finished_run
    record = json.loads((out / "stages" / "stage_1.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [0, 2, 4]
    assert record["val_acc"] == max(h["val_acc"] for h in record["history"])


def test_conditioning_keeps_earlier_stages_bit_identical(finished_run):
    _, out = finished_run
    stage_1 = load_file(str(out / "stages" / "stage_1.safetensors"))["images"]
    exported = load_pdd(out / "dataset")
    assert torch.equal(exported.stages[0].images, stage_1)
    # stage 2 started from real images of its own and moved; stage 1 did not move during stage 2
    assert not torch.equal(exported.stages[1].images, exported.stages[0].images)


def test_the_transition_starts_stage_2_from_networks_trained_on_stage_1(finished_run):
    config, out = finished_run
    start_1 = load_file(str(out / "start_states" / "stage_1.safetensors"))["states"]
    start_2 = load_file(str(out / "start_states" / "stage_2.safetensors"))["states"]
    pdd = load_pdd(out / "dataset")
    run = progressive.prepare_data(progressive.RunFolder.claim(config, Accelerator(cpu=True)))

    def trained_on(stage: int, i: int) -> torch.Tensor:
        model = build_network(config.model, 10, (1, 8, 8))
        load_flat_params(model, start_1[i])
        recipe = SGDRecipe(
            lr=pdd.schedule.stages[stage].recipe.lr,
            epochs=config.transition.syn_epochs,
            batch_size=config.train_batch_size,
        )
        plan = StagePlan("s", pdd.stages[stage].images, pdd.stages[stage].labels, recipe)
        train_stages(
            model,
            [plan],
            generator=stream(config.seed, "transition", 2, i),
            augmentation=Augmentation(run.augment),
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    for i in range(len(start_1)):
        # CPU kernels may differ in the last bits with memory alignment, hence a tolerance far below
        # the distance to any other candidate (the untrained start, a network trained on stage 2)
        torch.testing.assert_close(start_2[i], trained_on(0, i), rtol=0, atol=1e-6)
        assert (start_2[i] - start_1[i]).abs().max() > 1e-3
        assert (start_2[i] - trained_on(1, i)).abs().max() > 1e-3
    experts_2 = ExpertSet.load(out / "experts" / "stage_2")
    assert torch.equal(experts_2.trajectory(0, upto=0)[0], start_2[0])  # stage 2's experts start there
    assert experts_2.epochs == config.mtt.max_start_epoch + config.mtt.expert_epochs + 1


def test_learned_lr_changes_and_stays_positive(tmp_path):
    config = tiny(tmp_path, num_stages=1, iterations=6, mtt__lr_lr=1e-3)
    run_pdd(config, Accelerator(cpu=True))
    record = json.loads((tmp_path / "run" / "stages" / "stage_1.json").read_text())
    lrs = [h["lr"] for h in record["history"]]
    assert lrs[0] == pytest.approx(config.mtt.lr_init)
    assert len(set(lrs)) > 1 and all(lr > 0 for lr in lrs)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, finished_run, monkeypatch):
    _, reference = finished_run
    config = tiny(tmp_path)
    calls = {"n": 0}
    real_loss = MTT.loss

    def dying_loss(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 7:  # stage 2, after its checkpoint at iteration 2
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    monkeypatch.setattr(MTT, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        run_pdd(config, Accelerator(cpu=True))
    monkeypatch.undo()
    out = tmp_path / "run"
    assert (out / "checkpoints" / "current" / "progress.json").exists()
    assert json.loads((out / "checkpoints" / "current" / "progress.json").read_text())["stage"] == 2
    assert load_pdd(out / "dataset").num_stages == 1  # stage 1 is already usable

    stage_1_file = out / "stages" / "stage_1.safetensors"
    mtime = stage_1_file.stat().st_mtime_ns
    run_pdd(config, Accelerator(cpu=True))
    assert stage_1_file.stat().st_mtime_ns == mtime  # the finished stage was not recomputed
    resumed, straight = load_pdd(out / "dataset"), load_pdd(reference / "dataset")
    for a, b in zip(resumed.stages, straight.stages):
        assert torch.equal(a.images, b.images)
    assert [s.recipe for s in resumed.schedule.stages] == [s.recipe for s in straight.schedule.stages]


def test_ablations_without_conditioning_or_transition(tmp_path):
    config = tiny(tmp_path, conditioning=False, transition__enabled=False)
    run_pdd(config, Accelerator(cpu=True))
    out = tmp_path / "run"
    assert load_pdd(out / "dataset").num_stages == 2
    assert not (out / "start_states" / "stage_2.safetensors").exists()
    assert not (out / "experts" / "stage_2").exists()  # stage 2 reuses stage 1's experts


def test_non_finite_updates_restore_lower_lr_and_fail_after_three(tmp_path, monkeypatch, caplog):
    config = tiny(tmp_path, num_stages=1, iterations=6)
    real_loss = MTT.loss
    calls = {"n": 0}

    def sometimes_nan(self, images, labels):
        calls["n"] += 1
        loss = real_loss(self, images, labels)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(MTT, "loss", sometimes_nan)
    with caplog.at_level("WARNING"):
        run_pdd(config, Accelerator(cpu=True))
    assert "lowered lr_img to 0.5" in caplog.text
    assert torch.isfinite(load_pdd(tmp_path / "run" / "dataset").stages[0].images).all()

    monkeypatch.setattr(
        MTT, "loss", lambda self, images, labels: real_loss(self, images, labels) * float("nan")
    )
    with pytest.raises(DistillationDivergedError, match="3 non-finite updates in a row"):
        run_pdd(tiny(tmp_path, name="diverges", num_stages=1), Accelerator(cpu=True))


def test_rerun_with_a_different_config_is_refused(finished_run):
    config, _out = finished_run
    changed = config_from_dict({**config.to_dict(), "mtt": {**config.to_dict()["mtt"], "syn_steps": 4}})
    with pytest.raises(ConfigError, match="changed: mtt.syn_steps"):
        run_pdd(changed, Accelerator(cpu=True))


def test_reading_a_run_or_refusing_its_config_loads_no_data(finished_run, monkeypatch):
    import pdd_hub.run as run_mod

    def no_load(*args, **kwargs):
        raise AssertionError("the real data was loaded")

    monkeypatch.setattr(run_mod, "load_real_data", no_load)
    config, out = finished_run
    folder = run_mod.RunFolder(config, Accelerator(cpu=True))  # a handle: no lock, nothing written
    stored, labels, record = folder.load_finished(1)
    assert torch.equal(stored, load_file(str(out / "stages" / "stage_1.safetensors"))["images"])
    assert len(labels) == 10 and record["lr"] > 0 and folder.load_finished(3) is None
    assert folder.load_preprocess() is not None
    changed = config_from_dict({**config.to_dict(), "seed": config.seed + 1})
    with pytest.raises(ConfigError, match="changed: seed"):
        run_mod.RunFolder.claim(changed, Accelerator(cpu=True))


def test_rerun_ignores_changes_to_sections_the_run_does_not_use(finished_run):
    config, out = finished_run
    data = config.to_dict()
    assert data["forgetting"]["mode"] == "off" and data["real_sampling"] == "uniform"
    unused = config_from_dict(
        {**data, "forgetting": {"mode": "off", "band_width": 7.0}, "importance": {"floor": 0.5}}
    )
    stages = [s.images.clone() for s in load_pdd(out / "dataset").stages]
    run_pdd(unused, Accelerator(cpu=True))  # and records the new (unused) values
    assert all(torch.equal(a, s.images) for a, s in zip(stages, load_pdd(out / "dataset").stages))
    used = config_from_dict({**data, "forgetting": {"mode": "band", "band_width": 7.0}})
    with pytest.raises(ConfigError, match=r"changed: forgetting.mode\)"):
        run_pdd(used, Accelerator(cpu=True))


def test_tensorboard_tracker_logs_losses_lrs_validation_curves_and_grids(tmp_path):
    from pdd_hub.recipe import build_accelerator

    config = tiny(tmp_path, tracker="tensorboard")
    run_pdd(config, build_accelerator(config))
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        scalars |= {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
        images |= {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    for stage in (1, 2):  # per stage: its loss, learned LR, image LR and validation curve
        assert {f"stage_{stage}/{k}" for k in ("loss", "lr", "lr_img", "val_acc")} <= set(scalars)
    assert len(scalars["stage_2/val_acc"]) > 1  # a curve, not a point
    finals = [json.loads((tmp_path / "run" / "stages" / f"stage_{k}.json").read_text()) for k in (1, 2)]
    assert [e.step for e in scalars["stages/val_acc"]] == [1, 2]
    assert [e.value for e in scalars["stages/val_acc"]] == pytest.approx([f["val_acc"] for f in finals])
    from PIL import Image

    for stage in (1, 2):  # the stage grids, as written to grids/stage_K.png
        (logged,) = images[f"stage_{stage}/grid"]
        with Image.open(tmp_path / "run" / "grids" / f"stage_{stage}.png") as grid:
            assert (logged.width, logged.height) == grid.size


def test_kill_mid_stage_between_checkpoints_and_in_the_transition(tmp_path, finished_run, monkeypatch):
    _, reference = finished_run
    config = tiny(tmp_path)
    calls = {"loss": 0, "transition": 0}
    real_loss = MTT.loss
    real_train = train_module.train_networks

    def dying_loss(self, images, labels):
        calls["loss"] += 1
        if calls["loss"] == 4:  # stage 2 (stage 1 is done), iteration 3: one past its checkpoint at 2
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    def dying_train(networks, plans, **kwargs):
        if plans[0].name.startswith("stage_1.."):  # the transition, not validation
            calls["transition"] += 1
            if calls["transition"] == 2:  # after the first network's part was saved
                raise KeyboardInterrupt("killed in the transition")
        return real_train(networks, plans, **kwargs)

    monkeypatch.setattr(train_module, "train_networks", dying_train)
    with pytest.raises(KeyboardInterrupt, match="transition"):
        run_pdd(config, Accelerator(cpu=True))
    assert len(list((tmp_path / "run" / "start_states" / "stage_2.parts").iterdir())) == 1
    monkeypatch.setattr(train_module, "train_networks", real_train)
    monkeypatch.setattr(MTT, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        run_pdd(config, Accelerator(cpu=True))
    monkeypatch.undo()
    run_pdd(config, Accelerator(cpu=True))

    resumed, straight = load_pdd(tmp_path / "run" / "dataset"), load_pdd(reference / "dataset")
    for a, b in zip(resumed.stages, straight.stages):
        assert torch.equal(a.images, b.images)
    for stage in (1, 2):
        got = json.loads((tmp_path / "run" / "stages" / f"stage_{stage}.json").read_text())
        want = json.loads((reference / "stages" / f"stage_{stage}.json").read_text())
        assert got == want  # same validation history, best iteration and learned LR


def test_data_that_cannot_fit_the_config_fails_before_the_preprocessing(tmp_path, monkeypatch):
    import pdd_hub.run as run_mod

    def no_fit(*args, **kwargs):
        raise AssertionError("preprocessing was fitted before the config was checked")

    monkeypatch.setattr(run_mod.Preprocess, "fit", no_fit)
    with pytest.raises(ConfigError, match="config key 'model': model 'convnet_d5' cannot take 1x8x8"):
        run_pdd(tiny(tmp_path, model="convnet_d5"), Accelerator(cpu=True))
    with pytest.raises(ConfigError, match="'ipc_per_stage' = 3 needs"):
        run_pdd(tiny(tmp_path, name="few", ipc_per_stage=3, train_per_class=2), Accelerator(cpu=True))
