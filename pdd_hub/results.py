"""Evaluation results on the dataset card: the JSON ``pdd-hub eval`` writes, checked against the
export it evaluated and merged across evaluations.

A repo keeps every results file it was given under ``results/`` (named by a hash of its content, so
pushing the same file twice keeps one copy); the card's tables are rebuilt from all of them at
every push. Evaluations with the same test set, mode, phases and epochs share a table; a model that
appears in several of them keeps the row of the file pushed last, so a later evaluation with other
models adds rows and erases none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdd_hub.errors import ResultsFormatError

RESULTS_DIR = "results"
REQUIRED_KEYS = ("real", "mode", "phases", "epochs", "accuracy", "summary")


def read_results(path: str | Path) -> dict[str, Any]:
    """The content of a results file of ``pdd-hub eval``, checked to hold what the card needs."""
    path = Path(path)
    if not path.is_file():
        raise ResultsFormatError(f"results file {path} does not exist (write it with pdd-hub eval --output)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(f"results file {path} is not valid JSON: {exc}") from exc
    return check_results(report, str(path))


def check_results(report: Any, name: str) -> dict[str, Any]:
    """``report`` if it is an evaluation report (``EvalReport.to_dict()``), else a clear error."""
    if not isinstance(report, dict):
        raise ResultsFormatError(f"results file {name} must hold a JSON object, not {type(report).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise ResultsFormatError(
            f"results file {name} lacks {missing}: it is not the JSON output of pdd-hub eval"
        )
    phases = report["phases"]
    for model, points in report["summary"].items():
        if not isinstance(points, list) or len(points) != len(phases):
            raise ResultsFormatError(
                f"results file {name}: summary of model {model!r} has {len(points)} entries for "
                f"{len(phases)} phases {phases}"
            )
        if not all(isinstance(p, dict) and {"mean", "std"} <= set(p) for p in points):
            raise ResultsFormatError(f"results file {name}: summary of model {model!r} lacks mean/std")
    return report


def check_results_belong(report: dict[str, Any], name: str, stage_checksums: list[str | None]) -> None:
    """Refuse the results of another export: the stages an evaluation recorded must be these."""
    recorded = report.get("stages")
    if recorded is None:
        return  # written before evaluations recorded their export's stages: nothing to compare
    if list(recorded) != list(stage_checksums):
        raise ResultsFormatError(
            f"results file {name} evaluated another export (its stages' sha256 differ from this export's "
            "pdd_schedule.json): evaluate this export and push those results"
        )


def results_file_name(report: dict[str, Any]) -> str:
    """Where a results file goes in the repo: ``results/eval-<hash of its content>.json``."""
    digest = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:12]
    return f"{RESULTS_DIR}/eval-{digest}.json"


@dataclass
class ResultTable:
    """Mean ± std test accuracy after every phase, one row per model, for one test set and protocol."""

    real: str
    mode: str
    phases: list[str]
    epochs: list[int]
    rows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the results files the rows come from

    def to_markdown(self) -> str:
        header = "| model | seeds | " + " | ".join(self.phases) + " |"
        rule = "|---|---|" + "---|" * len(self.phases)
        # the distilled rows first, the random-real baseline rows after them, each in pushed order
        order = sorted(self.rows, key=lambda label: "[random real]" in label)
        lines = [
            f"| {label} | {self.seeds[label]} | "
            + " | ".join(f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in self.rows[label])
            + " |"
            for label in order
        ]
        return "\n".join([header, rule, *lines])


def merge_results(reports: Sequence[tuple[str, dict[str, Any]]]) -> list[ResultTable]:
    """The card's tables from ``(repo path, report)`` pairs in push order (later rows replace
    earlier rows of the same model in the same table)."""
    tables: dict[tuple, ResultTable] = {}
    for path, report in reports:
        key = (report["real"], report["mode"], tuple(report["phases"]), tuple(report["epochs"]))
        table = tables.setdefault(
            key, ResultTable(report["real"], report["mode"], list(report["phases"]), list(report["epochs"]))
        )
        for model, points in report["summary"].items():
            table.rows.pop(model, None)  # re-inserted last: the latest file's row, in its order
            table.rows[model] = [(float(p["mean"]), float(p["std"])) for p in points]
            table.seeds[model] = len(report["accuracy"].get(model, {}))
        if path not in table.files:
            table.files.append(path)
    return list(tables.values())
