"""One prepared GPU run (issue 22): pdd-hub beside the reference implementation (VITA-Group/ProgressiveDD)
on the same GPU, then the ``cifar10_ipc10_fast`` pipeline for the time left, into one JSON file.

    bash benchmarks/gpu.sh OUT_DIR          # on the GPU machine; benchmarks/README.md has the whole call
    python benchmarks/gpu.py --data DIR [--reference DIR] [--output FILE] [--budget SECONDS] [--only RE]
    python benchmarks/gpu.py --tiny --data sklearn:digits --output runs/gpu_tiny.json   # CPU smoke test

Items, in this order, each in a child process of its own under its own time budget (a child past it
is killed and the rows it printed are kept); the JSON is rewritten after every item, so a run cut
short still leaves every finished item:

* ``env``: device, driver, torch / CUDA / cuDNN and package versions;
* ``reference_data``: ``--data`` (Hub layout) rewritten in torchvision's CIFAR-10 layout for the
  reference, from the pixels pdd-hub decodes (so both read the same images);
* ``iteration_ours`` / ``iteration_reference``: one MTT distillation iteration at the paper's CIFAR-10
  IPC 10 and IPC 50 per-stage settings (2 and 10 images per class, syn_steps 50 and 30, stage 1,
  random-walk stand-in trajectories for both); pdd-hub in both memory modes, fp32 and bf16; the
  reference's own ``distill_mtt.py``, timed per iteration by its patch (median of iterations 2..);
* ``expert_epoch_ours`` / ``expert_epoch_reference``: one epoch of ConvNet-D3 on the 49,990 training
  images (batch 256, DSA, ZCA); pdd-hub one expert fp32 / bf16 and N experts stacked under vmap;
* ``evaluation_ours`` / ``evaluation_reference``: training epochs of ConvNet-D3 and ResNet-18 (CIFAR
  stem, instance norm) on the union of 5 stages (100 images for IPC 10, 500 for IPC 50); pdd-hub
  one seed after another (unbatched) and all seeds stacked (batched), fp32 / bf16;
* ``compile``: pdd-hub's expert epoch and unbatched evaluation through ``torch.compile`` (the
  compilation timed apart, as ``warm_up_seconds``);
* ``pipeline``: ``recipes/configs/cifar10_ipc10_fast.yaml`` end to end (experts, 5 stages with
  transitions, then the 5-seed evaluation) for the rest of ``--budget``, with each phase's time.

Peak memory: CUDA max-allocated over the measured work (``peak_memory_gib``; ``resident_gib`` was
already allocated when it began: pdd-hub keeps the uint8 training set on the GPU); on a CPU only the
process's peak resident set. ``--tiny`` shrinks every size (a few images, 1-2 epochs, 2 stages) so
the whole harness runs on a CPU in seconds: its figures mean nothing. benchmarks/gpu_report.py turns
the JSON into docs/RESULTS.md's GPU section.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from speed import IPC_SETTINGS, REFERENCE_DRIVER_HEAD, REFERENCE_TRAINING_DATA, Popen, child_env

REPO = Path(__file__).resolve().parents[1]
FAST_CONFIG = "cifar10_ipc10_fast"
PACKAGES = ("torchvision", "datasets", "pyarrow", "fsspec", "huggingface_hub", "accelerate", "timm",
            "safetensors", "numpy", "scipy", "kornia", "dill", "multiprocess")  # fmt: skip
EVAL_MODELS = {"convnet_d3": "ConvNet", "resnet18_cifar": "ResNet18"}  # pdd-hub name: the reference's
RESERVE_S = 10  # kept back from --budget for writing the results
TINY_BUDGET_SCALE = 4  # a CPU under --tiny is slower than the GPU the item budgets are set for


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the paper's sizes on a GPU, a few images under ``--tiny``."""

    iterations: int  # timed distillation iterations of pdd-hub
    warmups: int  # untimed iterations before them
    reference_iterations: int  # distill_mtt.py --Iteration (iterations 0 and 1 are not timed)
    stacked_experts: int
    eval_seeds: int
    eval_epochs: int
    unions: dict[str, int]  # images in the union of 5 stages
    eval_image: int  # their height and width (the reference's always 32: its ResNets need it)
    eval_models: dict[str, str]  # pdd-hub's name: the reference's
    run: tuple[str, ...] = ()  # config overrides of pdd-hub's benchmark runs (not the pipeline)
    settings: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # ipc, steps, start, epochs
    pipeline: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()  # of the pipeline's final `pdd-hub eval`
    reference_per_class: int | None = None  # training images per class in the reference's copy


