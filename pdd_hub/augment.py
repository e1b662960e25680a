"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) with the parameters of the literature.

Sampling is separate from applying: :meth:`DSA.sample` draws the random parameters of one call
(from an explicit generator, on the CPU, so results do not depend on the device), and
:meth:`DSA.apply` applies them, differentiably w.r.t. the images. Siamese use (the same
augmentation on a real and a synthetic batch of different sizes, as in gradient matching) samples
once with ``shared=True`` and applies to both. No clamping: the inputs may be ZCA-whitened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ALL_TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """Strengths of each transform (the defaults of DSA/MTT's ``ParamDiffAug``)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5  # side of the cut-out square, as a fraction of the image side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass
class Sample:
    """The random draws of one augmentation call. Tensors have one row per example, or a single
    row broadcast to any batch (``shared``); ``transforms`` are applied in order."""

    transforms: tuple[str, ...]
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> Sample:
        return Sample(self.transforms, {k: v.to(device) for k, v in self.values.items()})


MODES = {"single": "dsa", "all": "dsa_all", "idc": "dsa_idc"}  # mode -> spec prefix


class DSA:
    """``strategy`` names transforms joined by ``_``. ``mode="single"`` applies one of them, chosen at
    random per call (DSA's default 'S' mode, used by DC/DSA/DM/MTT/PDD); ``mode="all"`` applies all,
    in order (IDC's augmentation during condensation); ``mode="idc"`` applies colour and flip (those
    of them in the strategy) always, then one of the others (IDC's augmentation when training)."""

    def __init__(
        self, strategy: str = DEFAULT_STRATEGY, params: DSAParams | None = None, mode: str = "single"
    ) -> None:
        names = tuple(t for t in strategy.split("_") if t) if strategy not in ("", "none") else ()
        unknown = [t for t in names if t not in ALL_TRANSFORMS]
        if unknown:
            raise ValueError(
                f"unknown DSA transform(s) {unknown} in strategy {strategy!r}; use {ALL_TRANSFORMS}"
            )
        if mode not in MODES:
            raise ValueError(f"DSA mode must be one of {list(MODES)}, got {mode!r}")
        self.strategy = strategy
        self.transforms = names
        self.params = params or DSAParams()
        self.mode = mode

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, mode={self.mode!r})"

    def sample(
        self, batch_size: int, image_size: tuple[int, int], generator: torch.Generator, shared: bool = False
    ) -> Sample:
        """Draw the parameters of one call for ``batch_size`` images of ``image_size`` (H, W);
        ``shared`` draws one set for the whole batch (siamese use across batches of any size)."""
        if not self.transforms:
            return Sample(())
        chosen = self._choose(generator)
        n = 1 if shared else batch_size
        p, (h, w) = self.params, image_size
        values: dict[str, torch.Tensor] = {}

        def uniform(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.rand(shape, generator=generator)

        for name in chosen:
            if name == "color":
                values["brightness"] = (uniform((n,)) - 0.5) * p.brightness
                values["saturation"] = uniform((n,)) * p.saturation
                values["contrast"] = uniform((n,)) + p.contrast
            elif name == "crop":
                shift_h, shift_w = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
                values["crop_dy"] = torch.randint(-shift_h, shift_h + 1, (n,), generator=generator)
                values["crop_dx"] = torch.randint(-shift_w, shift_w + 1, (n,), generator=generator)
            elif name == "cutout":
                cut_h, cut_w = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
                values["cutout_cy"] = torch.randint(0, h + (1 - cut_h % 2), (n,), generator=generator)
                values["cutout_cx"] = torch.randint(0, w + (1 - cut_w % 2), (n,), generator=generator)
            elif name == "flip":
                values["flip"] = uniform((n,)) < p.prob_flip
            elif name == "scale":
                low = 1.0 / p.ratio_scale
                values["scale_x"] = uniform((n,)) * (p.ratio_scale - low) + low
                values["scale_y"] = uniform((n,)) * (p.ratio_scale - low) + low
            elif name == "rotate":
                values["angle"] = (uniform((n,)) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
        return Sample(chosen, values)

    def _choose(self, generator: torch.Generator) -> tuple[str, ...]:
        if self.mode == "all":
            return self.transforms
        always = tuple(t for t in self.transforms if t in ("color", "flip")) if self.mode == "idc" else ()
        rest = [t for t in self.transforms if t not in always]
        if not rest:
            return always
        return (*always, rest[int(torch.randint(len(rest), (1,), generator=generator))])

    def apply(self, x: torch.Tensor, sample: Sample) -> torch.Tensor:
        """Apply drawn parameters to ``x`` ``[N, C, H, W]``; differentiable w.r.t. ``x``."""
        v = {k: t.to(x.device) for k, t in sample.values.items()}
        for name in sample.transforms:
            x = getattr(self, f"_{name}")(x, v)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
        """Sample and apply in one go (one set of draws per example unless ``shared``)."""
        if not self.transforms:
            return x
        return self.apply(x, self.sample(len(x), tuple(x.shape[-2:]), generator, shared))

    # --- the transforms; v holds per-example (or single, broadcast) parameters -----------------
    @staticmethod
    def _per_example(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.expand(n) if t.numel() == 1 else t

    def _color(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + v["brightness"].view(-1, 1, 1, 1).to(x.dtype)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * v["saturation"].view(-1, 1, 1, 1).to(x.dtype) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * v["contrast"].view(-1, 1, 1, 1).to(x.dtype) + mean

    def _crop(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        # A translation with zero fill, done as a gather from a zero-padded copy so gradients flow.
        n, _, h, w = x.shape
        dy = self._per_example(v["crop_dy"], n).view(n, 1, 1)
        dx = self._per_example(v["crop_dx"], n).view(n, 1, 1)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        src_rows = (rows + dy + 1).clamp(0, h + 1).expand(n, h, w)
        src_cols = (cols + dx + 1).clamp(0, w + 1).expand(n, h, w)
        padded = F.pad(x, (1, 1, 1, 1))
        batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
        return padded.permute(0, 2, 3, 1)[batch, src_rows, src_cols].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        n, _, h, w = x.shape
        cut_h, cut_w = int(h * self.params.ratio_cutout + 0.5), int(w * self.params.ratio_cutout + 0.5)
        cy = self._per_example(v["cutout_cy"], n).view(n, 1, 1)
        cx = self._per_example(v["cutout_cx"], n).view(n, 1, 1)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (
            (rows >= cy - cut_h // 2)
            & (rows < cy - cut_h // 2 + cut_h)
            & (cols >= cx - cut_w // 2)
            & (cols < cx - cut_w // 2 + cut_w)
        )
        return x * (~inside).unsqueeze(1).to(x.dtype)

    def _flip(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        flip = v["flip"].view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(3), x)

    def _affine(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        theta = theta.expand(len(x), 2, 3).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        sx, sy = v["scale_x"], v["scale_y"]
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
        return self._affine(x, theta)

    def _rotate(self, x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        a = v["angle"]
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
        return self._affine(x, theta)


@dataclass(frozen=True)
class CutMix:
    """CutMix (Yun et al. 2019) as IDC trains with it: with probability ``prob`` a minibatch gets a box
    of a shuffled copy of itself pasted in; the box covers about ``1 - lam`` of the image with
    ``lam ~ Beta(beta, beta)``, and the loss mixes the two labels by the exact pasted area."""

    prob: float = 0.5
    beta: float = 1.0

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(mixed images, partner labels, weight of the own labels)``; weight 1 when not applied."""
        if float(torch.rand((), generator=generator)) >= self.prob:
            return x, y, 1.0
        lam = self._beta(generator)
        partner = torch.randperm(len(x), generator=generator).to(x.device)
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
        cy, cx = (int(torch.randint(n, (), generator=generator)) for n in (h, w))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x[partner, :, top:bottom, left:right]
        return mixed, y[partner], 1.0 - (bottom - top) * (right - left) / (h * w)

    def _beta(self, generator: torch.Generator) -> float:
        # torch's Beta sampler takes no generator; numpy's, seeded from it, keeps the draw reproducible
        import numpy as np

        seed = int(torch.randint(2**62, (), generator=generator))
        return float(np.random.default_rng(seed).beta(self.beta, self.beta))


def build_augment(spec: str | None) -> DSA | None:
    """``"dsa"`` / ``"dsa:color_crop"`` / ``"none"`` -> a :class:`DSA` or ``None``; the prefixes
    ``dsa_all:`` and ``dsa_idc:`` choose the modes ``all`` and ``idc``."""
    if spec is None or spec in ("", "none"):
        return None
    kind, _, strategy = spec.partition(":")
    modes = {prefix: mode for mode, prefix in MODES.items()}
    if kind not in modes:
        raise ValueError(
            f"unknown augmentation {spec!r}; use 'none', 'dsa', or 'dsa:<t1>_<t2>...' (also with the "
            "prefixes dsa_all: and dsa_idc:)"
        )
    return DSA(strategy or DEFAULT_STRATEGY, mode=modes[kind])


def augment_spec(augment: DSA | None) -> str:
    """The inverse of :func:`build_augment`, for schedules and logs."""
    return "none" if augment is None else f"{MODES[augment.mode]}:{augment.strategy}"
