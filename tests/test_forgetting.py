"""Forgetting scores as Toneva et al. define them, and PDD's forgetting bands (section 4.2)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from accelerate import Accelerator

from pdd_hub.config import config_from_dict
from pdd_hub.errors import DatasetFormatError
from pdd_hub.forgetting import load_forgetting_scores
from pdd_hub.hub import load_pdd
from pdd_hub.methods.experts import ForgettingCounts
from pdd_hub.progressive import run_pdd
from pdd_hub.scoring import forgetting_scores
from tests.test_pdd import TINY


def test_scores_from_a_hand_made_history_of_presentations():
    # examples: 0 forgotten once in run 0 and never in run 1; 1 learned by run 0 only; 2 never learned;
    # 3 always right; 4 forgotten twice in run 1
    history = [  # runs x presentations x examples: correct?
        [[1, 1, 0, 1, 0], [0, 1, 0, 1, 0], [1, 0, 0, 1, 0]],
        [[0, 0, 0, 1, 1], [1, 0, 0, 1, 0], [1, 0, 0, 1, 1], [1, 0, 0, 1, 0]],
    ]
    counts = []
    for run in history:
        c = ForgettingCounts(1, 5, torch.device("cpu"))
        for presentation in run:
            c.update(torch.arange(5)[None], torch.tensor(presentation, dtype=torch.bool)[None])
        counts.append(c)
    events = torch.cat([c.events for c in counts]).long()
    learned = torch.cat([c.ever_learned for c in counts])
    assert events.tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 2]]
    assert learned.tolist() == [[True, True, False, True, False], [True, False, False, True, True]]
    scores = forgetting_scores(events, learned)
    # run 0: never-learned 2 and 4 get its max (1); run 1: never-learned 1 and 2 get its max (2)
    expected = torch.tensor(
        [(1 + 0) / 2, (1 + 2) / 2, (1 + 2) / 2, (0 + 0) / 2, (1 + 2) / 2], dtype=torch.float64
    )
    torch.testing.assert_close(scores, expected)
    # one run learning an example does not make it the easiest: the never-learned rank with the hardest
    assert scores[2] >= scores[1] > scores[0] > scores[3]
    # the scale is per run: the same history twice gives the same scores
    torch.testing.assert_close(forgetting_scores(events.repeat(2, 1), learned.repeat(2, 1)), scores)


def banded_run(tmp_path, mode: str, band_width: float = 0.5, **changes):
    data = copy.deepcopy(TINY)
    data.update(
        output_dir=str(tmp_path / mode),
        forgetting={"mode": mode, "band_width": band_width},
        scoring={"runs": 2, "epochs": 3, "batch_size": 64},
        **changes,
    )
    config = config_from_dict(data)
    run_pdd(config, Accelerator(cpu=True))
    return config, tmp_path / mode


@pytest.fixture(scope="module")
def band_run(tmp_path_factory):
    return banded_run(tmp_path_factory.mktemp("band"), "band")


def test_stage_1_learns_from_the_lowest_band_and_stage_2_from_the_rest(band_run):
    _, out = band_run
    scores = load_forgetting_scores(out)
    assert scores.column_names == ["row", "label", "forgetting_score"]
    values = torch.tensor(scores["forgetting_score"])
    pdd = load_pdd(out / "dataset")
    pools = [spec.real_pool for spec in pdd.schedule.stages]
    assert pools[0]["forgetting_scores"] == [0.0, 0.5] and pools[1]["forgetting_scores"] == [0.5, None]
    for stage, pool in enumerate(pools, start=1):
        low, high = pool["forgetting_scores"]
        in_band = (values >= low) & (values < (high if high is not None else float("inf")))
        labels = torch.tensor(scores["label"])
        expected = [
            int((labels == c).sum()) if c in pool["widened_classes"] else int((in_band & (labels == c)).sum())
            for c in range(10)
        ]
        assert pool["per_class"] == expected
        record = json.loads((out / "stages" / f"stage_{stage}.json").read_text())
        chosen = torch.tensor(record["init_indices"])
        # the new images started from the stage's own pool (or, for a widened class, its whole class)
        ok = in_band[chosen] | torch.isin(
            labels[chosen], torch.tensor(pool["widened_classes"], dtype=torch.long)
        )
        assert ok.all()
    first = set(json.loads((out / "stages" / "stage_1.json").read_text())["init_indices"])
    second = set(json.loads((out / "stages" / "stage_2.json").read_text())["init_indices"])
    assert not first & second  # no image is picked twice


def test_drop_easy_keeps_every_example_for_stage_1(tmp_path):
    _, out = banded_run(tmp_path, "drop_easy", num_stages=2)
    pools = [spec.real_pool for spec in load_pdd(out / "dataset").schedule.stages]
    assert pools[0]["forgetting_scores"] == [0.0, None] and pools[0]["examples"] == len(
        load_forgetting_scores(out)
    )
    assert pools[1]["forgetting_scores"] == [0.5, None]


def test_a_thin_band_says_which_class_it_widens(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _, out = banded_run(tmp_path, "band", band_width=100)  # nothing is forgotten 100 times
    assert "stage 2: the forgetting band [100, inf) holds 0 examples of class 0 ('0')" in caplog.text
    assert "this stage learns class 0 from all its" in caplog.text
    assert load_pdd(out / "dataset").schedule.stages[1].real_pool["widened_classes"] == list(range(10))


def test_scores_from_a_run_that_recorded_none(tmp_path):
    with pytest.raises(DatasetFormatError, match="recorded no forgetting scores"):
        load_forgetting_scores(tmp_path)
