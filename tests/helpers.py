"""Small builders shared by the tests: local datasets in Hub layout and tiny exports."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Subprocesses of the tests: offline, no telemetry, unbuffered output.
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONUNBUFFERED": "1",
}


def accelerate_cpu(processes: int) -> list[str]:
    """``accelerate launch`` with ``processes`` processes on this machine, all defaults spelled out.
    Several processes need the multi-process launcher (``--multi_gpu``; ``--cpu`` starts one process
    whatever ``--num_processes`` says); on a machine without GPUs pdd-hub makes them one CPU run."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu" if processes > 1 else "--cpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(
    root: Path,
    *,
    channels: int = 3,
    size: int = 32,
    per_class: int = 6,
    num_classes: int = 3,
    image_column: str = "image",
    label_column: str = "label",
    corrupt_row: int | None = None,
    label_override: dict[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """A local dataset in Hub layout (data/train-*.parquet, data/test-*.parquet) of random images."""
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            image_column: datasets.Image(),
            label_column: datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)]),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        images, labels = [], []
        for row in range(n * num_classes):
            shape = (size, size) if channels == 1 else (size, size, channels)
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            data = b"this is not an image" if (split == "train" and row == corrupt_row) else png_bytes(array)
            images.append({"bytes": data, "path": None})
            labels.append(row % num_classes)
        if split == "train" and label_override:
            for row, value in label_override.items():
                labels[row] = value
        table = {image_column: images, label_column: labels}
        if label_override and split == "train":
            # out-of-range labels can't be stored in a ClassLabel column; use plain ints
            feats = datasets.Features({image_column: datasets.Image(), label_column: datasets.Value("int64")})
        else:
            feats = features
        datasets.Dataset.from_dict(table, features=feats).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def random_stages(
    num_stages: int, ipc: int, num_classes: int, shape: tuple[int, int, int], seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    return [(torch.randn(len(labels), *shape, generator=g), labels.clone()) for _ in range(num_stages)]


@contextlib.contextmanager
def child_cpu_seconds() -> Iterator[list[float]]:
    """CPU seconds (user + system) of the child processes waited for in the block, in ``spent[0]``:
    what a command costs on an idle machine, however busy the shared cores are while tests run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = [0.0]
    yield spent
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent[0] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
