"""The pdd-hub command line: eval (one and two processes), select, show; clear errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SUBPROCESS_ENV, accelerate_cpu

ENV = SUBPROCESS_ENV


def cli(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m"]) + ["pdd_hub.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "digits-random"
    result = cli(
        "select",
        "--real",
        "sklearn:digits",
        "--num-stages",
        "3",
        "--ipc",
        "2",
        "--output",
        str(out),
        "--val-per-class",
        "10",
        "--epochs",
        "6",
    )
    assert result.returncode == 0, result.stderr
    return out


def test_eval_prints_table_writes_json_and_plot(digits_export, tmp_path):
    output = tmp_path / "results.json"
    result = cli(
        "eval",
        str(digits_export),
        "--real",
        "sklearn:digits",
        "--model",
        "convnet_d3",
        "--model",
        "resnet10_cifar_bn",
        "--seeds",
        "2",
        "--epochs-per-stage",
        "3",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    assert "| model | stage_1 | stage_1..2 | stage_1..3 |" in result.stdout
    assert "| convnet_d3 |" in result.stdout and " ± " in result.stdout
    data = json.loads(output.read_text())
    assert data["phases"] == ["stage_1", "stage_1..2", "stage_1..3"] and data["epochs"] == [3, 3, 3]
    assert sorted(data["accuracy"]["convnet_d3"]) == ["0", "1"]
    assert all(
        len(a) == 3 and all(0 <= x <= 1 for x in a) for a in data["accuracy"]["resnet10_cifar_bn"].values()
    )
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_with_a_random_baseline_adds_its_rows_and_runs(digits_export, tmp_path):
    output = tmp_path / "b.json"
    result = cli(
        "eval",
        str(digits_export),
        "--real",
        "sklearn:digits",
        "--model",
        "convnet_d2",
        "--seeds",
        "2",
        "--epochs-per-stage",
        "2",
        "--baseline",
        "random",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    assert "| convnet_d2 [random real] |" in result.stdout
    data = json.loads(output.read_text())
    assert set(data["accuracy"]) == {"convnet_d2", "convnet_d2 [random real]"}
    assert sorted(p.name for p in output.with_suffix(".runs").iterdir()) == [
        "convnet_d2-random-real__seed0.json",
        "convnet_d2-random-real__seed1.json",
        "convnet_d2__seed0.json",
        "convnet_d2__seed1.json",
    ]


@pytest.mark.parametrize("mode,phases", [("union", 1), ("sequential", 3)])
def test_eval_modes(digits_export, tmp_path, mode, phases):
    output = tmp_path / "r.json"
    result = cli(
        "eval",
        str(digits_export),
        "--real",
        "sklearn:digits",
        "--model",
        "convnet_d2",
        "--seeds",
        "1",
        "--epochs-per-stage",
        "2",
        "--mode",
        mode,
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(output.read_text())["phases"]) == phases


def test_eval_on_two_cpu_processes_gathers_every_run(digits_export, tmp_path):
    output = tmp_path / "r2.json"
    launcher = [*accelerate_cpu(2), "-m"]
    result = cli(
        "eval",
        str(digits_export),
        "--real",
        "sklearn:digits",
        "--model",
        "convnet_d2",
        "--seeds",
        "3",
        "--epochs-per-stage",
        "2",
        "--output",
        str(output),
        launcher=launcher,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    assert sorted(data["accuracy"]["convnet_d2"]) == ["0", "1", "2"]
    assert result.stdout.count("| convnet_d2 |") == 1  # only the main process reports


def test_eval_reuses_finished_runs_only_when_nothing_changed(digits_export, tmp_path):
    output = tmp_path / "r.json"
    args = ["eval", str(digits_export), "--real", "sklearn:digits", "--model", "convnet_d2", "--seeds", "2"]
    first = cli(*args, "--epochs-per-stage", "2", "--output", str(output))
    assert first.returncode == 0, first.stderr
    saved = output.with_suffix(".runs") / "convnet_d2__seed1.json"
    run = json.loads(saved.read_text())
    assert run["accuracy"] == json.loads(output.read_text())["accuracy"]["convnet_d2"]["1"]
    # a marker no real run produces shows whether the saved run was reused or retrained
    marker = [0.125, 0.25, 0.5]
    saved.write_text(json.dumps(run | {"accuracy": marker}))

    again = cli(*args, "--epochs-per-stage", "2", "--output", str(output))
    assert again.returncode == 0, again.stderr
    assert "convnet_d2 seed 1: reusing" in again.stdout + again.stderr
    assert json.loads(output.read_text())["accuracy"]["convnet_d2"]["1"] == marker

    changed = cli(*args, "--epochs-per-stage", "1", "--output", str(output))
    assert changed.returncode == 0, changed.stderr
    assert json.loads(output.read_text())["accuracy"]["convnet_d2"]["1"] != marker
    assert json.loads(saved.read_text())["key"]["phases"][0][1] == 1


def test_show(digits_export):
    result = cli("show", str(digits_export))
    assert result.returncode == 0, result.stderr
    assert "| stage_3 | 2 | 0.01 | 6 |" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["eval", "{export}", "--real", "sklearn:digits", "--model", "resnet_does_not_exist"],
            "timm does not know",
        ),
        (["eval", "{missing}", "--real", "sklearn:digits", "--model", "convnet_d3"], "no export folder"),
        (["eval", "{export}", "--real", "sklearn:digits"], "at least one --model"),
        (
            ["eval", "{export}", "--real", "sklearn:digits", "--model", "convnet_d3", "--seeds", "0"],
            "--seeds must",
        ),
        (
            ["eval", "{export}", "--real", "sklearn:digits", "--model", "convnet_d5"],
            "cannot take 1x8x8 images",
        ),
        (
            ["select", "--real", "sklearn:digits", "--ipc", "100", "--output", "{tmp}/x"],
            "cannot take 500 images per class",
        ),
    ],
)
def test_bad_input_is_one_paragraph_without_traceback(digits_export, tmp_path, args, message):
    fill = {"export": str(digits_export), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    result = cli(*[a.format(**fill) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_eval_against_a_dataset_of_another_shape(digits_export, cifar10_path):
    result = cli("eval", str(digits_export), "--real", str(cifar10_path), "--model", "convnet_d3")
    assert result.returncode == 2
    assert "shape (3, 32, 32)" in result.stderr and "Traceback" not in result.stderr
