"""Speed and memory of one MTT distillation iteration (unroll + backward + update) for a config.

    python benchmarks/mtt_iteration.py --config recipes/configs/cifar10_ipc10.yaml --iterations 20 \
        dataset=../shared/datasets/cifar10

Expert trajectories are replaced by random-walk stand-ins of the right shape (their values do not
change the cost), so the numbers come without training any expert. Prints seconds per iteration
(median over the timed iterations, after two warm-ups) and peak memory (CUDA allocator on a GPU,
resident set size on a CPU), as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from accelerate import Accelerator

from pdd_hub.augment import build_augment
from pdd_hub.config import load_config
from pdd_hub.data import load_real_data
from pdd_hub.methods import build_distiller
from pdd_hub.methods.params import build_network, flat_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--stage", type=int, default=1, help="stage whose union size to mimic")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    accelerator = Accelerator()
    device = accelerator.device
    real = load_real_data(
        config.dataset,
        val_per_class=config.val_per_class,
        image_column=config.image_column,
        label_column=config.label_column,
        test_split=config.test_split,
    )
    classes, shape = real.num_classes, real.image_shape
    mtt = build_distiller(config, classes, shape)
    if config.method != "mtt":
        raise SystemExit("this benchmark times MTT iterations; the config's method is " + config.method)
    reach = config.mtt.max_start_epoch + config.mtt.expert_epochs
    start = flat_params(build_network(config.model, classes, shape, seed=0))
    steps = torch.randn(reach, start.numel()) * 1e-3
    mtt.match(
        [torch.cat([start[None], start[None] + steps.cumsum(0)]) for _ in range(4)],
        build_network(config.model, classes, shape).to(device),
        augment=build_augment(config.augment),
        generator=torch.Generator().manual_seed(0),
        batch_syn=config.mtt.batch_syn or classes * config.ipc_per_stage,
    )

    n = classes * config.ipc_per_stage * args.stage
    images = torch.randn(n, *shape, device=device, requires_grad=True)
    labels = torch.arange(classes, device=device).repeat_interleave(config.ipc_per_stage * args.stage)
    optimizer = torch.optim.SGD([{"params": [images], **mtt.image_optimizer()}, *mtt.param_groups()])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for it in range(args.iterations + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss = mtt.loss(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mtt.after_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if it >= 2:
            times.append(time.perf_counter() - tick)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        json.dumps(
            {
                "config": args.config,
                "device": str(device),
                "images": n,
                "syn_steps": config.mtt.syn_steps,
                "batch_syn": mtt.batch_syn,
                "seconds_per_iteration": statistics.median(times),
                "peak_memory_gib": round(peak / 2**30, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
