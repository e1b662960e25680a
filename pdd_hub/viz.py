"""Pictures people would rather look at: grids of synthetic images and accuracy-per-stage plots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

from pdd_hub.io import atomic_path


def to_uint8_pictures(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` floats in (roughly) [0, 1] -> uint8 ``[N, H, W, C]``, clamped for display."""
    return rearrange(
        (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8), "n c h w -> n h w c"
    )


def image_grid(
    pictures: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    min_cell: int = 64,
    pad: int = 2,
    class_names: list[str] | None = None,
) -> Image.Image:
    """One row per class, its images left to right, the class's name on its left (``class_names``);
    small images are upscaled to ``min_cell`` px."""
    pictures, labels = pictures.cpu(), labels.cpu()
    _, h, w, c = pictures.shape
    rows = [pictures[labels == k] for k in range(num_classes)]
    cols = max(1, max(len(r) for r in rows))
    scale = max(1, -(-min_cell // max(h, w)))
    cell_h, cell_w = h * scale, w * scale
    canvas = np.full((num_classes * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, c), 255, np.uint8)
    for k, row in enumerate(rows):
        for j, pic in enumerate(row):
            big = pic.numpy().repeat(scale, 0).repeat(scale, 1)
            y, x = pad + k * (cell_h + pad), pad + j * (cell_w + pad)
            canvas[y : y + cell_h, x : x + cell_w] = big
    grid = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return grid if class_names is None else with_row_names(grid, class_names, cell_h + pad, pad)


def with_row_names(grid: Image.Image, names: list[str], row_height: int, pad: int) -> Image.Image:
    """``grid`` with ``names[k]`` written left of its k-th row (rows ``row_height`` px apart)."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    widths = [measure.textlength(name, font=font) for name in names]
    margin = int(max(widths, default=0)) + 3 * pad
    white = 255 if grid.mode == "L" else (255, 255, 255)
    named = Image.new(grid.mode, (grid.width + margin, grid.height), white)
    named.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(named)
    black = 0 if grid.mode == "L" else (0, 0, 0)
    for k, name in enumerate(names):
        top, bottom = draw.textbbox((0, 0), name, font=font)[1::2]
        y = pad + k * row_height + (row_height - pad - (bottom - top)) // 2 - top
        draw.text((pad, y), name, fill=black, font=font)
    return named


def save_image_grid(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: str | Path, **kwargs
) -> Path:
    """Write :func:`image_grid` of ``images`` (already mapped back to [0, 1]) as a PNG."""
    grid = image_grid(to_uint8_pictures(images), labels, num_classes, **kwargs)
    with atomic_path(path) as tmp:  # a failed write keeps the previous grid
        grid.save(tmp, format="PNG")
    return Path(path)


@contextmanager
def line_plot(path: str | Path, *, xlabel: str, ylabel: str, title: str = "") -> Iterator:
    """A matplotlib ``Axes`` to draw lines on; on leaving, the labelled plot is written to ``path`` as a
    PNG, atomically (a failed write keeps the previous plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def plot_accuracy_per_stage(
    results: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    xlabels: list[str] | None = None,
) -> Path:
    """Line plot of mean accuracy (with ±std bars) after each stage, one line per model."""
    with line_plot(path, xlabel="stage", ylabel="test accuracy (%)", title=title) as ax:
        for name, points in results.items():
            xs = np.arange(1, len(points) + 1)
            means = [100 * m for m, _ in points]
            stds = [100 * s for _, s in points]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
        longest = max((len(p) for p in results.values()), default=1)
        ax.set_xticks(np.arange(1, longest + 1))
        if xlabels:
            ax.set_xticklabels(xlabels[:longest])
    return Path(path)


def plot_validation_curves(
    curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str = ""
) -> Path:
    """Validation accuracy against distillation iteration, one line per stage: whether a stage's
    budget converged (a curve still rising at its last iteration did not)."""
    labels = {"xlabel": "distillation iteration", "ylabel": "validation accuracy (%)", "title": title}
    with line_plot(path, **labels) as ax:
        for name, points in curves.items():
            ax.plot([it for it, _ in points], [100 * acc for _, acc in points], marker=".", label=name)
    return Path(path)
