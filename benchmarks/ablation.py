"""Does PDD make each base method better? One command for issue 19's ablation: cached, resumable.

    python benchmarks/ablation.py --protocol cpu --only dm            # run (or resume) DM's rows
    python benchmarks/ablation.py --protocol cpu --report docs/RESULTS.md   # tables from what exists
    python benchmarks/ablation.py --protocol tiny --out /tmp/abl      # seconds per row (CI)

For every base method X (``--only`` picks some), starting from PDD + X at its shipped setting and
varying one factor at a time:

* ``alone``: X alone, one stage of P x IPC images per class with the per-stage iterations of the
  PDD rows (the same updates per image), evaluated at its own epochs E *and* at P x E, the SGD steps
  the progressive schedule gives PDD in all (at <= 256 images an epoch is one step);
* ``alone+init=unforgettable``: the same, started from each class's least-forgotten examples: the
  one-stage control for forgetting bands, whose first stage starts from (and learns) the easiest;
* ``source=S``: PDD + X with each loss-network source S (pdd_hub.loss_networks) from stage 2; the
  shipped one (for MTT, which draws no loss networks, the row ``pdd``) is evaluated with random real
  images at the same storage beside it;
* ``<shipped>+budget=total``: the same total iterations split over the stages (N / P each);
* ``alone+iterations=M`` and ``<shipped>+iterations=M``: both sides at ``longer`` times the
  per-stage iterations (did the budget converge, and does the comparison move with it?), and
  ``alone+iterations=M+init=unforgettable``, the control at that budget;
* ``<shipped>+init=sensitivity``, ``+importance`` (weighted), ``+importance=none`` (unweighted) and
  ``+forgetting=band``: the subset-selection features against the plain shipped row, and the same
  four as ``<shipped>+iterations=M+<feature>`` against the longer-budget row (the budget MTT, DSA
  and DC ship).

Every distillation is a ``pdd-hub distill`` run in ``OUT/PROTOCOL/X/ROW`` (re-running resumes it from
its checkpoints), every evaluation a ``pdd-hub eval`` whose JSON is kept (a finished one is skipped,
an interrupted one reuses its finished seeds). A finished row's results (its evaluations' summaries,
validation curves and wall times; a killed distillation's time counts up to its log's last write)
are kept as one small JSON in ``--records`` (``benchmarks/results/PROTOCOL/X/ROW.json``,
committed), so the report does not depend on the run folders surviving. ``--report FILE`` writes
the tables and each method's validation curves, from those records, between the markers
``<!-- ablation:PROTOCOL:begin/end -->`` of FILE.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pdd_hub.config import PDDConfig, load_config, resolve_config
from pdd_hub.errors import CorruptStateError, PDDError
from pdd_hub.io import load_json, read_json, save_json
from pdd_hub.runtime import physical_cores_available
from pdd_hub.validate import positive_int

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results"
SOURCES = ("start_states", "random", "perturbed", "retrained", "mixed")
NETWORK_METHODS = ("dm", "dc", "dsa", "idc")  # the methods whose loss draws networks
CONTROL = "+init=unforgettable"  # X alone's row-key suffix beside PDD + X with forgetting bands


@dataclass(frozen=True)
class Protocol:
    """Where the ablation runs: data, scale, and each method's settings at that scale."""

    name: str
    dataset: str
    common: tuple[str, ...]  # overrides of every run
    methods: dict[str, tuple[str, ...]]  # method -> its shipped config name and its overrides
    num_stages: int
    ipc: int
    iterations: dict[str, int]  # per stage, per method
    eval_epochs: int
    seeds: int
    model: str
    scoring: tuple[str, ...]  # overrides of the runs that train scoring networks
    select: tuple[str, ...] = ()  # `pdd-hub select` arguments of the selection rows (data, scoring)
    eval_args: tuple[str, ...] = ()  # extra `pdd-hub eval` arguments (e.g. the image size)
    longer: int = 3  # the longer-budget rows: this many times the iterations, on both sides


