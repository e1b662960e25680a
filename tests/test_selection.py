"""Selection baselines: herding and k-center against brute force, sensitivity probabilities, importance
sampling of real batches, the staged export of a selection, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from pdd_hub.config import ImportanceConfig
from pdd_hub.data.images import ImageSet
from pdd_hub.errors import DatasetFormatError, UnknownNameError
from pdd_hub.methods.sampling import RealSampler, importance_probabilities
from pdd_hub.selection.herding import herding_order
from pdd_hub.selection.kcenter import kcenter_order
from pdd_hub.selection.select import build_selector
from pdd_hub.selection.sensitivity import sensitivity_probabilities


def toy_features(n: int = 40, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double()


def test_herding_equals_brute_force():
    features = toy_features()
    mean = [sum(features[i][j].item() for i in range(len(features))) / len(features) for j in range(5)]
    chosen, total = [], [0.0] * 5
    for t in range(8):
        best, best_distance = None, math.inf
        for i in range(len(features)):
            if i in chosen:
                continue
            distance = sum((mean[j] - (total[j] + features[i][j].item()) / (t + 1)) ** 2 for j in range(5))
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
        total = [total[j] + features[best][j].item() for j in range(5)]
    assert herding_order(features, 8).tolist() == chosen


def test_kcenter_equals_brute_force():
    features = toy_features(seed=1)

    def distance(a: int, b: int) -> float:
        return sum((features[a][j].item() - features[b][j].item()) ** 2 for j in range(5))

    chosen = [7]
    for _ in range(9):
        nearest = {i: min(distance(i, c) for c in chosen) for i in range(len(features))}
        chosen.append(max(nearest, key=lambda i: (nearest[i], -i)))
    assert kcenter_order(features, 10, first=7).tolist() == chosen


def blobs() -> torch.Tensor:
    """Two tight, far-apart clusters; in the first, one point (index 0) lies far from the rest."""
    g = torch.Generator().manual_seed(0)
    first = torch.randn(20, 2, generator=g) * 0.1
    first[0] = torch.tensor([3.0, 0.0])
    second = torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([100.0, 100.0])
    return torch.cat([first, second]).double()


def test_sensitivity_probabilities_follow_the_bound_and_favour_the_isolated_point():
    features = blobs()
    p = sensitivity_probabilities(features, clusters=2, seed=0)
    assert p.sum().item() == pytest.approx(1.0) and (p > 0).all()
    # the bound by hand for the known clusters: share of the cluster's cost + 1 / cluster size
    bound = torch.zeros(len(features), dtype=torch.float64)
    for members in (torch.arange(20), torch.arange(20, 50)):
        centre = features[members].mean(0)
        cost = ((features[members] - centre) ** 2).sum(1)
        bound[members] = cost / cost.sum() + 1.0 / len(members)
    torch.testing.assert_close(p, bound / bound.sum())
    assert p[0] > 5 * p[1:20].max() and p[0] == p.max()


def test_sampling_by_sensitivity_draws_the_isolated_point_first_most_often():
    from pdd_hub.selection.base import ClassPool

    selector = build_selector("sensitivity", {"clusters": 2})
    pool = ClassPool(0, torch.arange(50), features_of=lambda idx: blobs()[idx], scores_of=lambda idx: None)
    firsts = [int(selector.rank(pool, 3, torch.Generator().manual_seed(s))[0]) for s in range(40)]
    assert firsts.count(0) > 10  # uniform sampling would give it about 1 in 50


def test_too_many_clusters_for_a_class_is_a_clear_error():
    with pytest.raises(DatasetFormatError, match="cannot make 60 k-means clusters of 50 examples"):
        sensitivity_probabilities(blobs(), clusters=60, seed=0)


def test_importance_sampling_prefers_high_loss_and_never_excludes():
    losses = torch.tensor([0.0, 0.1, 1.0, 5.0])
    p = importance_probabilities(losses, floor=0.1)
    assert p.sum().item() == pytest.approx(1.0) and (p > 0).all() and p[3] > p[2] > p[1] > p[0]
    real = ImageSet(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), ["a"])
    sampler = RealSampler(real, torch.arange(4), "importance", ImportanceConfig(floor=0.1))
    sampler.probabilities = p
    g = torch.Generator().manual_seed(0)
    draws = [sampler.class_batch(0, 1, g).indices for _ in range(2000)]
    counts = torch.bincount(torch.cat(draws), minlength=4)
    assert counts[3] > counts[2] > counts[1] and counts[0] > 0


def test_unknown_selection_method_lists_the_registered():
    with pytest.raises(
        UnknownNameError, match="did you mean 'kcenter'.*forgetting, herding, kcenter, random"
    ):
        build_selector("kcentre")
    with pytest.raises(ValueError, match="takes no settings"):
        build_selector("herding", {"clusters": 3})


@pytest.mark.parametrize("method", ["herding", "kcenter", "sensitivity", "forgetting", "unforgettable"])
def test_a_staged_selection_round_trips_through_load_dataset_and_load_pdd(method, tmp_path, digits):
    import datasets

    from pdd_hub.config import ScoringConfig
    from pdd_hub.data import Preprocess
    from pdd_hub.hub import load_pdd
    from pdd_hub.selection.select import Selection, select_and_export

    preprocess = Preprocess.fit(digits.train.images)
    options = {"clusters": 3} if method == "sensitivity" else {}
    out = select_and_export(
        tmp_path / method,
        digits,
        preprocess,
        Selection(method, num_stages=2, ipc=3, options=options),
        scoring=ScoringConfig(runs=2, epochs=2, batch_size=64),
        progress=False,
    )
    splits = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(splits) == ["stage_1", "stage_2"] and len(splits["stage_2"]) == 30
    pdd = load_pdd(out)
    assert pdd.schedule.method == method and pdd.schedule.config["selection"]["method"] == method
    real = preprocess(digits.train.images)
    picked = []
    for stage in pdd.stages:
        assert torch.bincount(stage.labels, minlength=10).tolist() == [3] * 10
        for image in stage.images:
            match = torch.nonzero((real == image).flatten(1).all(1)).flatten()
            assert len(match) >= 1
            picked.append(int(match[0]))
    assert len(set(picked)) == len(picked)  # the stages are disjoint blocks of the ranking


def skewed_sampler(weighting: str) -> tuple[RealSampler, torch.Tensor]:
    """A class of 5 examples whose values rise with their importance probability."""
    values = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    real = ImageSet(torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), ["a"])
    sampler = RealSampler(real, torch.arange(5), "importance", ImportanceConfig(weighting=weighting))
    sampler.probabilities = importance_probabilities(torch.tensor([0.1, 0.2, 0.5, 1.0, 4.0]), floor=0.1)
    return sampler, values


def test_weighted_importance_sampling_is_an_unbiased_class_mean():
    sampler, values = skewed_sampler("unbiased")
    q = sampler.probabilities / sampler.probabilities.sum()
    g = torch.Generator().manual_seed(0)
    batch = sampler.class_batch(0, 4, g)
    # each drawn example is weighted 1 / (n q_i) ...
    torch.testing.assert_close(batch.weights.double(), 1 / (5 * q[batch.indices]))
    # ... so the estimator's expectation, summed over every possible draw, is the plain class mean
    exact = sum(q[i] * (1 / (5 * q[i])) * values[i].double() for i in range(5))
    torch.testing.assert_close(exact, values.double().mean(0))
    # and the sampler's own estimates average to it
    estimates = torch.stack(
        [b.mean(values[b.indices]) for b in (sampler.class_batch(0, 8, g) for _ in range(4000))]
    )
    spread = estimates.std() / 4000**0.5
    assert abs(estimates.mean() - values.mean()) < 4 * spread


def test_unweighted_importance_sampling_moves_the_mean_towards_high_loss():
    sampler, values = skewed_sampler("none")
    g = torch.Generator().manual_seed(0)
    batches = [sampler.class_batch(0, 2, g) for _ in range(2000)]
    assert all(b.weights is None and len(set(b.indices.tolist())) == 2 for b in batches)
    estimate = torch.stack([b.mean(values[b.indices]) for b in batches]).mean()
    assert estimate > values.mean() + 1.0  # biased towards the high-loss, high-value example


def fixed_pool(scores: list[float], learned: list[float], features: torch.Tensor | None = None):
    from pdd_hub.selection.base import ClassPool

    n = len(scores)
    return ClassPool(
        0,
        torch.arange(n),
        features_of=lambda idx: (features if features is not None else torch.randn(n, 2))[idx],
        scores_of=lambda idx: torch.tensor(scores)[idx],
        learned_of=lambda idx: torch.tensor(learned)[idx],
    )


def test_forgetting_ranks_never_learned_examples_last():
    pool = fixed_pool([5.0, 3.0, 1.0, 0.0, 5.0], [0.0, 1.0, 1.0, 1.0, 0.5])
    ranked = build_selector("forgetting").rank(pool, 5, torch.Generator().manual_seed(0))
    assert ranked.tolist() == [1, 2, 3, 4, 0]  # most forgotten learned ones first, then by share learned


def test_unforgettable_ranks_the_least_forgotten_learned_examples_first_ties_at_random():
    scores = [5.0, 3.0, 1.0, 0.0, 0.0, 1.0, 0.0, 2.0]
    learned = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0]
    pool = fixed_pool(scores, learned)
    orders = set()
    for seed in range(20):
        ranked = build_selector("unforgettable").rank(pool, 8, torch.Generator().manual_seed(seed)).tolist()
        # brute force: among the learned, by score; then the partly learned, then the never learned
        key = [(-learned[i], scores[i]) for i in ranked]
        assert key == sorted(key)
        orders.add(tuple(ranked[1:3]))
    assert orders == {(2, 5), (5, 2)}  # the tie at score 1 is broken at random
    top = build_selector("unforgettable").rank(pool, 2, torch.Generator().manual_seed(0)).tolist()
    assert top[0] == 3 and top[1] in (2, 5)


def test_sensitivity_on_a_class_smaller_than_its_clusters_uses_fewer_clusters(caplog):
    pool = fixed_pool(
        [0.0] * 4, [1.0] * 4, features=torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    )
    with caplog.at_level("WARNING"):
        ranked = build_selector("sensitivity", {"clusters": 10}).rank(
            pool, 3, torch.Generator().manual_seed(0)
        )
    assert len(set(ranked.tolist())) == 3
    assert "fewer than sensitivity.clusters = 10: using 4 k-means clusters" in caplog.text
