"""Side-by-side speed and memory: pdd-hub and, given its path, the reference implementation
(VITA-Group/ProgressiveDD), on the same machine with the same number of threads.

    python benchmarks/speed.py --data ../shared/datasets/cifar10 --threads 1 --output runs/bench/speed.json \
        [--reference PATH --reference-python PY --reference-data DIR [--reference-buffer-data DIR]]

What it measures (each figure in a child process of its own, whose peak resident memory is read
with ``os.wait4``; on a GPU pdd-hub's figures are CUDA max-allocated):

* seconds per distillation iteration (MTT: unroll, backward, update) at the paper's CIFAR-10 IPC 10
  setting (2 images per class and stage, syn_steps 50, ConvNet-D3, DSA, ZCA) and IPC 50 setting (10
  per class, syn_steps 30) in fp32 and bf16 (``mtt.precision``), and at syn_steps 10/20/50/80 of the
  IPC 10 setting, for both of pdd-hub's memory modes; the reference: ``distill_mtt.py`` with
  ``--Iteration 2`` and ``7``, the difference of the two wall times over 5 (start-up and its
  evaluation at iteration 0 cancel out);
* seconds per expert epoch on all 50,000 CIFAR-10 training images (ConvNet-D3, batch 256, DSA,
  ZCA): pdd-hub's expert trainer for one epoch; the reference: one epoch of ``buffer_mtt.py``'s
  training loop (its ZCA'd data, DataLoader, DSA and ``utils.epoch``) in a driver, timed around that
  epoch only, as pdd-hub's is (before, the difference of a 2-epoch and a 1-epoch ``buffer_mtt.py``
  run, which also holds the difference of their start-ups and an extra test pass);
* seconds to evaluate 100 images (10 per class): 300 epochs of training, then the 10,000 test
  images, per seed: pdd-hub one seed at a time and 3 seeds stacked, fp32 and bf16; the reference's
  ``utils.evaluate_synset`` (called from a driver written to a scratch folder).

pdd-hub's expert epoch and one-at-a-time evaluation are also measured through ``torch.compile``
(``compile: true``, ``pdd-hub eval --compile``); the one-time compilation of a process is timed
apart (``compile_seconds``, on a throwaway network) and not in the figure it precedes.

The reference needs a few patches to run on a CPU (torchvision's download check, one ``.cuda()``, one
undefined argument, and ``.detach().cpu().clone()`` where trajectories are saved), and its data in
torchvision's CIFAR-10 layout; ``--reference-buffer-data`` (e.g. a 5,000-image copy) makes the expert
trajectories its distillation reads, whose values do not change the cost of an iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the paper's CIFAR-10 settings: config, images per class per stage, syn_steps, max_start_epoch
IPC_SETTINGS = {
    "ipc10": ("cifar10_ipc10", 2, 50, 5),
    "ipc50": ("cifar10_ipc50", 10, 30, 15),
}


def child_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.update(
        PDD_HUB_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1"
    )
    return env


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


class Popen(subprocess.Popen):
    """A Popen whose rusage is kept (``os.wait4``), so the child's own peak memory is known."""

    def _try_wait(self, wait_flags):
        pid, status, self.rusage = os.wait4(self.pid, wait_flags)
        return pid, status


def measured(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; returns (wall seconds, the child's peak resident GiB, its stdout)."""
    start = time.perf_counter()
    with Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{err[-3000:]}")
    return wall, proc.rusage.ru_maxrss / 2**20, out


# --- pdd-hub -----------------------------------------------------------------------------------
def ours_iteration(
    args: argparse.Namespace, setting: str, memory: str, syn_steps: int | None = None, precision: str = "fp32"
) -> dict:
    config, _, steps, _ = IPC_SETTINGS[setting]
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "iteration.py"), "--config", config,
        "--iterations", "1" if args.quick else "5",
        f"dataset={args.data}", f"mtt.memory={memory}", f"mtt.syn_steps={syn_steps or steps}",
        f"mtt.precision={precision}",
        f"num_threads={args.threads}",
    ]  # fmt: skip
    _, peak, out = measured(cmd, child_env(args.threads))
    result = last_json(out)
    return {"seconds": result["seconds_per_iteration"], "peak_gib": result.get("peak_memory_gib", peak)}


def ours_child(args: argparse.Namespace, what: str, *extra: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        what,
        "--data",
        args.data,
        "--threads",
        str(args.threads),
        *extra,
    ]
    if args.quick:
        cmd.append("--quick")
    _, peak, out = measured(cmd, child_env(args.threads))
    return {**last_json(out), "peak_gib": peak}