def cpu_protocol() -> Protocol:
    """CIFAR-10 at 16 x 16 px from 500 real training images per class, 5 stages x 2 IPC, ConvNet-D3:
    small enough for the budgets to converge on 2 CPU cores (docs/RESULTS.md, issue 19)."""
    common = (
        "image_size=16",
        "train_per_class=500",
        "val_per_class=50",
        "train_epochs_per_stage=300",
        "transition.syn_epochs=300",
        "eval.every=50",
        "eval.num_models=2",
        "eval.epochs=300",
        "log_every=25",
        "checkpoint_every=25",
        "progress=false",
        # a row names every subset-selection feature it turns on, whatever a config ships
        "init=real",
        "real_sampling=uniform",
        "forgetting.mode=off",
    )
    methods = {
        "dm": ("cifar10_dm_cpu", "dm.batch_real=64"),
        "dsa": ("cifar10_dsa_cpu",),
        "dc": ("cifar10_dc_cpu",),
        "idc": ("cifar10_idc_cpu",),
        "mtt": ("cifar10_cpu", "train_per_class=500"),
    }
    iterations = {"dm": 300, "dsa": 100, "dc": 100, "idc": 100, "mtt": 100}
    scoring = ("scoring.runs=2", "scoring.epochs=30", "sensitivity.clusters=10")
    select = (
        "--train-per-class",
        "500",
        "--image-size",
        "16",
        "--scoring",
        "runs=2",
        "--scoring",
        "epochs=30",
    )
    return Protocol(
        "cpu", str(REPO.parent / "shared/datasets/cifar10"), common, methods, 5, 2, iterations, 300, 3,
        "convnet_d3", scoring, select, ("--image-size", "16"),
    )  # fmt: skip


def tiny_protocol() -> Protocol:
    """The embedded digits, 2 stages x 1 IPC, a handful of iterations: the harness end to end (CI)."""
    common = (
        "model=convnet_d1",
        "val_per_class=20",
        "train_epochs_per_stage=3",
        "train_batch_size=32",
        "transition.syn_epochs=3",
        "eval.every=2",
        "eval.num_models=1",
        "eval.epochs=3",
        "experts.num_experts=2",
        "experts.epochs=2",
        "checkpoint_every=2",
        "progress=false",
    )
    small = {
        "dm": ("dm.batch_real=8", "dm.num_networks=2"),
        "dc": ("dc.batch_real=8", "dc.outer_loop=2", "dc.inner_loop=1", "dc.num_networks=2"),
        "dsa": ("dsa.batch_real=8", "dsa.outer_loop=2", "dsa.inner_loop=1", "dsa.num_networks=2"),
        "idc": ("idc.batch_real=8", "idc.n_data=16", "idc.inner_loop=2", "idc.num_networks=2"),
        "mtt": ("mtt.syn_steps=2", "mtt.expert_epochs=1", "mtt.max_start_epoch=1"),
    }
    config = {"dm": "quickstart_dm", "dc": "quickstart_dc", "dsa": "quickstart_dsa"}
    config |= {"idc": "quickstart_idc", "mtt": "quickstart"}
    methods = {m: (config[m], *small[m]) for m in small}
    scoring = ("scoring.runs=1", "scoring.epochs=2", "sensitivity.clusters=2")
    select = ("--scoring", "runs=1", "--scoring", "epochs=2", "--scoring", "model=convnet_d1")
    return Protocol(
        "tiny", "sklearn:digits", common, methods, 2, 1, dict.fromkeys(small, 4), 3, 2, "convnet_d1", scoring,
        select,
    )  # fmt: skip


PROTOCOLS = {"cpu": cpu_protocol, "tiny": tiny_protocol}


@dataclass
class Row:
    """One line of a method's table: a distillation and its evaluations."""

    method: str
    key: str  # alone, pdd, source=random, ...
    what: str  # what differs from the pdd row
    overrides: tuple[str, ...]
    evals: dict[str, int] = field(default_factory=dict)  # eval name -> epochs per stage
    baseline: bool = False  # also random real images at the same storage
    selection: str | None = None  # a `pdd-hub select` row instead of a distillation


