"""DSA: siamese consistency, gradient flow, reproducibility, and the geometry of each transform."""

from __future__ import annotations

import pytest
import torch

from pdd_hub.augment import ALL_TRANSFORMS, DSA, Sample, build_augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transform", ALL_TRANSFORMS)
def test_siamese_same_draws_on_batches_of_different_sizes(transform):
    dsa = DSA(transform)
    real = torch.randn(7, 3, 16, 16)
    syn = torch.cat([real[:2], torch.randn(1, 3, 16, 16)])  # shares two images with `real`
    sample = dsa.sample(batch_size=1, image_size=(16, 16), generator=gen(3), shared=True)
    out_real, out_syn = dsa.apply(real, sample), dsa.apply(syn, sample)
    assert out_real.shape == real.shape and out_syn.shape == syn.shape
    torch.testing.assert_close(out_real[:2], out_syn[:2])


@pytest.mark.parametrize("transform", ALL_TRANSFORMS)
def test_gradient_flows_to_the_input(transform):
    dsa = DSA(transform)
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    out = dsa(x, gen(1))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_seeded_and_reproducible():
    dsa = DSA()
    x = torch.randn(8, 3, 32, 32)
    for seed in range(6):
        torch.testing.assert_close(dsa(x, gen(seed)), dsa(x, gen(seed)))
    outs = {tuple(dsa(x, gen(seed)).flatten()[:50].tolist()) for seed in range(10)}
    assert len(outs) > 1


def test_single_mode_applies_one_transform_and_all_mode_applies_every_one():
    single = DSA(mode="single")
    picked = {single.sample(4, (8, 8), gen(s)).transforms for s in range(60)}
    assert all(len(t) == 1 for t in picked)
    assert {t[0] for t in picked} == set(ALL_TRANSFORMS)
    assert DSA(mode="all").sample(4, (8, 8), gen(0)).transforms == ALL_TRANSFORMS


def test_no_clamping_keeps_whitened_values():
    x = torch.randn(4, 3, 16, 16) * 5  # ZCA-whitened data is not in [0, 1]
    out = DSA("flip").apply(x, Sample(("flip",), {"flip": torch.tensor([True, False, True, False])}))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    assert out.max() > 1 and out.min() < 0


def test_crop_translates_with_zero_fill():
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    out = DSA("crop").apply(
        x, Sample(("crop",), {"crop_dy": torch.tensor([0]), "crop_dx": torch.tensor([1])})
    )
    torch.testing.assert_close(out[0, 0, :, :3], x[0, 0, :, 1:])
    assert (out[0, 0, :, 3] == 0).all()


def test_cutout_zeroes_a_square_of_half_the_side():
    x = torch.ones(1, 3, 32, 32)
    out = DSA("cutout").apply(
        x, Sample(("cutout",), {"cutout_cy": torch.tensor([16]), "cutout_cx": torch.tensor([16])})
    )
    zeroed = out[0, 0] == 0
    assert zeroed.sum() == 16 * 16
    assert zeroed[8:24, 8:24].all()


def test_color_parameters_follow_dsa_ranges():
    sample = DSA("color").sample(20000, (8, 8), gen(0))
    v = sample.values
    assert v["brightness"].min() >= -0.5 and v["brightness"].max() < 0.5
    assert v["saturation"].min() >= 0 and v["saturation"].max() < 2.0
    assert v["contrast"].min() >= 0.5 and v["contrast"].max() < 1.5


def test_scale_and_rotate_identity_parameters_leave_images_unchanged():
    x = torch.randn(2, 3, 16, 16)
    dsa = DSA("scale_rotate", mode="all")
    ident = Sample(
        ("scale", "rotate"), {"scale_x": torch.ones(2), "scale_y": torch.ones(2), "angle": torch.zeros(2)}
    )
    torch.testing.assert_close(dsa.apply(x, ident), x, atol=1e-5, rtol=1e-5)


def test_bad_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="blur"):
        DSA("color_blur")
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment("autoaugment")
    assert build_augment("none") is None
    assert build_augment("dsa:flip").transforms == ("flip",)
