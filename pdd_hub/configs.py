"""The configs shipped with pdd-hub (``recipes/configs/*.yaml``, installed as package data).

pdd-hub configs                       # name and first comment line of each
pdd-hub distill --config quickstart_dm
"""

from __future__ import annotations

import difflib
from importlib.resources import files
from pathlib import Path

from pdd_hub.errors import ConfigError

PACKAGE = "pdd_hub.recipe_configs"


def configs_dir() -> Path:
    """The folder holding the shipped YAML configs (in a checkout: ``recipes/configs``)."""
    return Path(str(files(PACKAGE)))


def list_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped config; the description is its first comment line."""
    out = []
    for path in sorted(configs_dir().glob("*.yaml")):
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        out.append((path.stem, first.lstrip("# ").strip()))
    return out


def shipped_config(name: str) -> Path:
    """The path of the shipped config ``name`` (with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    path = configs_dir() / f"{stem}.yaml"
    if path.exists():
        return path
    names = [n for n, _ in list_configs()]
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"no config file {name!r} and no shipped config of that name; {hint}"
        f"shipped configs: {', '.join(names)}"
    )