def child_expert_epoch(args: argparse.Namespace) -> None:
    """One epoch of one expert on all CIFAR-10 training images, ZCA, DSA, batch 256."""
    import torch

    from pdd_hub.augment import build_augment
    from pdd_hub.config import ExpertConfig
    from pdd_hub.data import Preprocess, PreprocessedImages, load_real_data
    from pdd_hub.methods.experts import ExpertGroup, ExpertTraining
    from pdd_hub.networks import as_networks
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime, configure_threads

    configure_threads(args.threads)
    real = load_real_data(args.data, val_per_class=1, seed=0)  # 49,990 training images
    if args.quick:
        real.train = real.train.subset(torch.arange(0, len(real.train), 50))
    preprocess = Preprocess.fit(real.train.images, normalize=False, zca=True)
    images = PreprocessedImages(real.train.images, preprocess)
    runtime = TrainingRuntime(precision=args.precision)
    training = ExpertTraining(ExpertConfig().recipe(), build_augment("dsa"), runtime=runtime)
    group = ExpertGroup(Path(tempfile.mkdtemp()), [0], training)

    def epoch(pool: torch.Tensor) -> float:
        network = build_network("convnet_d3", 10, (3, 32, 32), seed=0)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
        start = time.perf_counter()
        group.epoch(
            as_networks([network], args.compile), optimizer, images, real.train.labels, pool,
            [torch.Generator().manual_seed(0)],
        )  # fmt: skip
        return time.perf_counter() - start

    # torch.compile compiles once per process: timed apart, on a throwaway network's full and last
    # (partial) batch
    compile_seconds = epoch(torch.arange(256 + len(real.train) % 256)) if args.compile else None
    seconds = epoch(torch.arange(len(real.train)))
    print(json.dumps({"seconds": seconds, "compile_seconds": compile_seconds, "examples": len(real.train)}))


def child_evaluation(args: argparse.Namespace) -> None:
    """Seeds of ConvNet-D3 trained 300 epochs on 100 random images, then tested on 10,000."""
    import torch

    from pdd_hub.augment import build_augment
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime, configure_threads
    from pdd_hub.schedule import SGDRecipe
    from pdd_hub.train import Augmentation, StagePlan, train_many

    configure_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(100, 3, 32, 32, generator=g), torch.arange(10).repeat_interleave(10)
    test = (torch.randn(10_000, 3, 32, 32, generator=g), torch.randint(0, 10, (10_000,), generator=g))
    seeds = range(args.seeds)

    def train(models: list, epochs: int) -> float:
        plan = StagePlan("s", images, labels, SGDRecipe(lr=0.01, epochs=epochs))
        start = time.perf_counter()
        train_many(
            models, [plan], generators=[torch.Generator().manual_seed(s) for s in range(len(models))],
            augmentation=Augmentation(build_augment("dsa")), test=test,
            runtime=TrainingRuntime(precision=args.precision, batched=args.batched, compile=args.compile),
        )  # fmt: skip
        return time.perf_counter() - start

    # torch.compile compiles once per process: timed apart, on one epoch of a throwaway network
    throwaway = [build_network("convnet_d3", 10, (3, 32, 32), seed=99)]
    compile_seconds = train(throwaway, 1) if args.compile else None
    models = [build_network("convnet_d3", 10, (3, 32, 32), seed=s) for s in seeds]
    seconds = train(models, 3 if args.quick else 300)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "seconds_per_seed": seconds / len(models),
                "seeds": len(models),
                "compile_seconds": compile_seconds,
            }
        )
    )


# --- the reference -------------------------------------------------------------------------------
def reference_buffers(args: argparse.Namespace, epochs: int) -> Path:
    """A folder whose ``buffers/CIFAR10/ConvNet`` holds a reference trajectory of ``epochs`` epochs."""
    work = Path(args.work) / f"buffers_{epochs}"
    if not (work / "buffers" / "CIFAR10" / "ConvNet" / "replay_buffer_0.pt").exists():
        data = args.reference_buffer_data or args.reference_data
        cmd = [
            args.reference_python, "-u", str(Path(args.reference) / "buffer_mtt.py"), "--dataset", "CIFAR10",
            "--model", "ConvNet", "--data_path", data, "--train_epochs", str(epochs), "--num_experts", "1",
            "--save_interval", "1", "--zca",
        ]  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        measured(cmd, child_env(args.threads), cwd=work)
    return work


