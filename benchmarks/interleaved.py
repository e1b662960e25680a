"""The same training work by pdd-hub and by the reference (VITA-Group/ProgressiveDD), alternated in
one process on one thread, so both see the same machine conditions (a shared machine's speed drifts
by tens of percent between runs started minutes apart).

    python benchmarks/interleaved.py --reference /path/to/ProgressiveDD [--rounds 2]

* ``eval``: 20 epochs of ConvNet-D3 on 100 random 3x32x32 images (LR 0.01, DSA, batch 256): the
  reference's ``utils.evaluate_synset`` against pdd-hub's ``train_many``;
* ``expert``: one epoch on 2,560 random images, batch 256, DSA: the reference's ``utils.epoch``
  (as ``buffer_mtt.py`` trains) against pdd-hub's expert trainer (``ExpertGroup.epoch``).

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


def eval_round(epochs: int = 20) -> tuple[float, float]:
    from utils import evaluate_synset, get_network

    from pdd_hub.augment import build_augment
    from pdd_hub.params import build_network
    from pdd_hub.train import StagePlan, train_many

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(100, 3, 32, 32, generator=g), torch.arange(10).repeat_interleave(10)
    test = torch.utils.data.TensorDataset(images[:10], labels[:10])
    start = time.perf_counter()
    evaluate_synset(0, get_network("ConvNet", 3, 10, (32, 32)), images, labels,
                    torch.utils.data.DataLoader(test, batch_size=256), reference_args(epochs))  # fmt: skip
    reference = time.perf_counter() - start
    start = time.perf_counter()
    train_many([build_network("convnet_d3", 10, (3, 32, 32), seed=0)],
               [StagePlan("s", images, labels, 0.01, epochs)], augment=build_augment("dsa"),
               generators=[torch.Generator().manual_seed(0)], batched=False, precision="fp32")  # fmt: skip
    return reference, time.perf_counter() - start


def expert_round(examples: int = 2560) -> tuple[float, float]:
    from utils import epoch, get_network

    from pdd_hub.augment import build_augment
    from pdd_hub.config import ExpertConfig
    from pdd_hub.methods.experts import ExpertGroup
    from pdd_hub.networks import as_networks
    from pdd_hub.params import build_network

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(examples, 3, 32, 32, generator=g), torch.randint(0, 10, (examples,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256, shuffle=True)
    net = get_network("ConvNet", 3, 10, (32, 32))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    start = time.perf_counter()
    epoch("train", loader, net, optimizer, torch.nn.CrossEntropyLoss(), reference_args(1), aug=True)
    reference = time.perf_counter() - start
    model = build_network("convnet_d3", 10, (3, 32, 32), seed=0)
    group = ExpertGroup(
        Path(tempfile.mkdtemp()), [0], ExpertConfig(), track_forgetting=False, precision="fp32"
    )
    group.counts = None
    start = time.perf_counter()
    group.epoch(as_networks([model]), torch.optim.SGD(model.parameters(), lr=0.01), x, y,
                torch.arange(examples), build_augment("dsa"), [torch.Generator().manual_seed(0)])  # fmt: skip
    return reference, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="a patched checkout of VITA-Group/ProgressiveDD")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    torch.set_num_threads(1)
    for name, measure in (
        ("eval (20 epochs, 100 images)", eval_round),
        ("expert (2,560 images)", expert_round),
    ):
        for _ in range(args.rounds):
            reference, ours = measure()
            print(f"{name}: reference {reference:.2f} s, pdd-hub {ours:.2f} s, ratio {ours / reference:.3f}")


if __name__ == "__main__":
    main()
