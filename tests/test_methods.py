"""Each base method's loss against a brute-force computation on a tiny network, the siamese property of
the augmented methods, the loop structure of the gradient-matching methods, IDC's multi-formation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from pdd_hub.config import config_from_dict
from pdd_hub.data.images import ImageSet
from pdd_hub.data.transforms import Preprocess
from pdd_hub.methods import build_distiller
from pdd_hub.methods.base import StageContext
from pdd_hub.params import build_network, flat_params, network_from
from pdd_hub.run import RunLayout
from pdd_hub.runtime import TrainingRuntime

CLASSES, PER_CLASS, SHAPE = 3, 6, (1, 8, 8)


def make(method: str, tmp_path, *, start_states_stage: int = 2, **section):
    """A method on a tiny problem: 3 classes of 6 random 1x8x8 real images, ConvNet-D1, one start state."""
    config = config_from_dict({"method": method, "model": "convnet_d1", "ipc_per_stage": 2, method: section})
    distiller = build_distiller(config, CLASSES, SHAPE)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    real = ImageSet(torch.randn(len(labels), *SHAPE, generator=g), labels, [f"c{i}" for i in range(CLASSES)])
    ctx = StageContext(
        stage=start_states_stage,
        num_stages=2,
        ipc=2,
        real=real,
        pool=torch.arange(len(labels)),
        start_states=flat_params(build_network("convnet_d1", CLASSES, SHAPE, seed=1))[None],
        start_states_stage=start_states_stage,
        model_name="convnet_d1",
        augment=None,
        accelerator=Accelerator(cpu=True),
        layout=RunLayout(tmp_path),
        runtime=TrainingRuntime(seed=0),
        generator=torch.Generator().manual_seed(0),
    )
    distiller.begin_stage(ctx)
    return distiller, ctx


def synthetic(n_per_class: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(n_per_class)
    return torch.randn(len(labels), *SHAPE, generator=g).requires_grad_(True), labels


def start_network(ctx: StageContext) -> torch.nn.Module:
    return network_from("convnet_d1", CLASSES, SHAPE, ctx.start_states[0])


def per_tensor_gradients(network, x, y) -> list[torch.Tensor]:
    loss = F.cross_entropy(network(x), y)
    return list(torch.autograd.grad(loss, list(network.parameters()), create_graph=True))


def brute_dc_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """DC's layer-wise distance written out row by row."""
    if real.ndim == 1:
        return torch.zeros(())
    total = torch.zeros(())
    for row in range(real.shape[0]):
        a, b = real[row].flatten(), syn[row].flatten()
        total = (
            total + 1 - torch.dot(a, b) / (torch.sqrt(torch.dot(a, a)) * torch.sqrt(torch.dot(b, b)) + 1e-6)
        )
    return total


def brute_gradient_matching(ctx, images, labels, distance, keep) -> torch.Tensor:
    """sum over classes of distance(real gradient, synthetic gradient) over the kept parameters, with
    the whole class as the real batch (the batch mean is independent of the order)."""
    network = start_network(ctx)
    total = torch.zeros(())
    for c in range(CLASSES):
        real_c = ctx.real.images[ctx.real.labels == c]
        g_real = per_tensor_gradients(network, real_c, torch.full((len(real_c),), c))
        g_syn = per_tensor_gradients(network, images[labels == c], labels[labels == c])
        for name_param, gr, gs in zip(network.named_parameters(), g_real, g_syn):
            if keep(name_param[1]):
                total = total + distance(gr.detach(), gs)
    return total


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_dc_and_dsa_loss_equals_the_brute_force_layerwise_distance(method, tmp_path):
    distiller, ctx = make(method, tmp_path, batch_real=PER_CLASS, augment="none", metric="dc")
    images, labels = synthetic(2)
    loss = distiller.loss(images, labels)
    reference = brute_gradient_matching(ctx, images, labels, brute_dc_distance, keep=lambda p: True)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, images)
    (ref_grad,) = torch.autograd.grad(reference, images)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad.abs().sum() > 0


