"""Speed and memory of one distillation iteration (loss + backward + update) of any base method.

    python benchmarks/iteration.py --config recipes/configs/cifar10_ipc10.yaml --iterations 20 \
        dataset=../shared/datasets/cifar10
    python benchmarks/iteration.py --config quickstart_dm --stage 3

The method prepares its stage with stand-ins for expensive resources whose values do not change the
cost (MTT: random-walk trajectories instead of trained experts), so nothing is trained first. The
union mimics stage ``--stage`` (earlier stages as frozen random images). Prints seconds per
iteration (median over the timed iterations, after two warm-ups) and peak memory (CUDA allocator on
a GPU, resident set size on a CPU), as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import torch

from pdd_hub.config import PDDConfig, flatten_config, parse_recipe_args
from pdd_hub.distill import Union
from pdd_hub.methods import Distiller, build_distiller
from pdd_hub.progressive import stage_context
from pdd_hub.run import RunData, RunFolder, prepare_data
from pdd_hub.runtime import configure_threads, make_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--stage", type=int, default=1, help="stage whose union size to mimic")
    args, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_recipe_args([*rest, f"output_dir={tmp}/run", "progress=false"])
        threads = configure_threads(config.num_threads)
        run = prepare_data(RunFolder.claim(config, make_accelerator()))
        result = measure(config, run, args.stage, args.iterations)
    print(json.dumps({"threads": threads, **result}))


def measure(config: PDDConfig, run: RunData, stage: int, iterations: int, warmups: int = 2) -> dict:
    """Seconds per iteration (median of ``iterations`` after ``warmups``) and peak memory of
    ``config``'s method on ``run``'s data, the union mimicking stage ``stage``. ``config`` may differ
    from ``run.config`` in its method section (precision, memory mode), so one run's data serves
    several rows."""
    distiller = build_distiller(config, run.num_classes, run.image_shape)
    states = run.initial_start_states(distiller.num_start_states)
    pool = torch.arange(len(run.train))
    ctx = stage_context(run, stage, states, start_stage=stage, pool=pool)
    distiller.begin_stage_stand_in(ctx)
    seconds, memory = time_iterations(distiller, run, stage, iterations, warmups)
    section = flatten_config({config.method: config.to_dict()[config.method]})
    return {
        "method": config.method,
        "device": str(run.device),
        "stage": stage,
        "ipc_per_stage": config.ipc_per_stage,
        **section,
        "seconds_per_iteration": statistics.median(seconds),
        **memory,
    }


def peak_memory(device: torch.device, resident: int = 0) -> dict:
    """Peak memory since the last reset: CUDA max-allocated on a GPU (with what was already allocated
    at the reset, ``resident_gib``), else the process's peak resident set so far."""
    if device.type == "cuda":
        return {
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "resident_gib": round(resident / 2**30, 3),
            "memory": "cuda_max_allocated",
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_gib": round(peak / 2**30, 3), "memory": "process_peak_rss"}


def reset_peak_memory(device: torch.device) -> int:
    """Start a new peak (CUDA only); returns the bytes allocated now."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def time_iterations(
    distiller: Distiller, run: RunData, stage: int, iterations: int, warmups: int = 2
) -> tuple[list[float], dict]:
    """Seconds of each timed iteration (after ``warmups`` untimed ones) and the peak memory over them."""
    device = run.device
    classes, ipc = run.num_classes, run.config.ipc_per_stage
    generator = torch.Generator().manual_seed(0)
    stored = torch.randn(classes * ipc, *run.image_shape, generator=generator)
    labels = torch.arange(classes).repeat_interleave(ipc)
    frozen = distiller.decode(torch.randn(classes * ipc * (stage - 1), *run.image_shape, generator=generator))
    union = Union(
        distiller,
        frozen.to(device),
        distiller.decode_labels(labels.repeat(stage - 1)).to(device),
        labels.to(device),
        conditioned=stage > 1,
    )
    new = stored.to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([{"params": [new], **distiller.image_optimizer()}, *distiller.param_groups()])
    resident = reset_peak_memory(device)
    times = []
    for it in range(iterations + warmups):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss = distiller.loss(union.images(new), union.labels())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        distiller.after_step(new)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if it >= warmups:
            times.append(time.perf_counter() - tick)
    return times, peak_memory(device, resident)


if __name__ == "__main__":
    main()