def reference_iteration(args: argparse.Namespace, setting: str) -> dict:
    _, ipc, steps, max_start = IPC_SETTINGS[setting]
    work = reference_buffers(args, max_start + 2)
    runs = {}
    for iterations in (1, 2) if args.quick else (2, 7):
        cmd = [
            args.reference_python, "-u", str(Path(args.reference) / "distill_mtt.py"), "--dataset=CIFAR10",
            "--model=ConvNet", f"--ipc={ipc}", f"--syn_steps={steps}", "--expert_epochs=2",
            f"--max_start_epoch={max_start}", "--zca", "--lr_img=1000", "--lr_lr=1e-07", "--lr_teacher=0.01",
            "--num_intervals", "1", "--Iteration", str(iterations), "--num_eval", "1", "--eval_it", "100000",
            "--epoch_eval_train", "1", "--override_epoch_eval_train", "1", "--data_path", args.reference_data,
            "--tag", f"speed_{setting}_{iterations}_{time.time_ns()}",
        ]  # fmt: skip
        runs[iterations] = measured(cmd, child_env(args.threads), cwd=work)
    short, long_ = sorted(runs)
    return {"seconds": (runs[long_][0] - runs[short][0]) / (long_ - short), "peak_gib": runs[long_][1]}


# The start of every driver run in the reference's interpreter: its modules, threads and the
# arguments its training functions read (ConvNet, ZCA, DSA as the paper's CIFAR-10 setting).
REFERENCE_DRIVER_HEAD = """
import argparse, json, sys, time
import torch
sys.path.insert(0, {reference!r})
from utils import ParamDiffAug, epoch, evaluate_synset, get_dataset, get_network
torch.set_num_threads({threads})
args = argparse.Namespace(
    dataset="CIFAR10", model="ConvNet", zca=True, device={device!r}, dsa=True,
    dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=ParamDiffAug(), dc_aug_param=None,
    lr_net=0.01, epoch_eval_train=300, batch_train=256, texture=False,
)
"""

# The reference's CIFAR-10 training set as buffer_mtt.py reads it (ZCA'd by get_dataset), and its
# DataLoader over the first ``count`` images.
REFERENCE_TRAINING_DATA = """
channel, im_size, num_classes, _, _, _, dst_train, *_ = get_dataset(
    "CIFAR10", {data!r}, 256, "imagenette", args=args
)
images = torch.cat([dst_train[i][0][None] for i in range(len(dst_train))])
labels = torch.tensor([int(dst_train[i][1]) for i in range(len(dst_train))])


def loader(count):
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images[:count], labels[:count]), batch_size=args.batch_train,
        shuffle=True, num_workers=0,
    )
"""

REFERENCE_EXPERT_DRIVER = (
    REFERENCE_TRAINING_DATA
    + """
net = get_network("ConvNet", channel, num_classes, im_size)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0, weight_decay=0)
start = time.perf_counter()
epoch("train", loader(len(images)), net, optimizer, torch.nn.CrossEntropyLoss(), args, aug=True)
print(json.dumps({{"seconds": time.perf_counter() - start, "examples": len(images)}}))
"""
)


def reference_expert_epoch(args: argparse.Namespace) -> dict:
    """One training epoch of ``buffer_mtt.py``'s expert loop (its data, DataLoader, DSA and ``epoch``),
    timed inside the process around that epoch only, as pdd-hub's row is."""
    return run_reference_driver(args, "expert_driver.py", REFERENCE_EXPERT_DRIVER)


REFERENCE_EVAL_DRIVER = """
channel, im_size, num_classes, *rest = get_dataset("CIFAR10", {data!r}, 256, "imagenette", args=args)
g = torch.Generator().manual_seed(0)
images = torch.randn(100, channel, *im_size, generator=g)
labels = torch.arange(num_classes).repeat_interleave(10)
net = get_network("ConvNet", channel, num_classes, im_size)
start = time.perf_counter()
evaluate_synset(0, net, images, labels, rest[5], args)
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def reference_evaluation(args: argparse.Namespace) -> dict:
    return run_reference_driver(args, "evaluate_driver.py", REFERENCE_EVAL_DRIVER)


def run_reference_driver(args: argparse.Namespace, name: str, template: str) -> dict:
    """Run a driver script in the reference's checkout and interpreter; its last JSON line and peak."""
    driver = Path(args.work) / name
    driver.parent.mkdir(parents=True, exist_ok=True)
    driver.write_text(
        (REFERENCE_DRIVER_HEAD + template).format(
            reference=str(Path(args.reference)), threads=args.threads, data=args.reference_data, device="cpu"
        )
    )
    _, peak, out = measured(
        [args.reference_python, "-u", str(driver.resolve())], child_env(args.threads), cwd=args.reference
    )
    return {**last_json(out), "peak_gib": peak}


