"""Cross-architecture evaluation of an export: models x seeds, accuracy after every stage.

Each (model, seed) run is independent, so accelerate's processes split the runs between them
(the synthetic set is far too small to split one run's batches); results are gathered on every
process and reported by the main one as a markdown table, JSON and a PNG plot. With a
``runs_dir``, every finished run is saved there at once and reused when the same evaluation is
started again, so an interrupted multi-hour evaluation only redoes the run it was in.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from pdd_hub.data.images import ImageSet
from pdd_hub.errors import CorruptStateError, DatasetFormatError
from pdd_hub.hub import PDDDataset, SyntheticStage, stage_checksum
from pdd_hub.io import load_json, save_json, tensors_sha256
from pdd_hub.models import check_model_builds, create_model
from pdd_hub.registry import METHODS
from pdd_hub.rng import stream
from pdd_hub.runtime import TrainingRuntime, batch_networks_by_default, make_accelerator
from pdd_hub.train import plan_stages, recipe_augmentation, train_many

BASELINES = ("random",)
# what a saved run records of each phase's recipe (a saved run is reused only where they match)
PHASE_KEY = ("epochs", "lr", "batch_size", "momentum", "weight_decay")


@dataclass
class EvalReport:
    """Test accuracy per model, per seed, after each training phase."""

    export: str
    real: str
    mode: str
    phases: list[str]
    epochs: list[int]
    accuracies: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    dataset: str = ""  # the source dataset the export was made from
    method: str = ""  # the export's method
    stages: list[str | None] = field(default_factory=list)  # the export's stage checksums

    def summary(self) -> dict[str, list[tuple[float, float]]]:
        """(mean, std) over seeds after each phase, per model (std 0 with one seed)."""
        out = {}
        for model, by_seed in self.accuracies.items():
            runs = list(by_seed.values())
            out[model] = [
                (
                    statistics.fmean(r[k] for r in runs),
                    statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0,
                )
                for k in range(len(self.phases))
            ]
        return out

    def to_markdown(self) -> str:
        seeds = max((len(v) for v in self.accuracies.values()), default=0)
        header = "| model | " + " | ".join(self.phases) + " |"
        rule = "|---|" + "---|" * len(self.phases)
        rows = [
            f"| {model} | " + " | ".join(f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in points) + " |"
            for model, points in self.summary().items()
        ]
        caption = f"Test accuracy (%) after each phase, mode {self.mode}, mean ± std over {seeds} seed(s)"
        return "\n".join([caption, "", header, rule, *rows])

    def to_dict(self) -> dict:
        return {
            "export": self.export,
            "real": self.real,
            "mode": self.mode,
            "phases": self.phases,
            "epochs": self.epochs,
            "accuracy": {m: {str(s): a for s, a in sorted(v.items())} for m, v in self.accuracies.items()},
            "summary": {m: [{"mean": a, "std": b} for a, b in pts] for m, pts in self.summary().items()},
            "dataset": self.dataset,
            "method": self.method,
            "stages": self.stages,
        }

    def save_json(self, path: str | Path) -> Path:
        """Write the report atomically (a failed write keeps the previous one)."""
        return save_json(self.to_dict(), path, strict=True)

    def save_plot(self, path: str | Path) -> Path:
        from pdd_hub.viz import plot_accuracy_per_stage

        labels = [p.replace("stage_", "") for p in self.phases]
        return plot_accuracy_per_stage(self.summary(), path, title=self.title(), xlabels=labels)

    def title(self) -> str:
        """``<dataset>: <method> (<mode>)``, e.g. ``cifar10: PDD + MTT (progressive)``."""
        name = Path(self.dataset).name if self.dataset else Path(self.export).name
        method = f"PDD + {self.method.upper()}" if self.method in METHODS else self.method
        return f"{name}: {method} ({self.mode})" if method else f"{name} ({self.mode})"


def random_baseline(pdd: PDDDataset, real_train: ImageSet, seed: int = 0) -> PDDDataset:
    """The export's schedule (LRs, epochs, training recipe) on random real training images instead:
    as many per class in each stage as the export stores (its storage budget: for IDC the stored,
    not the decoded, images), disjoint across stages, preprocessed the export's way. What
    ``pdd-hub eval --baseline random`` trains the same models on."""
    counts = [spec.stored_ipc or spec.ipc for spec in pdd.schedule.stages]
    by_class = real_train.sample_per_class(sum(counts), stream(seed, "baseline", "random")).view(
        real_train.num_classes, sum(counts)
    )
    stages, first = [], 0
    for spec, count in zip(pdd.schedule.stages, counts):
        idx = by_class[:, first : first + count].reshape(-1)
        first += count
        images = pdd.preprocess(real_train.images[idx]).float()
        labels = real_train.labels[idx].long()
        spec = replace(spec, ipc=count, stored_ipc=count, sha256=stage_checksum(images, labels))
        stages.append(SyntheticStage(spec=spec, images=images, labels=labels))
    schedule = replace(pdd.schedule, method="random real", stages=[s.spec for s in stages])
    return PDDDataset(schedule=schedule, stages=stages, preprocess=pdd.preprocess, path=pdd.path)


def check_compatible(pdd: PDDDataset, real: ImageSet, real_name: str) -> None:
    """The real test set must have the export's classes and image shape."""
    if real.num_classes != pdd.schedule.num_classes:
        raise DatasetFormatError(
            f"real dataset {real_name!r} has {real.num_classes} classes but the export has "
            f"{pdd.schedule.num_classes} ({pdd.schedule.class_names[:5]}...)"
        )
    if tuple(real.image_shape) != tuple(pdd.schedule.image_shape):
        raise DatasetFormatError(
            f"real dataset {real_name!r} has images of shape {tuple(real.image_shape)} but the export was "
            f"distilled at {tuple(pdd.schedule.image_shape)}"
        )
    if list(real.class_names) != list(pdd.schedule.class_names):
        raise DatasetFormatError(
            f"real dataset {real_name!r} names its classes {real.class_names[:5]}..., the export "
            f"{pdd.schedule.class_names[:5]}...: label k must mean the same class in both"
        )