def rows_for(method: str, protocol: Protocol, shipped_source: str) -> list[Row]:
    """The rows of ``method``: X alone, PDD + X with every loss-network source (the shipped one is
    PDD + X as shipped), then one factor varied at a time from the shipped setting. A row's key names
    everything it sets, so its cached run stays valid when the shipped setting changes."""
    p, iterations = protocol, protocol.iterations[method]
    E = p.eval_epochs
    stages = (f"num_stages={p.num_stages}", f"ipc_per_stage={p.ipc}", f"iterations={iterations}")
    alone = ("num_stages=1", f"ipc_per_stage={p.num_stages * p.ipc}", f"iterations={iterations}")
    both = {"E": E, "PxE": p.num_stages * E}  # X alone at its own epochs and at PDD's SGD steps
    # the control for forgetting bands: their stage 1 also starts from the easiest examples
    control = (*alone, "init=unforgettable", *scoring_networks(p))
    easiest = "started from its least-forgotten examples"
    rows = [
        Row(method, "alone", f"{method.upper()} alone, 1 x {p.num_stages * p.ipc} IPC", alone, both),
        Row(method, "alone" + CONTROL, f"{method.upper()} alone, {easiest}", control, both),
    ]
    base, base_key = stages, "pdd"
    if method in NETWORK_METHODS:
        for source in SOURCES:
            change = (f"{method}.networks.source={source}",)
            shipped = source == shipped_source
            what = f"PDD, loss networks: {source}" + (" (shipped)" if shipped else "")
            rows.append(Row(method, f"source={source}", what, stages + change, {"E": E}, baseline=shipped))
        base, base_key = (*stages, f"{method}.networks.source={shipped_source}"), f"source={shipped_source}"
    else:
        what = f"PDD + {method.upper()}, shipped settings"
        rows.append(Row(method, "pdd", what, stages, {"E": E}, baseline=True))
    factors = variants(protocol)
    for key, (what, change) in factors.items():
        rows.append(Row(method, f"{base_key}+{key}", what, base + change, {"E": E}))
    longer = longer_iterations(method, p)
    longer_key, longer_base = f"{base_key}+iterations={longer}", with_iterations(base, longer)
    rows += [
        Row(method, f"alone+iterations={longer}", f"{method.upper()} alone, {longer} iterations",
            with_iterations(alone, longer), both),
        Row(method, f"alone+iterations={longer}" + CONTROL,
            f"{method.upper()} alone, {longer} iterations, {easiest}",
            with_iterations(control, longer), both),
        Row(method, longer_key, f"{longer} iterations per stage", longer_base, {"E": E}),
    ]  # fmt: skip
    # MTT, DSA and DC ship the longer budget: the features are also measured there
    for key, (what, change) in factors.items():
        if key != "budget=total":  # a budget split is not a feature
            rows.append(Row(method, f"{longer_key}+{key}", f"{what}, {longer} iterations",
                            longer_base + change, {"E": E}))  # fmt: skip
    return rows


def longer_iterations(method: str, protocol: Protocol) -> int:
    """Per-stage iterations of the longer-budget rows (their keys end in ``+iterations=N``)."""
    return protocol.iterations[method] * protocol.longer


def with_iterations(overrides: tuple[str, ...], iterations: int) -> tuple[str, ...]:
    """``overrides`` with their per-stage iterations replaced (a longer budget on the same setting)."""
    return tuple(f"iterations={iterations}" if o.startswith("iterations=") else o for o in overrides)


def scoring_networks(protocol: Protocol) -> tuple[str, ...]:
    """The overrides of the scoring networks alone (forgetting scores; without sensitivity's own)."""
    return tuple(c for c in protocol.scoring if not c.startswith("sensitivity."))


def variants(protocol: Protocol) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The factors varied from the shipped PDD setting: key -> (what, overrides)."""
    scoring = scoring_networks(protocol)
    return {
        "budget=total": ("budget: the same total, N / P per stage", ("budget=total",)),
        "init=sensitivity": ("init: sensitivity sampling", ("init=sensitivity", *protocol.scoring)),
        "importance": ("real batches: importance, weighted", ("real_sampling=importance",)),
        "importance=none": (
            "real batches: importance, unweighted",
            ("real_sampling=importance", "importance.weighting=none"),
        ),
        "forgetting=band": ("forgetting bands", ("forgetting.mode=band", *scoring)),
    }


SELECTIONS = ("random", "herding", "kcenter", "forgetting", "sensitivity")


def selection_rows(protocol: Protocol) -> list[Row]:
    """Selection baselines at X alone's storage (1 x P x IPC): is forgetting above chance, ..."""
    ipc = protocol.num_stages * protocol.ipc
    return [
        Row("select", name, f"{name}, 1 x {ipc} real images per class", (), {"E": protocol.eval_epochs},
            selection=name)
        for name in SELECTIONS
    ]  # fmt: skip


def rows_of(method: str, protocol: Protocol) -> list[Row]:
    """The rows of a base method, or of ``select`` (the selection baselines)."""
    if method == "select":
        return selection_rows(protocol)
    return rows_for(method, protocol, shipped_source(method, protocol))


