"""Where a stage's loss networks come from (pdd_hub.loss_networks): from stage 2 on, every source but
``start_states`` gives a distinct network per draw, reproducibly; ``retrained`` networks are fresh
initialisations trained on the earlier stages only, exactly as the export's schedule trains."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pdd_hub.config import config_from_dict
from pdd_hub.hub import load_pdd
from pdd_hub.loss_networks import LossNetworksConfig
from pdd_hub.methods.base import StageContext
from pdd_hub.params import build_network, flat_params
from pdd_hub.progressive import run_pdd
from pdd_hub.rng import stream, stream_seed
from pdd_hub.train import plan_stages, recipe_augmentation, train_many
from tests.test_methods import CLASSES, SHAPE, make
from tests.test_pdd_methods import RUN as PDD_RUN


def draws(ctx: StageContext, config: LossNetworksConfig, count: int = 6) -> list[torch.Tensor]:
    networks = ctx.loss_networks(config)
    return [networks.state(d).clone() for d in range(count)]


def all_distinct(states: list[torch.Tensor]) -> bool:
    return all(not torch.equal(a, b) for i, a in enumerate(states) for b in states[i + 1 :])


@pytest.mark.parametrize("source", ["random", "perturbed"])
def test_stage_2_sources_draw_a_distinct_network_every_time_reproducibly(source, tmp_path):
    _, ctx = make("dm", tmp_path)
    start = ctx.start_states.clone()
    first = draws(ctx, LossNetworksConfig(source=source, perturb_batch=6))
    assert all_distinct(first)
    assert not any(torch.equal(s, start[0]) for s in first)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first, draws(ctx, LossNetworksConfig(source=source, perturb_batch=6)))
    )
    assert torch.equal(ctx.start_states, start)  # the start states themselves never move


def test_perturbed_networks_stay_near_their_start_state(tmp_path):
    _, ctx = make("dm", tmp_path)
    fresh = flat_params(build_network("convnet_d1", CLASSES, SHAPE, seed=123))
    for state in draws(ctx, LossNetworksConfig(source="perturbed", perturb_steps=2, perturb_batch=6)):
        assert 0 < (state - ctx.start_states[0]).norm() < 0.1 * (fresh - ctx.start_states[0]).norm()


def test_mixed_draws_both_fresh_networks_and_start_states(tmp_path):
    _, ctx = make("dm", tmp_path)
    states = draws(ctx, LossNetworksConfig(source="mixed", random_fraction=0.5), count=40)
    from_start = sum(torch.equal(s, ctx.start_states[0]) for s in states)
    assert 8 <= from_start <= 32
    assert all_distinct([s for s in states if not torch.equal(s, ctx.start_states[0])])


def test_stage_1_draws_fresh_networks_whatever_the_source(tmp_path):
    _, ctx = make("dm", tmp_path, start_states_stage=1)
    for source in ("start_states", "perturbed", "retrained"):
        states = draws(ctx, LossNetworksConfig(source=source), count=3)
        assert all_distinct(states) and not any(torch.equal(s, ctx.start_states[0]) for s in states)


RUN = {
    **copy.deepcopy(PDD_RUN),
    "method": "dm",
    "num_stages": 3,
    "dm": {
        "batch_real": 8,
        "num_networks": 2,
        "networks": {"source": "retrained", "pool_size": 2, "refresh_every": 2},
    },
}


@pytest.fixture(scope="module")
def retrained_run(tmp_path_factory):
    """A PDD + DM run with the ``retrained`` source, recording every network the loss drew."""
    out = tmp_path_factory.mktemp("retrained") / "run"
    drawn = []
    real_state = StageContext.network_state

    def recording_state(ctx, draw):
        state = real_state(ctx, draw)
        drawn.append((ctx.stage, draw, state.clone()))
        return state

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageContext, "network_state", recording_state)
        run_pdd(config_from_dict({**copy.deepcopy(RUN), "output_dir": str(out)}), Accelerator(cpu=True))
    return out, drawn


def test_the_card_states_the_budget_the_source_and_what_pdd_measured(retrained_run):
    from pdd_hub.evidence import measured_gain

    card = " ".join((retrained_run[0] / "dataset" / "README.md").read_text().split())
    assert "Distillation budget: 4, 4, 4 image updates per stage (`per_stage` budget)" in card
    assert "the networks of the loss from stage 2 on: `retrained`" in card and measured_gain("dm") in card


def test_retrained_networks_are_distinct_per_pool_and_come_from_the_pools(retrained_run):
    out, drawn = retrained_run
    for stage in (2, 3):
        pools = [
            load_file(str(out / "loss_networks" / f"stage_{stage}" / f"pool_{r:04d}.safetensors"))["states"]
            for r in (0, 1)
        ]
        assert all_distinct([*pools[0], *pools[1]])
        for _, draw, state in [d for d in drawn if d[0] == stage]:
            assert any(torch.equal(state, row) for row in pools[draw // 2])


def test_retrained_networks_are_fresh_inits_trained_on_the_earlier_stages_only(retrained_run):
    out, _ = retrained_run
    pdd = load_pdd(out / "dataset")
    augmentation = recipe_augmentation(pdd.schedule.training)
    for stage, refresh, j in ((2, 1, 0), (3, 0, 1)):
        name = ("loss_networks", stage, refresh, j)
        network = build_network("convnet_d1", 10, (1, 8, 8), seed=stream_seed(0, *name))
        plans = plan_stages(pdd, epochs_per_stage=RUN["transition"]["syn_epochs"])[: stage - 1]
        train_many([network], plans, generators=[stream(0, *name)], augmentation=augmentation)
        pool = load_file(str(out / "loss_networks" / f"stage_{stage}" / f"pool_{refresh:04d}.safetensors"))
        assert torch.equal(flat_params(network), pool["states"][j])


def test_a_killed_run_with_retrained_networks_resumes_to_the_uninterrupted_result(tmp_path, retrained_run):
    out, _ = retrained_run
    from pdd_hub.registry import METHODS

    dm = METHODS.get("dm").cls
    calls, real_loss = {"n": 0}, dm.loss

    def dying_loss(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 11:  # stage 3, iteration 3: after its checkpoint at 2, inside pool 1
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    config = config_from_dict({**copy.deepcopy(RUN), "output_dir": str(tmp_path / "killed")})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dm, "loss", dying_loss)
        with pytest.raises(KeyboardInterrupt):
            run_pdd(config, Accelerator(cpu=True))
    run_pdd(config, Accelerator(cpu=True))
    resumed, straight = load_pdd(tmp_path / "killed" / "dataset"), load_pdd(out / "dataset")
    for a, b in zip(resumed.stages, straight.stages, strict=True):
        assert torch.equal(a.images, b.images)


def test_each_method_ships_the_loss_network_source_its_ablation_rows_chose():
    from pdd_hub.config import load_config, resolve_config

    defaults = {
        m: config_from_dict({"method": m}).method_config.networks.source for m in ("dm", "dsa", "dc", "idc")
    }
    assert defaults == {"dm": "random", "dsa": "random", "dc": "random", "idc": "start_states"}
    dsa_dm = ("cifar10_dsa_cpu", "cifar10_dsa_ipc10", "quickstart_dsa", "cifar10_dm_cpu", "quickstart_dm")
    for name in (*dsa_dm, "cifar10_dc_cpu", "cifar10_dc_ipc10", "quickstart_dc"):
        assert load_config(resolve_config(name)).method_config.networks.source == "random", name
