"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE=1; Hub calls go to tests/fake_hub.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = (REPO.parent / "shared" / "datasets" / "cifar10").resolve()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The decode cache of the tests lives in a session folder, so a stale user cache can't leak in.
    os.environ["PDD_HUB_CACHE"] = str(tmp_path_factory.mktemp("pdd_cache"))


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    if not (CIFAR10 / "plain_text").exists():
        pytest.skip(f"CIFAR-10 not found at {CIFAR10} (expected ../shared beside the repo)")
    return CIFAR10


@pytest.fixture(scope="session")
def cifar10(cifar10_path: Path):
    from pdd_hub.data import load_real_data

    return load_real_data(str(cifar10_path), val_per_class=20, seed=0)


@pytest.fixture(scope="session")
def digits():
    from pdd_hub.data import load_real_data

    return load_real_data("sklearn:digits", val_per_class=20, seed=0)