def shipped_row(rows: list[Row]) -> Row | None:
    """The PDD + X row as shipped (the one evaluated beside random real images)."""
    return next((r for r in rows if r.baseline), None)


def distill_command(row: Row, protocol: Protocol, folder: Path) -> list[str]:
    config, *method_overrides = protocol.methods[row.method]
    return [
        sys.executable, "-m", "pdd_hub.cli", "distill", "--config", config, f"dataset={protocol.dataset}",
        f"output_dir={folder}", *protocol.common, *method_overrides, *row.overrides,
    ]  # fmt: skip


def select_command(row: Row, protocol: Protocol, folder: Path) -> list[str]:
    clusters = ["--param", "clusters=10"] if row.selection == "sensitivity" else []
    return [
        sys.executable, "-m", "pdd_hub.cli", "select", "--real", protocol.dataset, "--method", row.selection,
        *clusters, "--num-stages", "1", "--ipc", str(protocol.num_stages * protocol.ipc),
        "--epochs", str(protocol.eval_epochs), *protocol.select, "--output", str(folder / "dataset"),
    ]  # fmt: skip


def eval_command(row: Row, protocol: Protocol, folder: Path, name: str, epochs: int) -> list[str]:
    command = [
        sys.executable, "-m", "pdd_hub.cli", "eval", str(folder / "dataset"), "--real", protocol.dataset,
        "--model", protocol.model, "--seeds", str(protocol.seeds), "--epochs-per-stage", str(epochs),
        "--output", str(folder / f"eval_{name}.json"), *protocol.eval_args,
    ]  # fmt: skip
    return command + (["--baseline", "random"] if row.baseline else [])


def run_logged(command: list[str], log: Path, threads: int) -> float:
    """Run ``command`` (under ``/usr/bin/time -v`` where there is one), appending to ``log``;
    returns the wall seconds. A failure stops the row with the log's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PDD_HUB_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    timed = ["/usr/bin/time", "-v", *command] if Path("/usr/bin/time").exists() else command
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        code = subprocess.call(timed, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{' '.join(command[2:5])} failed ({code}); {log}:\n{tail}")
    return time.perf_counter() - start


def distill_timed(command: list[str], log: Path, threads: int, seconds: dict, timing: Path) -> None:
    """Run the distillation, adding its wall seconds to ``seconds["distill"]``. The start time is
    saved first, so an attempt that was killed counts up to its log's last write when the row is
    resumed (the run itself resumes from its checkpoint; without this its time would be lost)."""
    killed_start = seconds.pop("distill_started", None)
    if killed_start is not None and log.exists():
        seconds["distill"] = seconds.get("distill", 0) + max(0.0, log.stat().st_mtime - killed_start)
    seconds["distill_started"] = time.time()
    save_json(seconds, timing)
    elapsed = run_logged(command, log, threads)
    del seconds["distill_started"]
    seconds["distill"] = seconds.get("distill", 0) + elapsed
    save_json(seconds, timing)  # before the evaluations: one may be killed


def run_row(row: Row, protocol: Protocol, out: Path, threads: int) -> Path:
    """Distil (or resume) the row's run and evaluate it; finished parts are skipped."""
    folder = out / protocol.name / row.method / row.key
    folder.mkdir(parents=True, exist_ok=True)
    log, timing = folder / "log.txt", folder / "timing.json"
    seconds = load_json(timing) if timing.exists() else {}
    if not (folder / "distilled").exists():
        make = select_command if row.selection else distill_command
        distill_timed(make(row, protocol, folder), log, threads, seconds, timing)
        (folder / "distilled").touch()
    for name, epochs in row.evals.items():
        if not (folder / f"eval_{name}.json").exists():
            command = eval_command(row, protocol, folder, name, epochs)
            seconds[f"eval_{name}"] = run_logged(command, log, threads)
            save_json(seconds, timing)
    return folder


@functools.cache
def shipped_config(name: str) -> PDDConfig:
    """The shipped config ``name`` (read once: the report asks for it in every verdict)."""
    return load_config(resolve_config(name))


def shipped_source(method: str, protocol: Protocol) -> str:
    """The loss-network source the method's shipped config uses."""
    if method not in NETWORK_METHODS:
        return "start_states"
    return shipped_config(protocol.methods[method][0]).method_config.networks.source