FULL = Sizes(
    iterations=5, warmups=2, reference_iterations=7, stacked_experts=10, eval_seeds=5, eval_epochs=20,
    unions={"ipc10": 100, "ipc50": 500}, eval_image=32, eval_models=EVAL_MODELS, run=("val_per_class=1",),
    settings={name: (ipc, steps, start, 2) for name, (_, ipc, steps, start) in IPC_SETTINGS.items()},
)  # fmt: skip
TINY_RUN = ("val_per_class=2", "train_per_class=10", "experts.num_experts=2", "experts.epochs=3")
TINY = Sizes(
    iterations=1, warmups=0, reference_iterations=3, stacked_experts=2, eval_seeds=2, eval_epochs=1,
    unions={"ipc10": 10}, eval_image=8, eval_models={"convnet_d1": "ConvNetD1", "resnet10_cifar": "ResNet10"},
    run=TINY_RUN, settings={"ipc10": (1, 2, 1, 1), "ipc50": (2, 2, 1, 1)},
    pipeline=(*TINY_RUN, "num_stages=2", "iterations=2", "mtt.syn_steps=2", "mtt.max_start_epoch=1",
              "mtt.expert_epochs=1", "transition.syn_epochs=2", "eval.every=2", "eval.num_models=1",
              "eval.epochs=2", "train_epochs_per_stage=2", "log_every=1"),
    eval_args=("--epochs-per-stage", "2"), reference_per_class=50,
)  # fmt: skip


# --- what a child prints -------------------------------------------------------------------------
def emit(tag: str, record: dict) -> None:
    """One line of a child's output that the parent reads back (``ROW``, ``EVENT``, ``PLAN``)."""
    print(f"{tag} {json.dumps(record)}", flush=True)


def tagged(out: str, tag: str) -> list[dict]:
    """The records a child printed under ``tag`` (a line cut by a kill is skipped)."""
    records = []
    for line in out.splitlines():
        if line.startswith(tag + " "):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line[len(tag) + 1 :]))
    return records


def rows_of(out: str) -> dict[str, dict]:
    return {row.pop("key"): row for row in tagged(out, "ROW")}


# --- the parent ------------------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    deadline: float

    @property
    def env(self) -> dict[str, str]:
        """The children's environment: this repository importable, the same CPU threads for every
        process once the env item has counted the cores."""
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        if self.args.threads is None:
            return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        return {**child_env(self.args.threads), "PYTHONPATH": path}

    @property
    def work(self) -> Path:
        return Path(self.args.work).resolve()

    @property
    def reference_data(self) -> Path:
        return self.work / "reference_data"

    def child_cmd(self, name: str) -> list[str]:
        cmd = [sys.executable, __file__, "--child", name, "--data", self.args.data, "--work", str(self.work)]
        return [*cmd, "--tiny"] if self.args.tiny else cmd


def run_process(
    cmd: list[str], env: dict[str, str], budget: float, cwd: Path | None = None
) -> tuple[dict, str]:
    """Run ``cmd`` for at most ``budget`` seconds; its status, wall and CPU time, peak resident memory,
    and its stdout (what it printed before a kill too)."""
    start = time.perf_counter()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with Popen(cmd, env=env, cwd=cwd, start_new_session=True, **pipes) as proc:
        try:
            out, err = proc.communicate(timeout=max(1.0, budget))
            status = "done" if proc.returncode == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            status = "timeout"
    usage = getattr(proc, "rusage", None)
    result = {
        "status": status,
        "budget_s": round(budget, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "process_peak_rss_gib": round(usage.ru_maxrss / 2**20, 3) if usage else None,
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 1) if usage else None,
    }
    if status != "done":
        result["stderr_tail"] = err[-3000:]
    return result, out


def child_item(name: str) -> Callable[[Context, float], dict]:
    """An item measured by ``gpu.py --child NAME`` (pdd-hub's side)."""

    def run(ctx: Context, budget: float) -> dict:
        result, out = run_process(ctx.child_cmd(name), ctx.env, budget)
        return {**result, "rows": rows_of(out)}

    return run


def env_item(ctx: Context, budget: float) -> dict:
    """The versions; the reference's drivers run on the GPU if this child saw one, and every process
    uses the physical cores it counted unless ``--threads`` says otherwise."""
    result = child_item("env")(ctx, budget)
    env = result["rows"].get("env", {})
    ctx.args.device = "cpu" if env.get("device", "cpu") == "cpu" else "cuda"
    ctx.args.threads = ctx.args.threads or env.get("physical_cores") or os.cpu_count()
    return result