def test_idc_loss_is_the_mse_of_conv_weight_gradients_on_decoded_images(tmp_path):
    distiller, ctx = make("idc", tmp_path, batch_real=PER_CLASS, max_syn=1000, augment="none", factor=2)
    stored, labels = synthetic(1)
    decoded, decoded_labels = distiller.decode(stored), distiller.decode_labels(labels)
    assert decoded.shape == (CLASSES * 4, *SHAPE)
    loss = distiller.loss(decoded, decoded_labels)

    def mse(a, b):
        return (a - b).pow(2).sum()

    reference = brute_gradient_matching(ctx, decoded, decoded_labels, mse, keep=lambda p: p.ndim == 4)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, stored)
    (ref_grad,) = torch.autograd.grad(reference, stored)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_idc_steps_normalised_images_as_the_official_code_steps_pixels(tmp_path):
    """IDC's lr_img is in [0, 1] pixels (its images live there); pdd-hub's live in (x - mean) / std. An
    SGD step on pdd-hub's gradient must move the images as the step of the same lr on the pixels does."""
    distiller, ctx = make("idc", tmp_path, batch_real=PER_CLASS, max_syn=1000, augment="none", factor=2)
    mean, std = 0.4, 0.25
    ctx.preprocess = Preprocess(torch.tensor([mean]), torch.tensor([std]))
    distiller.begin_stage(ctx)
    stored, labels = synthetic(1)
    decoded_labels = distiller.decode_labels(labels)
    loss = distiller.loss(distiller.decode(stored), decoded_labels)
    (grad,) = torch.autograd.grad(loss, stored)

    pixels = (stored.detach() * std + mean).requires_grad_(True)  # the official code's parameter
    decoded = distiller.decode((pixels - mean) / std)

    def mse(a, b):
        return (a - b).pow(2).sum()

    reference = brute_gradient_matching(ctx, decoded, decoded_labels, mse, keep=lambda p: p.ndim == 4)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    (pixel_grad,) = torch.autograd.grad(reference, pixels)
    lr = 5e-3
    stepped, stepped_pixels = stored.detach() - lr * grad, pixels.detach() - lr * pixel_grad
    torch.testing.assert_close(stepped * std + mean, stepped_pixels, rtol=1e-5, atol=1e-7)
    assert (stepped - stored).abs().max() > 1e-4  # the step is not negligible


def test_dm_loss_is_the_squared_distance_of_class_mean_embeddings(tmp_path):
    distiller, ctx = make("dm", tmp_path, batch_real=PER_CLASS, augment="none")
    images, labels = synthetic(2)
    loss = distiller.loss(images, labels)
    network = start_network(ctx)
    reference = torch.zeros(())
    for c in range(CLASSES):
        real_mean = network.features(ctx.real.images[ctx.real.labels == c]).flatten(1).mean(0)
        syn_mean = network.features(images[labels == c]).flatten(1).mean(0)
        reference = reference + sum((real_mean[i] - syn_mean[i]) ** 2 for i in range(len(real_mean)))
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, images)
    (ref_grad,) = torch.autograd.grad(reference, images)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method,metric", [("dsa", "mse"), ("dm", None), ("idc", "mse")])
def test_siamese_augmentation_gives_both_sides_the_same_draw(method, metric, tmp_path):
    """Synthetic images equal to the real ones: with one augmentation draw for both sides the loss
    vanishes whatever is drawn; with independent draws it would not."""
    section = {"batch_real": PER_CLASS, "augment": "dsa", **({"metric": metric} if metric else {})}
    if method == "idc":
        section.update(factor=1, max_syn=1000, augment="dsa_all:color_crop_cutout")
    distiller, ctx = make(method, tmp_path, **section)
    images = ctx.real.images.clone().requires_grad_(True)
    labels = ctx.real.labels.clone()
    for _ in range(4):  # several draws of the transform
        if method == "idc":
            distiller.step_in_network = 0  # a fresh network each time, no training on real data between
        loss = distiller.loss(images, labels)
        assert loss.item() < 1e-8, loss.item()
    different = distiller.loss(torch.randn_like(images), labels)
    assert different.item() > 1e-3