def run_all(
    protocol: Protocol, rows: list[Row], out: Path, records: Path, jobs: int, threads: int | None = None
) -> int:
    """Every row of ``rows``, ``jobs`` at a time with ``threads`` each (default: the cores this process
    may use, split between the jobs); each finished row's record is written as soon as it finishes. A
    failed row does not stop the others; returns how many failed."""
    threads = threads or max(1, physical_cores_available() // jobs)
    print(f"{len(rows)} rows, {jobs} at a time, {threads} thread(s) each", flush=True)

    def one(row: Row) -> bool:
        start = time.perf_counter()
        try:
            run_row(row, protocol, out, threads)
            keep_record(row, protocol, out, records)
        except (RuntimeError, PDDError) as exc:  # a failed command, a damaged file: named in exc
            print(f"FAILED {row.method}/{row.key}: {exc}", flush=True)
            return False
        print(f"done {row.method}/{row.key} ({time.perf_counter() - start:.0f} s)", flush=True)
        return True

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return sum(not ok for ok in pool.map(one, rows))


# --- the records ---------------------------------------------------------------------------------
def record_path(records: Path, protocol: Protocol, row: Row) -> Path:
    return records / protocol.name / row.method / f"{row.key}.json"


def stage_curves(folder: Path) -> dict[str, list[list[float]]]:
    """Each finished stage's validation accuracy per iteration, from the run's stage records."""
    stages = sorted((folder / "stages").glob("stage_*.json"), key=lambda f: int(f.stem.split("_")[1]))
    curves = {}
    for path in stages:
        history = load_json(path).get("history", [])
        curves[path.stem.replace("_", " ")] = [[h["iteration"], h["val_acc"]] for h in history]
    return curves


def git_commit() -> str:
    command = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def keep_record(row: Row, protocol: Protocol, out: Path, records: Path) -> Path | None:
    """Write the row's record once every evaluation of its run folder has finished (else nothing):
    the evaluations' summaries and per-seed accuracies, the validation curves, the wall times and the
    commit of the script that recorded them. An existing record with the same results is left as is."""
    folder = out / protocol.name / row.method / row.key
    paths = {name: folder / f"eval_{name}.json" for name in row.evals}
    if not all(path.exists() for path in paths.values()):
        return None
    evals = {name: load_json(path) for name, path in paths.items()}
    timing = folder / "timing.json"
    record = {
        "row": row.key,
        "what": row.what,
        "overrides": list(row.overrides),
        "evals": {name: report["summary"] for name, report in evals.items()},
        "per_seed": {name: report["accuracy"] for name, report in evals.items()},
        "validation_curves": stage_curves(folder),
        "seconds": load_json(timing) if timing.exists() else {},
        "recorded_by": git_commit(),
        "torch": importlib.metadata.version("torch"),  # the recording environment's: numerics vary by version
        "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    target = record_path(records, protocol, row)
    old = load_record(records, protocol, row) or {}
    if all(old.get(key) == record[key] for key in ("evals", "validation_curves", "seconds")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_json(record, target, strict=True)  # atomic: a killed write leaves the old record


RECORD_HINT = "restore it (git checkout -- FILE) or delete it and re-run its row to record it again"


def load_record(records: Path, protocol: Protocol, row: Row) -> dict | None:
    """The row's record, or None if there is none; a damaged one raises CorruptStateError naming it."""
    path = record_path(records, protocol, row)
    if not path.exists():
        return None
    return read_json(path, CorruptStateError, RECORD_HINT.replace("FILE", str(path)))


# --- the report ------------------------------------------------------------------------------------
def accuracies(record: dict | None, name: str, model: str, tag: str = "") -> list[tuple[float, float]] | None:
    """(mean, std) in % after each phase for ``model`` (+ ``tag``) in evaluation ``name``, if recorded."""
    summary = (record or {}).get("evals", {}).get(name, {}).get(model + tag)
    return None if summary is None else [(100 * p["mean"], 100 * p["std"]) for p in summary]


def cell(point: tuple[float, float] | None) -> str:
    return "" if point is None else f"{point[0]:.2f} ± {point[1]:.2f}"


def method_table(rows: list[Row], found: dict[str, dict], protocol: Protocol) -> list[str]:
    """The markdown table of one method: per-stage accuracy of every row that has a record."""
    P, model = protocol.num_stages, protocol.model
    phases = ["stage_1", *(f"stage_1..{k}" for k in range(2, P + 1))]
    lines = ["| row | what differs | " + " | ".join(phases) + " |", "|---|---|" + "---|" * P]
    for row in rows:
        for name in row.evals:
            points = accuracies(found.get(row.key), name, model)
            if points is None:
                continue
            label = f"`{row.key}`" + (f" ({row.evals[name]} epochs)" if len(row.evals) > 1 else "")
            cells = [""] * (P - 1) + [cell(points[-1])] if len(points) == 1 else [cell(p) for p in points]
            lines.append(f"| {label} | {row.what} | " + " | ".join(cells) + " |")
    # the random real images depend only on storage and schedule: any PDD row's evaluation of them
    for row in sorted(rows, key=lambda r: not r.baseline):
        random = accuracies(found.get(row.key), "E", model, " [random real]")
        if random:
            what = f"same storage and schedule (evaluated with `{row.key}`)"
            lines.append(f"| random real | {what} | " + " | ".join(map(cell, random)) + " |")
            break
    return lines


def shipped_feature(method: str, protocol: Protocol) -> str:
    """The row-key suffix of the subset-selection feature the method's shipped config turns on
    (``+forgetting=band``, ...), or ``""``: its rows vary one factor from the plain setting, so the
    shipped row is the plain row plus this feature."""
    config = shipped_config(protocol.methods[method][0])
    if config.forgetting.mode == "band":
        return "+forgetting=band"
    if config.init == "sensitivity":
        return "+init=sensitivity"
    if config.real_sampling == "importance":
        return "+importance" + ("=none" if config.importance.weighting == "none" else "")
    return ""


def verdict(
    method: str,
    base: Row,
    found: dict[str, dict],
    protocol: Protocol,
    longer: bool = False,
    feature: str = "",
    control: str = "",
) -> str | None:
    """PDD + X (``base``, the plain row evaluated beside random real images, plus ``feature``) against
    the better of X alone's two evaluations (X alone plus ``control``), after the last stage;
    ``longer``: the same for the longer-budget pair of rows."""
    pdd_key, alone_key, iterations = base.key, "alone", protocol.iterations[method]
    if longer:
        iterations = longer_iterations(method, protocol)
        pdd_key, alone_key = f"{pdd_key}+iterations={iterations}", f"alone+iterations={iterations}"
    pdd_key, alone_key = pdd_key + feature, alone_key + control
    pdd = accuracies(found.get(pdd_key), "E", protocol.model)
    alone = [accuracies(found.get(alone_key), name, protocol.model) for name in ("E", "PxE")]
    if pdd is None or any(a is None for a in alone):
        return None
    best = max((a[-1] for a in alone), key=lambda p: p[0])
    gain = pdd[-1][0] - best[0]
    holds = "holds" if gain >= -best[1] else "does not hold"
    name, shipped = method.upper(), shipped_feature(method, protocol)
    settings = (
        "the shipped settings" if feature == shipped else f"the shipped settings without `{shipped[1:]}`"
    )
    alone_name = f"{name} alone" + (" from its least-forgotten examples" if control == CONTROL else "")
    return (
        f"At {iterations} iterations per stage: PDD + {name} with {settings} (`{pdd_key}`) "
        f"{cell(pdd[-1])} vs {alone_name} (`{alone_key}`) {cell(best)} (the better of its two "
        f"evaluations): {gain:+.2f} points; PDD + X >= X - 1 std {holds}."
    )


def curve_figure(method: str, protocol: Protocol, record: dict | None, key: str, figures: Path) -> str | None:
    """The markdown image of a row's validation curves, drawn from its record (a record without curves
    keeps the figure already in ``figures``, if any)."""
    from pdd_hub.viz import plot_validation_curves

    name = f"{protocol.name}_{method}_{key.replace('=', '_').replace('+', '_')}.png"
    curves = (record or {}).get("validation_curves")
    if curves:
        figures.mkdir(parents=True, exist_ok=True)
        title = f"{method.upper()} `{key}`\nvalidation accuracy while distilling"
        plot_validation_curves({stage: [tuple(p) for p in points] for stage, points in curves.items()},
                               figures / name, title=title)  # fmt: skip
    elif record is None or not (figures / name).exists():
        return None
    return f"![{method} {key}: validation accuracy per iteration](ablation/{name})"


def method_report(
    method: str, rows: list[Row], protocol: Protocol, records: Path, figures: Path
) -> list[str]:
    """One method's part of the report: its table, verdicts and validation curves (nothing without
    records)."""
    found = {row.key: record for row in rows if (record := load_record(records, protocol, row))}
    table = method_table(rows, found, protocol)
    if len(table) <= 2:
        return []
    parts = [f"#### {method.upper()}", "", *table, ""]
    shipped = shipped_row(rows)
    if shipped is None:
        return parts
    feature = shipped_feature(method, protocol)
    features = dict.fromkeys((feature, ""))  # the shipped row first, then its plain counterpart if other
    longer = f"+iterations={longer_iterations(method, protocol)}"
    # forgetting bands start stage 1 from the easiest examples: X alone started from those too
    controls = ("", CONTROL) if feature == "+forgetting=band" else ("",)
    for budget in ("", longer):
        lines = [verdict(method, shipped, found, protocol, bool(budget), f) for f in features]
        lines += [verdict(method, shipped, found, protocol, bool(budget), feature, c) for c in controls[1:]]
        parts += [text for line in lines if line for text in (line, "")]
    for budget in ("", longer):
        for key in [shipped.key + budget + f for f in features] + ["alone" + budget + c for c in controls]:
            figure = curve_figure(method, protocol, found.get(key), key, figures)
            parts += [figure, ""] if figure else []
    return parts


def report(protocol: Protocol, rows: dict[str, list[Row]], records: Path, target: Path) -> None:
    """Write every method's table, verdict and validation curves into ``target`` between markers
    (``rows``: each method's rows)."""
    parts = [
        part
        for method, its_rows in rows.items()
        for part in method_report(method, its_rows, protocol, records, target.parent / "ablation")
    ]
    begin, end = f"<!-- ablation:{protocol.name}:begin -->", f"<!-- ablation:{protocol.name}:end -->"
    text = target.read_text() if target.exists() else ""
    block = "\n".join([begin, "", *parts, end])
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    target.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--only", default=None, help="comma-separated methods and/or select (default: all)")
    parser.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    parser.add_argument("--out", default="runs/ablation", help="where runs and evaluations are kept")
    parser.add_argument("--records", default=str(RECORDS), help="where each finished row's record is kept")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once (threads are split)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per row (default: the usable cores / --jobs)"
    )
    parser.add_argument("--report", default=None, help="write the tables into this markdown file")
    parser.add_argument("--no-run", action="store_true", help="only the report, from what exists")
    args = parser.parse_args(argv)
    try:  # the numeric options, by the rules pdd-hub's own commands use
        positive_int().check(args.jobs, "--jobs", PDDError)
        if args.threads is not None:  # not given: the usable cores, split between the jobs
            positive_int().check(args.threads, "--threads", PDDError)
    except PDDError as exc:
        parser.error(str(exc))
    protocol = PROTOCOLS[args.protocol]()
    known = [*protocol.methods, "select"]
    methods = args.only.split(",") if args.only else known
    unknown = sorted(set(methods) - set(known))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {known}")
    rows = {method: rows_of(method, protocol) for method in methods}  # reads the shipped configs: once
    keys = set(args.rows.split(",")) if args.rows else None
    known_keys = sorted({r.key for its_rows in rows.values() for r in its_rows})
    if keys and keys - set(known_keys):
        unknown = sorted(keys - set(known_keys))
        parser.error(f"unknown row(s) {unknown} of {methods}; choose from {known_keys}")
    try:
        failed = run_and_report(protocol, rows, keys, args)
    except PDDError as exc:  # a damaged record or evaluation file: say which, keep everything else
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def run_and_report(
    protocol: Protocol, rows: dict[str, list[Row]], keys: set[str] | None, args: argparse.Namespace
) -> int:
    """Run the rows named in ``keys`` (all if None; none with --no-run), then record what finished
    and write the report (if asked); returns how many rows failed."""
    out, records = Path(args.out), Path(args.records)
    every_row = [r for its_rows in rows.values() for r in its_rows]
    chosen = [r for r in every_row if keys is None or r.key in keys]
    failed = 0 if args.no_run else run_all(protocol, chosen, out, records, args.jobs, args.threads)
    if args.report:
        for row in every_row:  # runs finished by an older script
            keep_record(row, protocol, out, records)
        report(protocol, rows, records, Path(args.report))
    return failed


if __name__ == "__main__":
    sys.exit(main())