def reference_driver(
    ctx: Context, name: str, body: str, budget: float, cwd: Path, **fields
) -> tuple[dict, str]:
    """Run a driver script (the shared head, timing helpers, then ``body``) in the reference's
    interpreter with the reference on its path."""
    driver = ctx.work / f"{name}_driver.py"
    head = REFERENCE_DRIVER_HEAD.format(
        reference=str(Path(ctx.args.reference).resolve()), threads=ctx.args.threads, device=ctx.args.device
    )
    driver.write_text(head + REFERENCE_TIMING + body.format(data=str(ctx.reference_data), **fields))
    cwd.mkdir(parents=True, exist_ok=True)
    return run_process([ctx.args.reference_python, "-u", str(driver)], ctx.env, budget, cwd=cwd)


def reference_item(name: str, body: str, **fields) -> Callable[[Context, float], dict]:
    def run(ctx: Context, budget: float) -> dict:
        result, out = reference_driver(ctx, name, body, budget, ctx.work, **fields)
        return {**result, "rows": rows_of(out)}

    return run


def reference_iteration(ctx: Context, budget: float) -> dict:
    """Stand-in trajectories for the reference, then its ``distill_mtt.py`` at each setting."""
    deadline = time.perf_counter() + budget
    work = ctx.work / "reference_iteration"
    epochs = max(start + expert + 1 for _, _, start, expert in ctx.sizes.settings.values())
    buffers, _ = reference_driver(ctx, "buffers", REFERENCE_BUFFERS, budget, work, epochs=epochs)
    result = {**buffers, "rows": {}}
    if buffers["status"] != "done":
        return result
    for setting, (ipc, steps, start, expert) in ctx.sizes.settings.items():
        cmd = [
            ctx.args.reference_python, "-u", str(Path(ctx.args.reference).resolve() / "distill_mtt.py"),
            "--dataset=CIFAR10", "--model=ConvNet", f"--ipc={ipc}", f"--syn_steps={steps}",
            f"--expert_epochs={expert}", f"--max_start_epoch={start}", "--zca", "--lr_img=1000",
            "--lr_lr=1e-07", "--lr_teacher=0.01", "--num_intervals=1",
            f"--Iteration={ctx.sizes.reference_iterations}", "--num_eval=1", "--eval_it=100000",
            "--epoch_eval_train=1", "--override_epoch_eval_train=1", f"--data_path={ctx.reference_data}",
            f"--tag=gpu_{setting}_{time.time_ns()}",
        ]  # fmt: skip
        part, out = run_process(cmd, ctx.env, deadline - time.perf_counter(), cwd=work)
        timed = [row for row in tagged(out, "PDD_HUB_ITERATION") if row["iteration"] >= 2]
        if timed:
            result["rows"][setting] = reference_iteration_row(timed, part)
        result["wall_s"] = round(result["wall_s"] + part["wall_s"], 1)
        if part["status"] != "done":
            return {**result, "status": part["status"], "stderr_tail": part.get("stderr_tail")}
    return result


def reference_iteration_row(timed: list[dict], process: dict) -> dict:
    """The median of the reference's timed iterations, and their peak CUDA memory (on a CPU: the
    process's peak resident set)."""
    peak = max(row["peak_memory_gib"] or 0 for row in timed)  # None on a CPU
    if peak:
        memory = {
            "peak_memory_gib": peak,
            "resident_gib": timed[-1]["resident_gib"],
            "memory": "cuda_max_allocated",
        }
    else:
        memory = {"peak_memory_gib": process["process_peak_rss_gib"], "memory": "process_peak_rss"}
    seconds = statistics.median(row["seconds"] for row in timed)
    return {"seconds_per_iteration": seconds, "iterations": len(timed), **memory}


def pipeline_item(ctx: Context, budget: float) -> dict:
    result, out = run_process(ctx.child_cmd("pipeline"), ctx.env, budget)
    return {**result, **pipeline_phases(out, result["wall_s"]), "rows": rows_of(out)}


def pipeline_phases(out: str, wall: float) -> dict:
    """Each planned phase of the pipeline child: its seconds, or how far it got before the kill;
    the seconds per iteration and validation accuracy of each stage, from its log lines."""
    plan = (tagged(out, "PLAN") or [{"phases": []}])[0]["phases"]
    began = {e["phase"]: e["t"] for e in tagged(out, "EVENT") if e["event"] == "begin"}
    ended = {e["phase"]: e["t"] for e in tagged(out, "EVENT") if e["event"] == "end"}
    phases = []
    for phase in plan:
        if phase in ended:
            phases.append(
                {"phase": phase, "status": "done", "seconds": round(ended[phase] - began[phase], 2)}
            )
        elif phase in began:
            phases.append({"phase": phase, "status": "unfinished", "seconds": round(wall - began[phase], 2)})
        else:
            phases.append({"phase": phase, "status": "not started", "seconds": None})
    per_iteration: dict[str, list[float]] = {}
    val_acc = {}
    for record in tagged(out, "LOG"):
        if match := re.match(r"stage (\d+) it \d+: loss .*\(([\d.]+)s/it\)", record["msg"]):
            per_iteration.setdefault(match[1], []).append(float(match[2]))
        elif match := re.match(r"stage (\d+) finished: val acc ([\d.]+)", record["msg"]):
            val_acc[match[1]] = float(match[2])
    return {
        "phases": phases,
        "seconds_per_iteration": {k: statistics.median(v) for k, v in per_iteration.items()},
        "val_acc": val_acc,
    }


