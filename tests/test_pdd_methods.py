"""Every base method under PDD on the embedded digits: earlier stages stay bit-identical (conditioning),
a later stage's networks are the transition's start states, exports load, killed runs resume exactly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pdd_hub.config import config_from_dict
from pdd_hub.hub import load_pdd
from pdd_hub.methods.base import StageContext
from pdd_hub.progressive import run_pdd
from pdd_hub.registry import METHODS

RUN = {
    "dataset": "sklearn:digits",
    "model": "convnet_d1",
    "num_stages": 2,
    "ipc_per_stage": 1,
    "iterations": 4,
    "val_per_class": 100,
    "train_epochs_per_stage": 3,
    "train_batch_size": 32,
    "checkpoint_every": 2,
    "progress": False,
    "transition": {"syn_epochs": 3},
    "eval": {"every": 2, "num_models": 1, "epochs": 3},
}
# DC, DSA and DM ship the random source; the start states are what this file checks for every method
START_STATES = {"source": "start_states"}
GRADIENT_MATCHING = {"outer_loop": 2, "inner_loop": 2, "batch_real": 8, "batch_train": 8, "num_networks": 2}
SECTIONS = {
    "dc": {**GRADIENT_MATCHING, "networks": START_STATES},
    "dsa": {**GRADIENT_MATCHING, "networks": START_STATES},
    "dm": {"batch_real": 8, "num_networks": 2, "networks": START_STATES},
    "idc": {"factor": 2, "inner_loop": 2, "batch_real": 8, "n_data": 16, "net_batch": 8, "num_networks": 2},
}


def config(method: str, out) -> object:
    return config_from_dict(
        {**copy.deepcopy(RUN), "method": method, method: SECTIONS[method], "output_dir": str(out)}
    )


@pytest.fixture(scope="module", params=sorted(SECTIONS))
def finished(request, tmp_path_factory):
    """One uninterrupted run per method, recording the networks drawn and the unions the loss saw."""
    method = request.param
    out = tmp_path_factory.mktemp(method) / "run"
    cls = METHODS.get(method).cls
    drawn, unions = [], []
    real_state, real_loss = StageContext.network_state, cls.loss

    def recording_state(ctx, draw):
        state = real_state(ctx, draw)
        drawn.append((ctx.stage, state.clone()))
        return state

    def recording_loss(self, images, labels):
        unions.append((self.ctx.stage, images.detach().clone()))
        return real_loss(self, images, labels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageContext, "network_state", recording_state)
        patch.setattr(cls, "loss", recording_loss)
        run_pdd(config(method, out), Accelerator(cpu=True))
    return method, out, drawn, unions


def test_earlier_stages_stay_bit_identical_in_every_later_loss(finished):
    method, out, _, unions = finished
    stored_1 = load_file(str(out / "stages" / "stage_1.safetensors"))["images"]
    pdd = load_pdd(out / "dataset")
    decoded_1 = pdd.stages[0].images
    assert len(decoded_1) == 10 * (4 if method == "idc" else 1)
    stage_2 = [images for stage, images in unions if stage == 2]
    assert len(stage_2) == RUN["iterations"]
    for images in stage_2:
        assert torch.equal(images[: len(decoded_1)], decoded_1)  # the frozen prefix, exactly
    assert not torch.equal(stage_2[-1][len(decoded_1) :], stage_2[0][len(decoded_1) :])  # the new part moved
    assert torch.equal(load_file(str(out / "stages" / "stage_1.safetensors"))["images"], stored_1)


def test_stage_2_networks_are_the_transitions_start_states(finished):
    _, out, drawn, _ = finished
    start_2 = load_file(str(out / "start_states" / "stage_2.safetensors"))["states"]
    start_1 = load_file(str(out / "start_states" / "stage_1.safetensors"))["states"]
    assert len(start_2) == 2 and not torch.equal(start_2, start_1)  # trained on stage 1
    stage_1 = [s for stage, s in drawn if stage == 1]
    stage_2 = [s for stage, s in drawn if stage == 2]
    assert stage_1 and stage_2
    assert all(any(torch.equal(s, row) for row in start_2) for s in stage_2)
    assert not any(any(torch.equal(s, row) for row in start_2) for s in stage_1)


def test_the_export_records_the_methods_recipe_and_storage(finished):
    method, out, _, _ = finished
    pdd = load_pdd(out / "dataset")
    schedule = pdd.schedule
    assert schedule.method == method and [s.split for s in schedule.stages] == ["stage_1", "stage_2"]
    if method == "idc":
        assert schedule.storage["factor"] == 2 and schedule.storage["expansion"] == 4
        assert [(s.ipc, s.stored_ipc) for s in schedule.stages] == [(4, 1), (4, 1)]
        assert schedule.training["cutmix"] == {"prob": 0.5, "beta": 1.0}
        assert schedule.stages[0].recipe.lr_schedule == "steps_at_2/3_5/6_x0.2"
        stored = load_file(str(out / "stages" / "stage_2.safetensors"))["images"]
        distiller = METHODS.get("idc").cls(config(method, out).idc, config(method, out), 10, (1, 8, 8))
        assert torch.equal(pdd.stages[1].images, distiller.decode(stored))  # the export holds decoded images
    else:
        assert [(s.ipc, s.stored_ipc) for s in schedule.stages] == [(1, 1), (1, 1)]
        assert schedule.training["cutmix"] is None
    full_dsa = "dsa:color_crop_cutout_flip_scale_rotate"
    default_augment = {
        "dc": "none",
        "dm": full_dsa,
        "dsa": full_dsa,
        "idc": "dsa_idc:color_crop_flip_scale_rotate",
    }
    assert schedule.training["augment"] == default_augment[method]  # each method's own training recipe


@pytest.mark.parametrize("finished", ["dsa", "idc"], indirect=True)
def test_a_killed_gradient_matching_run_resumes_to_the_uninterrupted_result(tmp_path, finished):
    method, reference, _, _ = finished
    cls = METHODS.get(method).cls
    real_loss = cls.loss
    calls = {"n": 0}

    def dying_loss(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 8:  # stage 2, iteration 3: one past its checkpoint at 2
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "loss", dying_loss)
        with pytest.raises(KeyboardInterrupt):
            run_pdd(config(method, out), Accelerator(cpu=True))
    progress = json.loads((out / "checkpoints" / "current" / "progress.json").read_text())
    assert (progress["stage"], progress["iteration"]) == (2, 2)
    run_pdd(config(method, out), Accelerator(cpu=True))

    resumed, straight = load_pdd(out / "dataset"), load_pdd(reference / "dataset")
    for a, b in zip(resumed.stages, straight.stages, strict=True):
        assert torch.equal(a.images, b.images)
    for stage in (1, 2):
        got = json.loads((out / "stages" / f"stage_{stage}.json").read_text())
        want = json.loads((reference / "stages" / f"stage_{stage}.json").read_text())
        assert got == want


def test_sensitivity_init_and_importance_sampled_batches_run_resume_and_are_recorded(tmp_path):
    extra = {
        "init": "sensitivity",
        "sensitivity": {"clusters": 3},
        "real_sampling": "importance",
        "importance": {"refresh_every": 2, "floor": 0.2},
        "scoring": {"runs": 1, "epochs": 2, "batch_size": 64},
    }

    def dm_config(out):
        return config_from_dict(
            {**copy.deepcopy(RUN), "method": "dm", "dm": SECTIONS["dm"], "output_dir": str(out), **extra}
        )

    run_pdd(dm_config(tmp_path / "straight"), Accelerator(cpu=True))
    pdd = load_pdd(tmp_path / "straight" / "dataset")
    assert pdd.schedule.config["init"] == "sensitivity" and pdd.schedule.config["sensitivity"] == {
        "clusters": 3
    }
    assert pdd.schedule.config["real_sampling"] == "importance"
    records = [json.loads((tmp_path / "straight" / "stages" / f"stage_{k}.json").read_text()) for k in (1, 2)]
    chosen = [set(r["init_indices"]) for r in records]
    assert all(len(c) == 10 for c in chosen) and not chosen[0] & chosen[1]

    calls = {"n": 0}
    real_loss = METHODS.get("dm").cls.loss

    def dying_loss(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 7:  # stage 2, iteration 3, after the checkpoint at 2
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(METHODS.get("dm").cls, "loss", dying_loss)
        with pytest.raises(KeyboardInterrupt):
            run_pdd(dm_config(tmp_path / "killed"), Accelerator(cpu=True))
    run_pdd(dm_config(tmp_path / "killed"), Accelerator(cpu=True))
    for a, b in zip(load_pdd(tmp_path / "killed" / "dataset").stages, pdd.stages, strict=True):
        assert torch.equal(a.images, b.images)


def test_mtt_experts_train_on_importance_sampled_batches(tmp_path):
    from tests.test_pdd import TINY

    data = {
        **copy.deepcopy(TINY),
        "output_dir": str(tmp_path / "mtt"),
        "num_stages": 1,
        "real_sampling": "importance",
    }
    data["importance"] = {"refresh_every": 1}
    run_pdd(config_from_dict(data), Accelerator(cpu=True))
    uniform = {**copy.deepcopy(TINY), "output_dir": str(tmp_path / "uniform"), "num_stages": 1}
    run_pdd(config_from_dict(uniform), Accelerator(cpu=True))
    from pdd_hub.methods.experts import ExpertSet

    sampled = ExpertSet.load(tmp_path / "mtt" / "experts" / "stage_1").trajectory(0)
    plain = ExpertSet.load(tmp_path / "uniform" / "experts" / "stage_1").trajectory(0)
    assert torch.equal(sampled[0], plain[0]) and not torch.equal(sampled[-1], plain[-1])