def test_dc_alternates_image_updates_and_network_training(tmp_path):
    distiller, ctx = make("dc", tmp_path, outer_loop=2, inner_loop=3, batch_real=PER_CLASS)
    images, labels = synthetic(2)
    distiller.loss(images, labels)
    after_first = flat_params(distiller.network)
    assert torch.equal(after_first, ctx.start_states[0]) and distiller.draws == 1
    distiller.loss(images, labels)  # second comparison: the network first trains on the synthetic set
    assert not torch.equal(flat_params(distiller.network), after_first) and distiller.draws == 1
    distiller.loss(images, labels)  # outer loop done: a new network
    assert distiller.draws == 2 and torch.equal(flat_params(distiller.network), ctx.start_states[0])


def test_idc_trains_its_network_on_real_data_between_comparisons(tmp_path):
    distiller, _ = make("idc", tmp_path, inner_loop=2, n_data=12, net_batch=6)
    stored, labels = synthetic(1)
    decoded, decoded_labels = distiller.decode(stored), distiller.decode_labels(labels)
    distiller.loss(decoded, decoded_labels)
    before = flat_params(distiller.network)
    state = distiller.state_dict()
    distiller.loss(decoded, decoded_labels)
    assert not torch.equal(flat_params(distiller.network), before)
    assert "net_momentum" in distiller.state_dict()  # the real-data SGD has momentum to resume
    distiller.load_state_dict(state)
    assert torch.equal(flat_params(distiller.network), before) and distiller.step_in_network == 1


def test_stage_1_networks_are_fresh_initialisations_later_ones_start_states(tmp_path):
    _, ctx_1 = make("dm", tmp_path, start_states_stage=1)
    states = {tuple(ctx_1.network_state(d)[:5].tolist()) for d in range(4)}
    assert len(states) == 4  # a new random network for every draw
    assert torch.equal(ctx_1.network_state(2), ctx_1.network_state(2))  # and reproducible
    _, ctx_2 = make("dm", tmp_path, start_states_stage=2)
    assert all(torch.equal(ctx_2.network_state(d), ctx_2.start_states[0]) for d in range(4))


# --- IDC's multi-formation -------------------------------------------------------------------------
def test_idc_decode_cuts_tiles_and_upsamples_each(tmp_path):
    distiller, _ = make("idc", tmp_path, factor=2)
    stored = torch.randn(3, 2, 8, 8)
    decoded = distiller.decode(stored)
    expected = []
    for image in stored:  # image-major: the tiles of image 0, then of image 1, ...
        for i in range(2):
            for j in range(2):
                tile = image[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4][None]
                expected.append(F.interpolate(tile, size=(8, 8), mode="bilinear", align_corners=False)[0])
    torch.testing.assert_close(decoded, torch.stack(expected), rtol=0, atol=0)
    assert distiller.decode_labels(torch.tensor([0, 1, 2])).tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_idc_encode_packs_downsampled_real_images_into_tiles(tmp_path):
    distiller, _ = make("idc", tmp_path, factor=2)
    real = torch.randn(8, 1, 8, 8)
    stored = distiller.encode(real)
    assert stored.shape == (2, 1, 8, 8)
    small = F.interpolate(real, size=(4, 4), mode="nearest")
    assert torch.equal(stored[1, :, :4, 4:], small[5]) and torch.equal(stored[0, :, 4:, :4], small[2])
    # decoding what was encoded upsamples the downsampled real images, exactly
    upsampled = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(distiller.decode(stored), upsampled, rtol=0, atol=0)