@dataclass(frozen=True)
class Item:
    name: str
    budget: float  # at most this many seconds (the pipeline: whatever is left)
    run: Callable[[Context, float], dict]
    reference: bool = False  # needs --reference
    tiny: bool = True  # runs under --tiny


def measure_all(ctx: Context, results: dict, items: list[Item]) -> None:
    """Each item in turn, within its budget and what is left of the run's; saved after each."""
    for item in items:
        left = ctx.deadline - time.perf_counter()
        skip = skip_reason(ctx.args, item, left)
        if skip:
            results["items"][item.name] = {"status": "skipped", "reason": skip}
        else:
            scale = TINY_BUDGET_SCALE if ctx.args.tiny else 1
            budget = left if item.name == "pipeline" else min(item.budget * scale, left)
            print(f"{item.name}: up to {budget:.0f} s", flush=True)
            results["items"][item.name] = item.run(ctx, budget)
            print(
                f"{item.name}: {results['items'][item.name]['status']} "
                f"in {results['items'][item.name]['wall_s']:.1f} s",
                flush=True,
            )
        results["threads"] = ctx.args.threads
        save(ctx.args.output, results)


def skip_reason(args: argparse.Namespace, item: Item, left: float) -> str | None:
    if item.name != "env" and not re.search(args.only, item.name):  # env: every run's device and threads
        return "not selected by --only"
    if item.reference and not args.reference:
        return "no --reference given"
    if args.tiny and not item.tiny and not args.only:
        return "not run under --tiny unless --only names it: compiling takes minutes on a CPU"
    return "no time left in --budget" if left < 5 else None


def save(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


# --- the reference's drivers ---------------------------------------------------------------------
# The timing helpers every driver shares (taken as they are), then its body (str.format: literal braces
# doubled).
REFERENCE_TIMING = """
import resource
import torch.utils.data


def synchronized():
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def memory_start():
    if args.device != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def memory_row(resident):
    if args.device != "cuda":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return {"peak_memory_gib": rss, "memory": "process_peak_rss"}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "resident_gib": resident / 2**30,
            "memory": "cuda_max_allocated"}


def emit(key, row):
    print("ROW " + json.dumps({"key": key, **row}), flush=True)

"""

REFERENCE_BUFFERS = """
import os
net = get_network("ConvNet", 3, 10, (32, 32))
g = torch.Generator().manual_seed(0)
trajectory = [[p.detach().cpu() for p in net.parameters()]]
for _ in range({epochs}):  # a random walk: the values do not change the cost of an iteration
    trajectory.append([p + 1e-3 * torch.randn(p.shape, generator=g) for p in trajectory[-1]])
os.makedirs("buffers/CIFAR10/ConvNet", exist_ok=True)
torch.save([trajectory], "buffers/CIFAR10/ConvNet/replay_buffer_0.pt")
emit("buffers", {{"epochs": {epochs}}})
"""

REFERENCE_EXPERT = (
    REFERENCE_TRAINING_DATA
    + """
net = get_network("ConvNet", channel, num_classes, im_size)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0, weight_decay=0)
criterion = torch.nn.CrossEntropyLoss().to(args.device)
start = synchronized()
epoch("train", loader(256 + len(images) % 256), net, optimizer, criterion, args, aug=True)  # warm-up
warm = synchronized() - start
resident = memory_start()
start = synchronized()
epoch("train", loader(len(images)), net, optimizer, criterion, args, aug=True)
emit("one/fp32", {{"seconds": synchronized() - start, "examples": len(images), "warm_up_seconds": warm,
                  **memory_row(resident)}})
"""
)

REFERENCE_EVALUATION = """
for name, model in {models!r}.items():
    for union, count in {unions!r}.items():
        g = torch.Generator().manual_seed(0)
        images = torch.randn(count, 3, 32, 32, generator=g)
        labels = torch.arange(10).repeat_interleave(count // 10)
        test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:10], labels[:10]))
        args.epoch_eval_train = 0  # warm-up: one epoch
        evaluate_synset(0, get_network(model, 3, 10, (32, 32)), images, labels, test, args)
        args.epoch_eval_train = {epochs} - 1  # evaluate_synset trains epoch_eval_train + 1 epochs
        net = get_network(model, 3, 10, (32, 32))
        resident = memory_start()
        start = synchronized()
        evaluate_synset(0, net, images, labels, test, args)
        seconds = synchronized() - start
        row = {{"seconds_per_epoch": seconds / {epochs}, "epochs": {epochs}, "images": count}}
        emit(f"{{name}}/{{union}}", {{**row, **memory_row(resident)}})
"""


def items(sizes: Sizes) -> list[Item]:
    """Every item, in the order they run, with its budget on a GPU in seconds."""
    evaluation = functools.partial(
        reference_item,
        "evaluation",
        REFERENCE_EVALUATION,
        models=sizes.eval_models,
        unions=sizes.unions,
        epochs=sizes.eval_epochs,
    )
    return [
        Item("env", 45, env_item),
        Item("reference_data", 60, child_item("reference_data"), reference=True),
        Item("iteration_ours", 75, child_item("iteration")),
        Item("iteration_reference", 120, reference_iteration, reference=True),
        Item("expert_epoch_ours", 60, child_item("expert")),
        Item("expert_epoch_reference", 60, reference_item("expert", REFERENCE_EXPERT), reference=True),
        Item("evaluation_ours", 60, child_item("evaluation")),
        Item("evaluation_reference", 45, evaluation(), reference=True),
        Item("compile", 75, child_item("compile"), tiny=False),
        Item("pipeline", 0, pipeline_item),
    ]


# --- the children: pdd-hub's side ----------------------------------------------------------------
def child_env_info(args: argparse.Namespace) -> None:
    import platform
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from pdd_hub.runtime import physical_cores_available

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": "cpu",
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            driver=nvidia_driver(),
        )
    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            packages[name] = version(name)
    info["packages"] = packages
    errors = {}
    for module in ("datasets", "pdd_hub", "kornia"):
        try:
            import_module(module)
        except Exception as exc:  # reported, not raised: the items that need it fail on their own
            errors[module] = repr(exc)
    emit("ROW", {"key": "env", **info, "import_errors": errors})