def test_set_digest(test: ImageSet) -> str:
    """sha256 of the test images and labels: a different split, size or dataset changes it."""
    return tensors_sha256(test.images, test.labels.long())


def run_key(
    pdd: PDDDataset, test_digest: str, real_name: str, mode: str, plans: list, model: str, seed: int
) -> dict:
    """Everything a run's result depends on: a saved run is reused only if all of it matches."""
    return {
        "model": model,
        "seed": seed,
        "mode": mode,
        "training": pdd.schedule.training,
        "stages": [spec.sha256 or f"{spec.split}:{spec.ipc}" for spec in pdd.schedule.stages],
        "phases": [[p.name, *(getattr(p.recipe, k) for k in PHASE_KEY)] for p in plans],
        "real": real_name,
        "test_sha256": test_digest,
    }


def _run_file(runs_dir: Path, model: str, seed: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.replace("/", "--")).strip("-")
    return runs_dir / f"{safe}__seed{seed}.json"


def _saved_run(runs_dir: Path | None, key: dict) -> list[float] | None:
    if runs_dir is None:
        return None
    path = _run_file(runs_dir, key["model"], key["seed"])
    if not path.exists():
        return None
    hint = "delete it to train that run again, or run without reusing saved runs (--no-resume)"
    saved = load_json(path, hint)
    accuracy = saved.get("accuracy") if isinstance(saved, dict) else None
    if not isinstance(accuracy, list) or not all(isinstance(a, (int, float)) for a in accuracy):
        raise CorruptStateError(f"{path} is damaged (no list of accuracies); {hint}")
    return accuracy if saved.get("key") == key else None


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation trains and what its report records, besides the models and seeds: the
    training ``mode``, ``epochs_per_stage`` (``None``: the schedule's), the name of the real data,
    where finished runs are kept (``runs_dir``; ``None``: nowhere) and the ``tag`` that follows each
    model's name in the report (e.g. ``" [random real]"`` for a baseline)."""

    mode: str = "progressive"
    epochs_per_stage: int | None = None
    real_name: str = ""
    runs_dir: str | Path | None = None
    tag: str = ""


@dataclass
class EvalSetup:
    """What every run of one evaluation shares."""

    pdd: PDDDataset
    plans: list
    test: tuple[torch.Tensor, torch.Tensor]  # preprocessed test images and labels, on the device
    key: Callable[[str, int], dict]  # run_key for (model label, seed)
    runs_dir: Path | None
    runtime: TrainingRuntime  # its progress bars only on the main process


def evaluate_export(
    pdd: PDDDataset,
    test: ImageSet,
    model_names: list[str],
    seeds: list[int],
    options: EvalOptions = EvalOptions(),
    *,
    runtime: TrainingRuntime | None = None,
    accelerator: Accelerator | None = None,
) -> EvalReport:
    """Train every model with every seed on the export's schedule, with the recipe it records
    (augmentation, CutMix, LR schedule); test after each phase. The seeds of a model train stacked
    when ``runtime.batched`` (default runtime: stacked on GPUs, with progress bars), else one at a
    time (through ``torch.compile`` with ``runtime.compile``), and the runs are split over
    accelerate's processes.

    ``options.runs_dir`` keeps one JSON per finished (model, seed) run; runs found there with the same
    export, schedule, test set and settings are reused instead of retrained.
    """
    check_eval_inputs(pdd, test, model_names, seeds, options.real_name)
    accelerator = accelerator or make_accelerator()
    device = accelerator.device
    runtime = runtime or TrainingRuntime(batched=batch_networks_by_default(device), progress=True)
    plans = plan_stages(pdd, options.mode, options.epochs_per_stage)
    runs_dir = Path(options.runs_dir) if options.runs_dir is not None else None
    test_digest = test_set_digest(test) if runs_dir is not None else ""
    setup = EvalSetup(
        pdd=pdd,
        plans=plans,
        test=(pdd.preprocess.apply_all(test.images.to(device)), test.labels.to(device)),
        key=lambda label, seed: run_key(
            pdd, test_digest, options.real_name, options.mode, plans, label, seed
        ),
        runs_dir=runs_dir,
        runtime=replace(runtime, progress=runtime.progress and accelerator.is_main_process),
    )
    tag, jobs = options.tag, [(name, seed) for name in model_names for seed in seeds]
    with accelerator.split_between_processes(jobs) as my_jobs:
        results = [
            (name + tag, seed, accs)
            for name in dict.fromkeys(n for n, _ in my_jobs)
            for seed, accs in run_model_seeds(setup, name, [s for n, s in my_jobs if n == name], tag)
        ]
    results = gather_object(results) if accelerator.num_processes > 1 else results
    report = empty_report(pdd, plans, [name + tag for name in model_names], options)
    for label, seed, accs in results:
        report.accuracies[label][seed] = accs
    return report


def empty_report(pdd: PDDDataset, plans: list, labels: list[str], options: EvalOptions) -> EvalReport:
    """The report of an evaluation of ``pdd`` through ``plans``, with no accuracies yet."""
    return EvalReport(
        export=str(pdd.path),
        real=options.real_name,
        mode=options.mode,
        phases=[p.name for p in plans],
        epochs=[p.recipe.epochs for p in plans],
        accuracies={label: {} for label in labels},
        dataset=str(pdd.schedule.source.get("dataset", "")),
        method=pdd.schedule.method,
        stages=[spec.sha256 for spec in pdd.schedule.stages],
    )


def check_eval_inputs(
    pdd: PDDDataset, test: ImageSet, model_names: list[str], seeds: list[int], real_name: str
) -> None:
    """Fail before any training: no seeds, a test set unlike the export, or a model that cannot
    take the export's images."""
    if not seeds:
        raise ValueError("evaluate_export needs at least one seed")
    check_compatible(pdd, test, real_name)
    for name in model_names:
        check_model_builds(name, pdd.schedule.num_classes, pdd.schedule.image_shape)


def run_model_seeds(setup: EvalSetup, name: str, seeds: list[int], tag: str) -> list[tuple[int, list[float]]]:
    """Test accuracies after each phase of model ``name`` for each seed: reused where a saved run
    matches, else trained (the seeds together); every finished run is saved at once."""
    label = name + tag
    done, todo = [], []
    for seed in seeds:
        saved = _saved_run(setup.runs_dir, setup.key(label, seed))
        if saved is not None:
            tqdm.write(f"{label} seed {seed}: reusing the finished run in {setup.runs_dir}")
            done.append((seed, saved))
        else:
            todo.append(seed)
    schedule, device = setup.pdd.schedule, setup.test[0].device
    channels, size = schedule.image_shape[0], schedule.image_shape[1]
    models = []
    for seed in todo:
        set_seed(seed)  # the model's initialisation
        models.append(create_model(name, schedule.num_classes, channels, size).to(device))
    augmentation = recipe_augmentation(schedule.training)
    groups = [todo] if setup.runtime.batched else [[seed] for seed in todo]
    for group in groups:
        accuracies = train_many(
            [models[todo.index(seed)] for seed in group],
            setup.plans,
            generators=[torch.Generator().manual_seed(seed) for seed in group],
            augmentation=augmentation,
            runtime=setup.runtime,
            test=setup.test,
            description=f"{label} seed{'s' if len(group) > 1 else ''} {', '.join(map(str, group))}",
        )
        for seed, accs in zip(group, accuracies, strict=True):
            tqdm.write(f"{label} seed {seed}: test accuracy " + ", ".join(f"{100 * a:.2f}" for a in accs))
            if setup.runs_dir is not None:
                save_json(
                    {"key": setup.key(label, seed), "accuracy": accs}, _run_file(setup.runs_dir, label, seed)
                )
            done.append((seed, accs))
    return sorted(done)
