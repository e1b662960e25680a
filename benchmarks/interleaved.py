"""The same training work by pdd-hub and by the reference (VITA-Group/ProgressiveDD), alternated in
one process on one thread, so both see the same machine conditions (a shared machine's speed drifts
by tens of percent between runs started minutes apart).

    python benchmarks/interleaved.py --reference /path/to/ProgressiveDD [--rounds 2] \
        [--variants fp32,fp32/compile,bf16,bf16/compile]

* ``eval``: 20 epochs of ConvNet-D3 on 100 random 3x32x32 images (LR 0.01, DSA, batch 256): the
  reference's ``utils.evaluate_synset`` against pdd-hub's ``train_many``;
* ``expert``: one epoch on 2,560 random images, batch 256, DSA: the reference's ``utils.epoch``
  (as ``buffer_mtt.py`` trains) against pdd-hub's expert trainer (``ExpertGroup.epoch``).

pdd-hub runs each of ``--variants`` (precision, and ``/compile`` for ``torch.compile``) after the
reference in every round; compiled variants are compiled once before the first round (a process
compiles once), so the rounds time training only.

Run it with the reference's Python environment plus pdd-hub on the path (``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def reference_args(epochs: int) -> argparse.Namespace:
    from utils import ParamDiffAug  # the reference's module

    return argparse.Namespace(
        dataset="CIFAR10", model="ConvNet", zca=True, device="cpu", dsa=True,
        dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=ParamDiffAug(), dc_aug_param=None,
        lr_net=0.01, epoch_eval_train=epochs - 1, batch_train=256, texture=False,
    )  # fmt: skip


def eval_round(variants: list[str], epochs: int = 20) -> tuple[float, dict[str, float]]:
    from utils import evaluate_synset, get_network

    from pdd_hub.augment import build_augment
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime
    from pdd_hub.schedule import SGDRecipe
    from pdd_hub.train import Augmentation, StagePlan, train_many

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(100, 3, 32, 32, generator=g), torch.arange(10).repeat_interleave(10)
    test = torch.utils.data.TensorDataset(images[:10], labels[:10])
    start = time.perf_counter()
    evaluate_synset(0, get_network("ConvNet", 3, 10, (32, 32)), images, labels,
                    torch.utils.data.DataLoader(test, batch_size=256), reference_args(epochs))  # fmt: skip
    reference = time.perf_counter() - start
    ours = {}
    for variant in variants:
        precision, _, compiled = variant.partition("/")
        plan = StagePlan("s", images, labels, SGDRecipe(lr=0.01, epochs=epochs))
        start = time.perf_counter()
        runtime = TrainingRuntime(precision=precision, compile=compiled == "compile")
        train_many([build_network("convnet_d3", 10, (3, 32, 32), seed=0)], [plan],
                   generators=[torch.Generator().manual_seed(0)],
                   augmentation=Augmentation(build_augment("dsa")), runtime=runtime)  # fmt: skip
        ours[variant] = time.perf_counter() - start
    return reference, ours


def expert_round(variants: list[str], examples: int = 2560) -> tuple[float, dict[str, float]]:
    from utils import epoch, get_network

    from pdd_hub.augment import build_augment
    from pdd_hub.config import ExpertConfig
    from pdd_hub.methods.experts import ExpertGroup, ExpertTraining
    from pdd_hub.networks import as_networks
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(examples, 3, 32, 32, generator=g), torch.randint(0, 10, (examples,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256, shuffle=True)
    net = get_network("ConvNet", 3, 10, (32, 32))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    start = time.perf_counter()
    epoch("train", loader, net, optimizer, torch.nn.CrossEntropyLoss(), reference_args(1), aug=True)
    reference = time.perf_counter() - start
    ours = {}
    for variant in variants:
        precision, _, compiled = variant.partition("/")
        model = build_network("convnet_d3", 10, (3, 32, 32), seed=0)
        runtime = TrainingRuntime(precision=precision)
        training = ExpertTraining(ExpertConfig().recipe(), build_augment("dsa"), runtime=runtime)
        group = ExpertGroup(Path(tempfile.mkdtemp()), [0], training)
        start = time.perf_counter()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        group.epoch(as_networks([model], compiled == "compile"), optimizer, x, y, torch.arange(examples),
                    [torch.Generator().manual_seed(0)])  # fmt: skip
        ours[variant] = time.perf_counter() - start
    return reference, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="a patched checkout of VITA-Group/ProgressiveDD")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="fp32", help="comma-separated, e.g. fp32,bf16/compile")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    torch.set_num_threads(1)
    variants = args.variants.split(",")
    for name, measure, warm_up in (
        ("eval (20 epochs, 100 images)", eval_round, lambda v: eval_round(v, epochs=1)),
        ("expert (2,560 images)", expert_round, lambda v: expert_round(v, examples=256)),
    ):
        start = time.perf_counter()
        warm_up([v for v in variants if v.endswith("/compile")])
        print(f"{name}: warm-up (compilation) {time.perf_counter() - start:.2f} s", flush=True)
        for _ in range(args.rounds):
            reference, ours = measure(variants)
            print(f"{name}: reference {reference:.2f} s, " + ", ".join(
                f"pdd-hub {v} {t:.2f} s (ratio {t / reference:.3f})" for v, t in ours.items()
            ), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