def cpu_model() -> str:
    import platform

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor(),
    )


def nvidia_driver() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or None
    return None


def child_reference_data(args: argparse.Namespace, sizes: Sizes) -> None:
    """``--data`` in torchvision's CIFAR-10 layout (``cifar-10-batches-py``), as the reference reads it."""
    import datasets

    from pdd_hub.data.sources import decode_split, default_cache_dir, detect_columns

    splits = datasets.load_dataset(args.data)
    columns = detect_columns(splits["train"], None, None, args.data)
    train = decode_split(splits["train"], *columns, default_cache_dir())
    test = decode_split(splits["test"], *columns, default_cache_dir(), class_names=train.class_names)
    if sizes.reference_per_class:
        per_class = sizes.reference_per_class
        train = train.subset(train.sample_per_class(per_class, torch_generator(0)).sort().values)
        test = test.subset(test.sample_per_class(max(1, per_class // 5), torch_generator(1)).sort().values)
    folder = Path(args.work) / "reference_data"
    write_torchvision_cifar10(folder, train, test)
    emit("ROW", {"key": "cifar10", "train": len(train.labels), "test": len(test.labels), "path": str(folder)})


def torch_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def write_torchvision_cifar10(folder: Path, train, test) -> None:
    """Write ``train`` / ``test`` (uint8 ``[N, 3, 32, 32]`` image sets) as torchvision reads CIFAR-10:
    five training batches, a test batch and the class names, pickled."""
    import pickle

    import numpy as np

    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images, labels) -> None:
        data = np.ascontiguousarray(images.numpy().reshape(len(images), -1))  # channel-major rows
        with open(out / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(y) for y in labels]}, f)

    parts = np.array_split(np.arange(len(train.labels)), 5)
    for k, part in enumerate(parts, start=1):
        dump(f"data_batch_{k}", train.images[part], train.labels[part])
    dump("test_batch", test.images, test.labels)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(train.class_names)}, f)