# --- the harness ---------------------------------------------------------------------------------
def rows(args: argparse.Namespace) -> dict[str, Callable[[], dict]]:
    """Every figure the harness can measure, by key, in the order they run."""
    table: dict[str, Callable[[], dict]] = {}
    for setting in IPC_SETTINGS:
        for memory in ("unrolled", "constant"):
            for precision in ("fp32", "bf16"):
                table[f"ours/iteration/{setting}/{memory}" + ("/bf16" if precision == "bf16" else "")] = (
                    partial(ours_iteration, args, setting, memory, precision=precision)
                )
    for steps in (10,) if args.quick else (10, 20, 50, 80):
        for memory in ("unrolled", "constant"):
            table[f"ours/iteration/ipc10/syn_steps{steps}/{memory}"] = partial(
                ours_iteration, args, "ipc10", memory, syn_steps=steps
            )
    for precision in ("fp32", "bf16"):
        for compiled in (False, True):
            suffix, flags = ("/compile", ["--compile"]) if compiled else ("", [])
            table[f"ours/expert_epoch/{precision}{suffix}"] = partial(
                ours_child, args, "expert", "--precision", precision, *flags
            )
            table[f"ours/evaluation/3_seeds_one_by_one/{precision}{suffix}"] = partial(
                ours_child, args, "eval", "--precision", precision, "--seeds", "3", *flags
            )
        table[f"ours/evaluation/3_seeds_stacked/{precision}"] = partial(
            ours_child, args, "eval", "--precision", precision, "--seeds", "3", "--batched"
        )
    if args.reference:
        for setting in IPC_SETTINGS:
            table[f"reference/iteration/{setting}"] = partial(reference_iteration, args, setting)
        table["reference/evaluation"] = partial(reference_evaluation, args)
        table["reference/expert_epoch"] = partial(reference_expert_epoch, args)
    return table


def measure_all(args: argparse.Namespace, results: dict) -> dict:
    """Measure the rows matching ``--only`` (all by default) into ``results``, saving after each."""
    results.update({"threads": args.threads, "machine": machine(), "date": time.strftime("%Y-%m-%d")})
    if re.search(args.only, "ours/default_threads_under_accelerate_launch"):
        threads = results["ours/default_threads_under_accelerate_launch"] = default_threads()
        print(f"a run started by accelerate launch uses {threads}")
    for key, measure in rows(args).items():
        if re.search(args.only, key):
            results[key] = {**measure(), "date": time.strftime("%Y-%m-%d")}
            report(results, key)
            save(args.output, results)
    return results


def save(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))


def default_threads() -> dict:
    """The CPU threads pdd-hub sets in a process started by ``accelerate launch`` (OMP_NUM_THREADS=1)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PDD_HUB_NUM_THREADS")}
    _, _, out = measured([*launch, __file__, "--child", "threads"], env)
    return last_json(out)


def machine() -> str:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} ({os.cpu_count()} logical CPUs){gpu}, torch {torch.__version__}"


def report(results: dict, key: str) -> None:
    row = results[key]
    print(f"{key}: {row['seconds'] if 'seconds_per_seed' not in row else row['seconds_per_seed']:.2f} s, "
          f"peak {row['peak_gib']:.2f} GiB", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/cifar10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="runs/bench/speed.json")
    parser.add_argument("--reference", help="a patched checkout of VITA-Group/ProgressiveDD")
    parser.add_argument("--reference-python", default=sys.executable)
    parser.add_argument("--reference-data", help="CIFAR-10 in torchvision's layout, for the reference")
    parser.add_argument(
        "--reference-buffer-data", help="smaller data for the reference's timing trajectories"
    )
    parser.add_argument(
        "--work", default="runs/bench/speed_reference", help="scratch folder for the reference"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test of the harness (tiny sizes)")
    parser.add_argument(
        "--only",
        default="",
        help="measure only the rows whose key matches this regular expression, keeping the other rows "
        "already in OUTPUT (e.g. --only 'bf16')",
    )
    parser.add_argument("--child", choices=["expert", "eval", "threads"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "expert":
        return child_expert_epoch(args)
    if args.child == "eval":
        return child_evaluation(args)
    if args.child == "threads":
        from pdd_hub.runtime import configure_threads

        return print(
            json.dumps({"threads": configure_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")})
        )
    previous = json.loads(Path(args.output).read_text()) if args.only and Path(args.output).exists() else {}
    measure_all(args, previous)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
