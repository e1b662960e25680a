"""Networks trained together (stacked parameters under vmap) follow the path each follows alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from pdd_hub.augment import DSA, CutMix
from pdd_hub.networks import NetworkStack, can_batch, networks_accuracy
from pdd_hub.params import build_network, flat_params
from pdd_hub.runtime import TrainingRuntime
from pdd_hub.schedule import SGDRecipe
from pdd_hub.train import Augmentation, StagePlan, evaluate_accuracy, train_many


def networks(k: int = 3, model: str = "convnet_d2") -> list[torch.nn.Module]:
    return [build_network(model, 3, (1, 8, 8), seed=s) for s in range(k)]


def plans() -> list[StagePlan]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(8)
    images = torch.randn(24, 1, 8, 8, generator=g)
    return [
        StagePlan("s1", images[:12], labels[:12], SGDRecipe(lr=0.05, epochs=3, batch_size=8)),
        StagePlan(
            "s1..2",
            images,
            labels,
            SGDRecipe(lr=0.02, epochs=4, batch_size=8, lr_schedule="steps_at_2/3_5/6_x0.2"),
        ),
    ]


def train(models: list[torch.nn.Module], **kwargs) -> list[list[float]]:
    """``train_many`` through :func:`plans`, model k drawing from a generator seeded k."""
    return train_many(
        models, plans(), generators=[torch.Generator().manual_seed(s) for s in range(len(models))], **kwargs
    )


@pytest.mark.parametrize("cutmix", [None, CutMix(prob=0.5, beta=1.0)])
def test_stacked_training_equals_one_network_at_a_time(cutmix):
    test = (torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(9)), torch.arange(3).repeat(10))
    alone, together = networks(), networks()
    kwargs = {"augmentation": Augmentation(DSA(), cutmix), "test": test}
    acc_alone = train(alone, **kwargs)
    acc_together = train(together, runtime=TrainingRuntime(batched=True), **kwargs)
    start = flat_params(networks()[0])
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(flat_params(b), flat_params(a), rtol=1e-4, atol=1e-5)
        assert (flat_params(a) - start).abs().max() > 1e-2  # they did train
    for a, b in zip(acc_alone, acc_together, strict=True):
        assert b == pytest.approx(a, abs=1 / 30 + 1e-9)  # at most one test image apart
    assert len(acc_alone[0]) == 2  # tested after each stage


def test_stacked_networks_keep_their_own_parameters_and_test_each():
    models = networks(k=2)
    stack = NetworkStack.of(models)
    assert torch.equal(stack.flat(), torch.stack([flat_params(m) for m in models]))
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    assert networks_accuracy(stack, x, y, batch_size=7) == pytest.approx(
        [evaluate_accuracy(m, x, y) for m in models]
    )
    rebuilt = NetworkStack.from_flat(models[0], stack.flat())
    torch.testing.assert_close(rebuilt.on_shared(x), stack.on_shared(x))


def test_batch_norm_networks_train_one_at_a_time():
    bn = build_network("convnet_d3_bn", 3, (1, 8, 8), seed=0)
    assert not can_batch(bn) and can_batch(networks(k=1)[0])
    with pytest.raises(ValueError, match="not batchable"):
        NetworkStack.of([bn, copy.deepcopy(bn)])
    models = [bn, copy.deepcopy(bn)]
    generators = [torch.Generator(), torch.Generator()]
    train_many(models, plans()[:1], generators=generators, runtime=TrainingRuntime(batched=True))
    assert not torch.equal(
        flat_params(models[0]), flat_params(build_network("convnet_d3_bn", 3, (1, 8, 8), seed=0))
    )


def test_compiled_training_follows_the_eager_path_and_leaves_the_model_usable():
    """``compile=True`` (torch.compile, as ``compile: true`` and ``pdd-hub eval --compile`` use it)
    trains the caller's own modules to the parameters and accuracies of eager training."""
    test = (torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(9)), torch.arange(3).repeat(10))
    eager, compiled = networks(k=2), networks(k=2)
    kwargs = {"augmentation": Augmentation(DSA()), "test": test}
    torch._dynamo.reset()
    counters.clear()
    acc_eager = train(eager, **kwargs)
    acc_compiled = train(compiled, runtime=TrainingRuntime(compile=True), **kwargs)
    assert counters["stats"]["unique_graphs"] >= 2  # train and eval mode went through dynamo
    for a, b in zip(eager, compiled, strict=True):
        assert type(b) is type(a)  # the module itself trained, not a compiled wrapper
        torch.testing.assert_close(flat_params(b), flat_params(a), rtol=1e-4, atol=1e-5)
    for a, b in zip(acc_eager, acc_compiled, strict=True):
        assert b == pytest.approx(a, abs=1 / 30 + 1e-9)