def make_run(args: argparse.Namespace, sizes: Sizes, config: str, *overrides: str):
    """A pdd-hub run of ``config`` on ``--data`` (its data on the device), in a fresh folder."""
    from pdd_hub.config import parse_recipe_args
    from pdd_hub.run import RunFolder, prepare_data
    from pdd_hub.runtime import make_accelerator

    folder = Path(tempfile.mkdtemp(dir=args.work))
    argv = ["--config", config, f"dataset={args.data}", f"output_dir={folder}", "progress=false",
            *sizes.run, *overrides]  # fmt: skip
    # one ZCA fit for every benchmark run of this data (the same split and settings): a run loads the
    # preprocessing it finds in its folder
    key = hashlib.sha256(json.dumps([args.data, sizes.run]).encode()).hexdigest()[:12]
    shared = Path(args.work) / f"preprocess_{key}"
    if shared.exists():
        shutil.copytree(shared, folder, dirs_exist_ok=True)
    run = prepare_data(RunFolder.claim(parse_recipe_args(argv), make_accelerator()))
    if not shared.exists():
        shared.mkdir()
        for path in run.layout.preprocess_files:
            if path.exists():
                shutil.copy(path, shared)
    return run, argv


def setting_overrides(sizes: Sizes, setting: str) -> list[str]:
    ipc, steps, start, expert = sizes.settings[setting]
    return [
        f"ipc_per_stage={ipc}",
        f"mtt.syn_steps={steps}",
        f"mtt.max_start_epoch={start}",
        f"mtt.expert_epochs={expert}",
    ]


