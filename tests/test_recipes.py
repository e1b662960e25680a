"""The recipes as users run them: accelerate launch, one and two CPU processes, early config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pdd_hub.hub import load_pdd
from tests.helpers import SUBPROCESS_ENV, accelerate_cpu
from tests.test_pdd import TINY

REPO = Path(__file__).resolve().parents[1]
ENV = SUBPROCESS_ENV
# the thread count the recipes choose themselves (no override from the calling shell)
DEFAULT_THREADS_ENV = {k: v for k, v in ENV.items() if k != "PDD_HUB_NUM_THREADS"}


def overrides(config: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def launch(script: str, args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    cmd = [*accelerate_cpu(processes), str(REPO / "recipes" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=DEFAULT_THREADS_ENV, cwd=REPO, timeout=900)


def test_bad_config_key_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    result = launch(
        "pdd_mtt.py",
        ["--config", str(REPO / "recipes/configs/quickstart.yaml"), f"output_dir={out}", "mtt.synsteps=3"],
    )
    assert result.returncode != 0
    assert "unknown config key 'mtt.synsteps'; did you mean 'mtt.syn_steps'" in result.stderr
    # accelerate's launcher reports the failed child with its own traceback; ours must not appear
    assert "pdd_hub/" not in result.stderr and 'recipes/pdd_mtt.py", line' not in result.stderr
    assert not out.exists()


def test_two_processes_produce_the_same_export_format(tmp_path):
    args = overrides({**TINY, "output_dir": str(tmp_path / "two")})
    result = launch("pdd_mtt.py", args, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    two = load_pdd(tmp_path / "two" / "dataset")
    schedule = json.loads((tmp_path / "two" / "dataset" / "pdd_schedule.json").read_text())
    assert two.schedule.split_names == ["stage_1", "stage_2"]
    assert [tuple(s.images.shape) for s in two.stages] == [(10, 1, 8, 8), (10, 1, 8, 8)]
    assert set(schedule) == {
        "format_version",
        "method",
        "distill_model",
        "source",
        "num_classes",
        "class_names",
        "image_shape",
        "preprocess",
        "training",
        "storage",
        "stages",
        "config",
    }
    assert all(s.recipe.lr > 0 for s in two.schedule.stages)
    # both processes trained experts: the manifest lists all of them
    manifest = json.loads((tmp_path / "two" / "experts" / "stage_1" / "manifest.json").read_text())
    assert manifest["num_experts"] == 2 and len(manifest["files"]) == 2
    assert result.stdout.count("export:") == 1  # only the main process reports


def test_experts_recipe_then_distillation_reuses_them(tmp_path):
    args = overrides({**TINY, "num_stages": 1, "output_dir": str(tmp_path / "run")})
    first = launch("experts.py", args)
    assert first.returncode == 0, first.stderr[-3000:]
    expert = tmp_path / "run" / "experts" / "stage_1" / "expert_000.safetensors"
    mtime = expert.stat().st_mtime_ns
    second = launch("pdd_mtt.py", args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert expert.stat().st_mtime_ns == mtime
    assert load_pdd(tmp_path / "run" / "dataset").num_stages == 1


def test_recipe_help_lists_every_key():
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "pdd_mtt.py"), "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    text = result.stdout + result.stderr
    for key in ("dataset", "ipc_per_stage", "mtt.syn_steps", "transition.syn_epochs", "forgetting.mode"):
        assert f"  {key} (default" in text


def test_accelerate_launch_of_the_cli_distils_with_two_processes_and_shares_the_cores(tmp_path):
    from pdd_hub.runtime import physical_cores_available

    out = tmp_path / "dsa"
    args = [
        "distill",
        "--config",
        "quickstart_dsa",
        f"output_dir={out}",
        "num_stages=2",
        "iterations=2",
        "eval.every=2",
        "eval.epochs=2",
        "transition.syn_epochs=2",
        "dsa.batch_real=8",
        "progress=false",
    ]
    result = subprocess.run(
        [*accelerate_cpu(2), "-m", "pdd_hub.cli", *args],
        capture_output=True,
        text=True,
        env=DEFAULT_THREADS_ENV,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pdd = load_pdd(out / "dataset")
    assert pdd.schedule.method == "dsa" and pdd.num_stages == 2
    # accelerate sets OMP_NUM_THREADS=1; pdd-hub divides the physical cores between the two processes
    expected = max(1, physical_cores_available() // 2)
    assert f"using {expected} CPU threads per process" in result.stderr + result.stdout


def test_a_recipe_under_accelerate_launch_uses_every_physical_core(tmp_path):
    from pdd_hub.runtime import physical_cores_available

    args = overrides({**TINY, "num_stages": 1, "iterations": 1, "output_dir": str(tmp_path / "run")})
    result = launch("pdd_mtt.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"using {physical_cores_available()} CPU threads per process" in result.stderr + result.stdout
    # and an override still wins
    again = launch("pdd_mtt.py", [*args, "num_threads=1"])
    assert again.returncode == 0 and "using 1 CPU threads per process" in again.stderr + again.stdout
