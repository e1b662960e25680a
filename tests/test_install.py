"""pdd-hub as a user who ran ``pip install pdd-hub`` has it: a wheel in a fresh virtualenv outside the
checkout lists its shipped configs and distils with one of them by name."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.helpers import SUBPROCESS_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the pdd-hub wheel installed; its dependencies come from this test
    environment through a .pth line (nothing is downloaded), its pdd_hub only from the wheel."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("pdd_hub-*.whl")
    env = root / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # a path line, not this environment's own .pth files: its editable pdd_hub stays invisible
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return env


def run_installed(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(env / "bin" / "pdd-hub"), *args],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=cwd,
        timeout=600,
    )


def test_the_wheel_lists_its_configs_and_methods(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import pdd_hub; print(pdd_hub.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(installed) in where.stdout and str(REPO) not in where.stdout  # the wheel, not the checkout
    configs = run_installed(installed, "configs", cwd=tmp_path)
    assert configs.returncode == 0, configs.stderr
    for name in (
        "quickstart",
        "quickstart_dc",
        "quickstart_dsa",
        "quickstart_dm",
        "quickstart_idc",
        "cifar10_idc_ipc10",
    ):
        assert f"\n{name} " in f"\n{configs.stdout}"
    # what PDD measured against every method alone, negative results included
    from pdd_hub.evidence import measured_gain

    for method in ("dc", "dm", "dsa", "idc", "mtt"):
        assert f"  {method:<4} {measured_gain(method)}" in configs.stdout
    methods = run_installed(installed, "methods", cwd=tmp_path)
    assert all(f"{m} " in methods.stdout for m in ("dc", "dm", "dsa", "idc", "mtt"))


def test_the_wheel_distils_with_a_shipped_config_by_name(installed, tmp_path):
    out = tmp_path / "run"
    result = run_installed(
        installed,
        "distill",
        "--config",
        "quickstart_dm",
        f"output_dir={out}",
        "num_stages=1",
        "iterations=2",
        "eval.every=2",
        "eval.epochs=2",
        "progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "dataset" / "pdd_schedule.json").exists() and (out / "dataset" / "README.md").exists()
    bad = run_installed(installed, "distill", "--config", "quickstart_dn", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'quickstart_dm'" in bad.stderr