def child_iteration(args: argparse.Namespace, sizes: Sizes) -> None:
    """pdd-hub's iteration at each setting: both memory modes, fp32 and bf16 (one run's data each)."""
    import torch
    from iteration import measure

    from pdd_hub.config import parse_recipe_args

    for setting, (config, *_) in IPC_SETTINGS.items():
        run, argv = make_run(args, sizes, config, *setting_overrides(sizes, setting))
        for memory in ("unrolled", "constant"):
            for precision in ("fp32", "bf16"):
                row = parse_recipe_args([*argv, f"mtt.memory={memory}", f"mtt.precision={precision}"])
                emit(
                    "ROW",
                    {
                        "key": f"{setting}/{memory}/{precision}",
                        **measure(row, run, 1, sizes.iterations, sizes.warmups),
                    },
                )
        del run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def synchronized(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def expert_epoch(run, precision: str, count: int, compile: bool) -> dict:
    """One epoch of ``count`` experts (stacked when more than one) on the run's training set, after a
    warm-up on a full and a last partial batch (kernel choice; the compilation with ``compile``)."""
    import torch
    from iteration import peak_memory, reset_peak_memory

    from pdd_hub.methods.experts import ExpertGroup, ExpertTraining
    from pdd_hub.networks import as_networks
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime

    cfg, device = run.config, run.device
    models = [
        build_network(cfg.model, run.num_classes, run.image_shape, seed=k).to(device) for k in range(count)
    ]
    networks = as_networks(models, compile)
    training = ExpertTraining(cfg.experts.recipe(), run.augment, runtime=TrainingRuntime(precision=precision))
    group = ExpertGroup(Path(tempfile.mkdtemp(dir=cfg.output_dir)), list(range(count)), training)
    optimizer = torch.optim.SGD(networks.parameters(), lr=cfg.experts.lr)
    generators = [torch_generator(k) for k in range(count)]
    pool = torch.arange(len(run.train), device=device)
    batch = cfg.experts.batch_size

    def epoch(indices) -> float:
        start = synchronized(device)
        group.epoch(networks, optimizer, run.train.images, run.train.labels, indices, generators)
        return synchronized(device) - start

    warm = epoch(pool[: min(len(pool), batch + len(pool) % batch)])
    resident = reset_peak_memory(device)
    seconds = epoch(pool)
    return {
        "seconds": seconds,
        "seconds_per_expert": seconds / count,
        "experts": count,
        "examples": len(pool),
        "warm_up_seconds": warm,
        **peak_memory(device, resident),
    }


def evaluation_epochs(model: str, images, labels, sizes: Sizes, variant: tuple[bool, str, bool]) -> dict:
    """``sizes.eval_epochs`` training epochs of ``sizes.eval_seeds`` fresh networks on ``images``,
    after one warm-up epoch of other networks; ``variant``: (batched, precision, compile)."""
    from iteration import peak_memory, reset_peak_memory

    from pdd_hub.augment import build_augment
    from pdd_hub.networks import can_batch
    from pdd_hub.params import build_network
    from pdd_hub.runtime import TrainingRuntime
    from pdd_hub.schedule import SGDRecipe
    from pdd_hub.train import Augmentation, StagePlan, train_many

    batched, precision, compile = variant
    runtime = TrainingRuntime(precision=precision, batched=batched, compile=compile)
    device = images.device

    def train(epochs: int, first_seed: int) -> tuple[float, bool]:
        models = [
            build_network(model, 10, tuple(images.shape[1:]), seed=first_seed + s).to(device)
            for s in range(sizes.eval_seeds)
        ]
        plan = StagePlan("union", images, labels, SGDRecipe(lr=0.01, epochs=epochs))
        start = synchronized(device)
        train_many(models, [plan], generators=[torch_generator(s) for s in range(len(models))],
                   augmentation=Augmentation(build_augment("dsa")), runtime=runtime)  # fmt: skip
        return synchronized(device) - start, batched and can_batch(models[0])

    warm, _ = train(1, 100)
    resident = reset_peak_memory(device)
    seconds, stacked = train(sizes.eval_epochs, 0)
    per_epoch = seconds / sizes.eval_epochs
    return {
        "seconds_per_epoch": per_epoch,
        "seconds_per_seed_epoch": per_epoch / sizes.eval_seeds,
        "images": len(images),
        "seeds": sizes.eval_seeds,
        "epochs": sizes.eval_epochs,
        "stacked": stacked,
        "warm_up_seconds": warm,
        **peak_memory(device, resident),
    }


def union_images(count: int, size: int, device):
    import torch

    images = torch.randn(count, 3, size, size, generator=torch_generator(0)).to(device)
    return images, torch.arange(10).repeat_interleave(count // 10).to(device)


def child_expert(args: argparse.Namespace, sizes: Sizes, variants: list[tuple[str, int, bool]]) -> None:
    run, _ = make_run(args, sizes, IPC_SETTINGS["ipc10"][0], *setting_overrides(sizes, "ipc10"))
    for precision, count, compile in variants:
        key = ("one" if count == 1 else f"stacked{count}") + f"/{precision}" + ("/compile" if compile else "")
        emit("ROW", {"key": key, **expert_epoch(run, precision, count, compile)})


def child_evaluation(
    args: argparse.Namespace,
    sizes: Sizes,
    variants: list[tuple[bool, str, bool]],
    models: tuple[str, ...] = (),
    unions: tuple[str, ...] = (),
) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in models or sizes.eval_models:
        for union in unions or sizes.unions:
            images, labels = union_images(sizes.unions[union], sizes.eval_image, device)
            for variant in variants:
                batched, precision, compile = variant
                key = f"{model}/{union}/{'batched' if batched else 'unbatched'}/{precision}"
                key += "/compile" if compile else ""
                emit("ROW", {"key": key, **evaluation_epochs(model, images, labels, sizes, variant)})


# --- the pipeline child ----------------------------------------------------------------------------
class PhaseClock:
    """Prints when each phase of the pipeline begins and ends (seconds since the child started)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def event(self, phase: str, event: str) -> None:
        emit("EVENT", {"phase": phase, "event": event, "t": round(time.perf_counter() - self.start, 3)})

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.event(name, "begin")
        yield
        self.event(name, "end")

    def wrap(self, fn: Callable, name_of: Callable[..., str]) -> Callable:
        """``fn`` (a function, bound method or class), its calls timed as phase ``name_of(*args)``."""

        def timed(*args, **kwargs):
            with self.phase(name_of(*args, **kwargs)):
                return fn(*args, **kwargs)

        return timed


class LogLines(logging.Handler):
    """pdd-hub's log messages as ``LOG`` lines (seconds per iteration, validation accuracy)."""

    def __init__(self, clock: PhaseClock) -> None:
        super().__init__(logging.INFO)
        self.clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        emit("LOG", {"t": round(time.perf_counter() - self.clock.start, 3), "msg": record.getMessage()})


def instrument(clock: PhaseClock) -> None:
    """Time the pipeline's phases by wrapping the functions ``run_pdd`` calls (this child only)."""
    from pdd_hub import progressive

    progressive.prepare_data = clock.wrap(progressive.prepare_data, lambda *a, **k: "setup")
    progressive.distil_one_stage = clock.wrap(
        progressive.distil_one_stage, lambda run, distiller, stage, *a, **k: f"stage {stage}"
    )
    progressive.transition = clock.wrap(
        progressive.transition, lambda run, distiller, stage, *a, **k: f"transition {stage - 1}->{stage}"
    )
    build = progressive.build_distiller

    def build_timed(*args, **kwargs):
        distiller = build(*args, **kwargs)
        distiller.begin_stage = clock.wrap(distiller.begin_stage, lambda ctx: f"stage {ctx.stage} experts")
        return distiller

    progressive.build_distiller = build_timed


def child_pipeline(args: argparse.Namespace, sizes: Sizes) -> None:
    """The fast CIFAR-10 pipeline, then its evaluation, with every phase's begin and end printed."""
    from pdd_hub import cli, progressive
    from pdd_hub.config import parse_recipe_args
    from pdd_hub.recipe import build_accelerator
    from pdd_hub.runtime import configure_threads

    folder = Path(args.work) / "pipeline"
    shutil.rmtree(folder, ignore_errors=True)  # from the start: a resumed run would time only its rest
    config = parse_recipe_args(["--config", FAST_CONFIG, f"dataset={args.data}", f"output_dir={folder}",
                                "progress=false", *sizes.pipeline])  # fmt: skip
    configure_threads(config.num_threads)
    stages = range(1, config.num_stages + 1)
    plan = ["setup"] + [f"stage {k}{part}" for k in stages for part in (" experts", "")]
    plan += [f"transition {k}->{k + 1}" for k in stages if k < config.num_stages]
    emit("PLAN", {"phases": [*sorted(plan, key=plan_order), "final evaluation"]})
    clock = PhaseClock()
    logging.getLogger("pdd_hub").addHandler(LogLines(clock))
    logging.getLogger("pdd_hub").setLevel(logging.INFO)
    instrument(clock)
    dataset = progressive.run_pdd(config, build_accelerator(config))
    report = folder / "eval.json"
    with clock.phase("final evaluation"):
        cli.main([
            "eval", str(dataset), "--real", args.data, "--model", config.model,
            "--seeds", str(sizes.eval_seeds), "--batched", "--precision", config.precision,
            "--output", str(report), "--no-resume", *sizes.eval_args,
        ])  # fmt: skip
    emit("ROW", {"key": "final_evaluation", **json.loads(report.read_text())})


def plan_order(phase: str) -> tuple[int, int]:
    """Phases in the order they run: setup, then per stage its experts, the stage, the transition."""
    if phase == "setup":
        return (0, 0)
    numbers = [int(n) for n in re.findall(r"\d+", phase)]
    rank = 2 if phase.startswith("transition") else (0 if phase.endswith("experts") else 1)
    return (numbers[0], rank)


def run_child(args: argparse.Namespace) -> None:
    from pdd_hub.runtime import configure_threads

    sizes = TINY if args.tiny else FULL
    precisions = ("fp32", "bf16")
    if args.child == "env":
        return child_env_info(args)
    configure_threads()
    if args.child == "reference_data":
        return child_reference_data(args, sizes)
    if args.child == "iteration":
        return child_iteration(args, sizes)
    if args.child == "expert":
        variants = [(p, count, False) for count in (1, sizes.stacked_experts) for p in precisions]
        return child_expert(args, sizes, variants)
    if args.child == "evaluation":
        return child_evaluation(args, sizes, [(b, p, False) for b in (False, True) for p in precisions])
    if args.child == "compile":  # bf16 first: the likelier GPU default, if the budget cuts the rest
        child_expert(args, sizes, [(p, 1, True) for p in reversed(precisions)])
        compiled = [(False, p, True) for p in reversed(precisions)]
        return child_evaluation(args, sizes, compiled, tuple(sizes.eval_models)[:1], ("ipc10",))
    return child_pipeline(args, sizes)


# --- the command line ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 in Hub layout (a folder); sklearn:digits too")
    parser.add_argument("--reference", help="a copy of VITA-Group/ProgressiveDD (reference_patch.py)")
    parser.add_argument("--reference-python", default=sys.executable, help="the reference's interpreter")
    parser.add_argument("--output", default="runs/gpu/gpu.json")
    parser.add_argument("--work", default="runs/gpu/work", help="scratch folder (runs, the reference's data)")
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole run (default 450)")
    parser.add_argument("--only", default="", help="run only the items matching this regex (and env)")
    parser.add_argument("--threads", type=int, help="CPU threads per process (default: physical cores)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test on a CPU")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    start = time.perf_counter()
    args.device = "cpu"  # until the env item has seen a GPU
    Path(args.work).mkdir(parents=True, exist_ok=True)
    sizes = TINY if args.tiny else FULL
    ctx = Context(args, sizes, deadline=start + args.budget - RESERVE_S)
    results = {
        "schema": 1,
        "mode": "tiny" if args.tiny else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget_s": args.budget,
        "threads": args.threads,
        "git_commit": git_commit(),
        "reference_commit": reference_commit(args.reference),
        "command": " ".join(sys.argv),
        "sizes": dataclasses.asdict(sizes),
        "items": {},
    }
    measure_all(ctx, results, items(sizes))
    results["wall_s"] = round(time.perf_counter() - start, 1)
    save(args.output, results)
    print(f"wrote {args.output} after {results['wall_s']:.0f} s")


def git_commit() -> str | None:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or None


def reference_commit(reference: str | None) -> str | None:
    marker = Path(reference) / "REFERENCE_COMMIT" if reference else None
    return marker.read_text().strip() if marker and marker.exists() else None


if __name__ == "__main__":
    main()
