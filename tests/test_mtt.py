"""MTT pieces in isolation: expert trajectories, the functional unroll, the learned LR, batches."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from pdd_hub.augment import DSA
from pdd_hub.config import ExpertConfig, PDDConfig
from pdd_hub.data.images import ImageSet
from pdd_hub.methods.experts import ExpertSet, ExpertTraining, train_experts
from pdd_hub.methods.mtt import MTT, MTTConfig
from pdd_hub.params import build_network, flat_params, load_flat_params, unflatten
from pdd_hub.runtime import TrainingRuntime


def toy_data(n: int = 60, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    means = torch.randn(classes, 1, 8, 8, generator=g)
    return means[labels] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), labels


def toy_set() -> ImageSet:
    return ImageSet(*toy_data(), class_names=["a", "b", "c"])


def test_flat_params_is_a_copy_not_a_view_of_the_live_weights():
    model = build_network("convnet_d1", 3, (1, 8, 8), seed=0)
    before = flat_params(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not torch.equal(before, flat_params(model))
    load_flat_params(model, before)
    assert torch.equal(before, flat_params(model))


def test_expert_epochs_differ_and_start_from_the_given_state(tmp_path):
    start = flat_params(build_network("convnet_d1", 3, (1, 8, 8), seed=5)).unsqueeze(0)
    recipe = ExpertConfig(epochs=4, batch_size=16, lr=0.05).recipe()
    training = ExpertTraining(recipe, DSA(), track_forgetting=True)
    experts = train_experts(
        tmp_path / "experts",
        toy_set(),
        start,
        training,
        model_name="convnet_d1",
        accelerator=Accelerator(cpu=True),
    )
    traj = experts.trajectory(0)
    assert traj.shape == (5, start.shape[1])
    assert torch.equal(traj[0], start[0])
    for a in range(5):
        for b in range(a + 1, 5):
            assert not torch.equal(traj[a], traj[b]), f"epochs {a} and {b} are identical"
    assert torch.equal(experts.trajectory(0, upto=2), traj[:3])
    manifest = ExpertSet.load(tmp_path / "experts").manifest
    assert manifest["num_experts"] == 1 and manifest["epochs"] == 4
    events, learned = experts.forgetting_events()
    assert events.shape == learned.shape == (1, 60) and events.dtype == torch.long and (events >= 0).all()


def train_toy_experts(directory, batched: bool = False, count: int = 2):
    starts = torch.stack(
        [flat_params(build_network("convnet_d1", 3, (1, 8, 8), seed=s)) for s in range(count)]
    )
    recipe = ExpertConfig(epochs=5, batch_size=16, lr=0.05, momentum=0.9).recipe()  # momentum: it resumes too
    runtime = TrainingRuntime(batched=batched, seed=3)
    training = ExpertTraining(recipe, DSA(), track_forgetting=True, runtime=runtime)
    return train_experts(
        directory, toy_set(), starts, training, model_name="convnet_d1", accelerator=Accelerator(cpu=True)
    )


@pytest.mark.parametrize("batched", [False, True])
def test_interrupted_experts_resume_to_the_same_trajectories(tmp_path, monkeypatch, batched):
    import pdd_hub.methods.experts as experts_mod

    straight = train_toy_experts(tmp_path / "straight", batched)
    real_save = experts_mod.save_tensors
    calls = {"n": 0}

    def flaky_save(tensors, path, metadata=None):
        real_save(tensors, path, metadata)
        if path.name == "state.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:  # after the second epoch of the first (or only) group
                raise KeyboardInterrupt

    monkeypatch.setattr(experts_mod, "save_tensors", flaky_save)
    with contextlib.suppress(KeyboardInterrupt):
        train_toy_experts(tmp_path / "killed", batched)
    monkeypatch.undo()
    assert (
        list((tmp_path / "killed").glob("*.partial")) and not (tmp_path / "killed" / "manifest.json").exists()
    )
    resumed = train_toy_experts(tmp_path / "killed", batched)
    assert not list((tmp_path / "killed").glob("*.partial"))
    for i in range(2):
        assert torch.equal(resumed.trajectory(i), straight.trajectory(i))
    for a, b in zip(resumed.forgetting_events(), straight.forgetting_events(), strict=True):
        assert torch.equal(a, b)


def test_experts_trained_together_follow_the_path_each_follows_alone(tmp_path):
    alone = train_toy_experts(tmp_path / "alone", batched=False, count=3)
    together = train_toy_experts(tmp_path / "together", batched=True, count=3)
    for i in range(3):
        torch.testing.assert_close(together.trajectory(i), alone.trajectory(i), rtol=1e-4, atol=1e-5)
        assert not torch.equal(alone.trajectory(i)[0], alone.trajectory(i)[-1])


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny_mtt(syn_steps: int = 3, batch_syn: int = 2) -> MTT:
    config = MTTConfig(
        syn_steps=syn_steps, batch_syn=batch_syn, expert_epochs=1, max_start_epoch=1, lr_init=0.3
    )
    mtt = MTT(config, PDDConfig(), num_classes=3, image_shape=(1, 2, 2))
    mtt.match([torch.randn(2, 15)], TinyNet(), augment=None, generator=torch.Generator(), batch_syn=batch_syn)
    return mtt


def test_functional_unroll_matches_an_explicit_autograd_reference():
    torch.manual_seed(0)
    mtt = tiny_mtt()
    images = torch.randn(6, 1, 2, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    start = torch.randn(4 * 3 + 3)
    target = torch.randn(4 * 3 + 3)

    mtt.generator = torch.Generator().manual_seed(7)
    student = mtt.unroll(images, labels, start)
    loss = (student - target).pow(2).sum() / (start - target).pow(2).sum()
    grad_images, grad_lr = torch.autograd.grad(loss, [images, mtt.syn_lr])

    # reference: the same unroll written out with explicit weight and bias tensors
    mtt.generator = torch.Generator().manual_seed(7)
    batches = mtt.student_batches(6)
    w = start[:12].view(3, 4).clone().requires_grad_(True)
    b = start[12:].clone().requires_grad_(True)
    ww, bb = w, b
    for idx in batches:
        logits = images[idx].flatten(1) @ ww.T + bb
        gw, gb = torch.autograd.grad(F.cross_entropy(logits, labels[idx]), [ww, bb], create_graph=True)
        ww, bb = ww - mtt.syn_lr * gw, bb - mtt.syn_lr * gb
    ref_student = torch.cat([ww.flatten(), bb])
    ref_loss = (ref_student - target).pow(2).sum() / (start - target).pow(2).sum()
    ref_images, ref_lr = torch.autograd.grad(ref_loss, [images, mtt.syn_lr])

    torch.testing.assert_close(student, ref_student)
    torch.testing.assert_close(grad_images, ref_images)
    torch.testing.assert_close(grad_lr, ref_lr)
    assert grad_images.abs().sum() > 0


def test_student_batches_cover_the_whole_union():
    mtt = tiny_mtt(syn_steps=10, batch_syn=4)
    mtt.generator = torch.Generator().manual_seed(0)
    batches = mtt.student_batches(12)  # e.g. 8 frozen images from earlier stages + 4 new ones
    seen = torch.cat(batches[:3])
    assert sorted(seen.tolist()) == list(range(12))  # one permutation of the union per 3 steps
    assert all(len(b) == 4 for b in batches) and len(batches) == 10


def test_unroll_uses_earlier_stage_images():
    mtt = tiny_mtt(syn_steps=6, batch_syn=2)
    mtt.generator = torch.Generator().manual_seed(1)
    frozen = torch.randn(3, 1, 2, 2, requires_grad=True)  # a leaf only so the test can see its gradient
    new = torch.randn(3, 1, 2, 2, requires_grad=True)
    student = mtt.unroll(torch.cat([frozen, new]), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(15))
    student.sum().backward()
    assert frozen.grad.abs().sum() > 0 and new.grad.abs().sum() > 0


def test_learned_lr_is_kept_positive():
    mtt = tiny_mtt()
    mtt.config.lr_min = 1e-6
    with torch.no_grad():
        mtt.syn_lr.fill_(-0.5)
    mtt.after_step(torch.zeros(1))
    assert mtt.stage_lr() == torch.tensor(1e-6).item()
    assert mtt.param_groups()[0]["params"][0] is mtt.syn_lr


def test_unflatten_views_the_flat_vector():
    model = TinyNet()
    flat = torch.arange(15, dtype=torch.float32)
    params = unflatten(model, flat)
    assert params["fc.weight"].shape == (3, 4) and params["fc.bias"].tolist() == [12.0, 13.0, 14.0]


def matching_gradients(memory: str, precision: str = "fp32") -> tuple[torch.Tensor, ...]:
    """The student's end point and the matching loss's image and LR gradients on a small problem."""
    network = build_network("convnet_d1", 3, (1, 8, 8), seed=2)
    start = flat_params(network)
    target = start + 0.05 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    images = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2] * 3)
    config = MTTConfig(
        syn_steps=6, batch_syn=4, expert_epochs=1, max_start_epoch=1, lr_init=0.05, memory=memory,
        precision=precision,
    )  # fmt: skip
    mtt = MTT(config, PDDConfig(), num_classes=3, image_shape=(1, 8, 8))
    mtt.match([start[None]], network, augment=DSA(), generator=torch.Generator().manual_seed(7), batch_syn=4)
    x = images.clone().requires_grad_(True)
    student = mtt.unroll(x, labels, start)
    loss = (student - target).pow(2).sum() / (start - target).pow(2).sum()
    return (student.detach(), *torch.autograd.grad(loss, [x, mtt.syn_lr]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_constant_memory_unroll_gives_the_gradients_of_backpropagation_through_the_unroll(precision):
    """The exact gradient in constant memory: image and LR gradients equal the unrolled ones (in bf16
    to bf16's precision: the recomputed steps round differently, by about one part in 200)."""
    unrolled, constant = matching_gradients("unrolled", precision), matching_gradients("constant", precision)
    for a, b in zip(unrolled, constant):
        if precision == "fp32":
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
        else:
            assert (a - b).abs().max() <= 1e-2 * a.abs().max()
    assert constant[1].abs().sum() > 0 and constant[2].abs() > 0


def test_bf16_unroll_follows_the_fp32_gradient():
    """bf16 autocast changes the numbers (it is really on) but not the direction of the update."""
    fp32, bf16 = matching_gradients("unrolled", "fp32"), matching_gradients("unrolled", "bf16")
    assert not torch.equal(fp32[1], bf16[1])
    assert F.cosine_similarity(fp32[1].flatten(), bf16[1].flatten(), dim=0) > 0.98
    torch.testing.assert_close(bf16[2], fp32[2], rtol=0.05, atol=0)
