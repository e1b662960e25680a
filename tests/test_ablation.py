"""Issue 19's ablation command at its tiny settings: every kind of row runs through the real CLI
(distil or select, then eval), the report holds the tables, the verdict and the validation curves,
and a second call reuses every cached run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SUBPROCESS_ENV

REPO = Path(__file__).resolve().parents[1]
ROWS = "alone,source=random,source=random+importance,forgetting"


def ablation(out: Path, report: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "ablation.py"),
        "--protocol",
        "tiny",
        "--out",
        str(out),
    ]
    command += ["--only", "dm,select", "--rows", ROWS, "--report", str(report), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=REPO, timeout=1200)


@pytest.mark.slow
def test_the_tiny_ablation_runs_every_kind_of_row_and_reports_them(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    report.parent.mkdir()
    report.write_text(
        "# Results\n\nkept\n\n<!-- ablation:tiny:begin -->\nstale\n<!-- ablation:tiny:end -->\n"
    )
    result = ablation(out, report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and result.stdout.count("done ") == 4, result.stdout
    text = report.read_text()
    assert text.startswith("# Results\n\nkept\n") and "stale" not in text
    for row in ("`alone` (3 epochs)", "`alone` (6 epochs)", "`source=random`", "`forgetting`"):
        assert row in text
    assert "`source=random+importance`" in text and "random real" in text
    assert "PDD + DM as shipped (`source=random`)" in text and "PDD + X >= X - 1 std" in text
    assert (report.parent / "ablation" / "tiny_dm_source_random.png").stat().st_size > 1000
    folder = out / "tiny" / "dm" / "source=random+importance"
    schedule = json.loads((folder / "dataset" / "pdd_schedule.json").read_text())
    assert schedule["config"]["real_sampling"] == "importance"
    assert [s["distillation"]["iterations"] for s in schedule["stages"]] == [4, 4]
    evaluated = (folder / "eval_E.json").stat().st_mtime_ns

    again = ablation(out, report, "--no-run")
    assert again.returncode == 0 and report.read_text() == text
    rerun = ablation(out, report)
    assert rerun.returncode == 0 and (folder / "eval_E.json").stat().st_mtime_ns == evaluated
