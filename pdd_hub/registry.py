"""Registries that map a name to a class and its config dataclass, the way timm maps model names.

    @methods.register("dm", DMConfig)
    class DM(Distiller): ...

A registry imports its package on first use (whose ``__init__`` imports every module in it), and the
``pdd_hub.<kind>`` entry points of installed distributions, so a new method is one new file, here or
in another package, and nothing else is edited. This module imports nothing of pdd-hub's but its
errors: :mod:`pdd_hub.config` imports it, never the other way round.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pdd_hub.errors import UnknownNameError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: the class that implements it and the dataclass of its config section."""

    name: str
    cls: T
    config_cls: type | None
    summary: str


class Registry(Generic[T]):
    """Names of one kind (``"method"``, ``"selection"``) found in ``package`` and in entry points."""

    def __init__(self, kind: str, package: str, entry_point_group: str) -> None:
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False

    def register(self, name: str, config_cls: type | None = None) -> Callable[[T], T]:
        """Class decorator: register the class under ``name`` with its config dataclass."""

        def add(cls: T) -> T:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (getattr(cls, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, cls, config_cls, doc[0] if doc else "")
            return cls

        return add

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        """The entry of ``name``; an unknown name raises :class:`UnknownNameError` listing the known."""
        self._discover()
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; {hint}registered {self.kind}s: {', '.join(self.names())}"
        )

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        importlib.import_module(self.package)
        for point in entry_points(group=self.entry_point_group):
            try:
                point.load()
            except Exception as exc:  # a broken plug-in must not take the built-in names down with it
                logger.warning("could not load %s plug-in %r: %s", self.kind, point.name, exc)


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package (what makes its ``@register`` decorators run)."""
    for module in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{module.name}")


def registry_summary(registry: Registry[Any]) -> list[tuple[str, str]]:
    """``(name, one-line summary)`` of every entry, for listings."""
    return [(name, registry.get(name).summary) for name in registry.names()]


# The registries of pdd-hub: base distillation methods and subset-selection methods.
METHODS: Registry[Any] = Registry("method", "pdd_hub.methods", "pdd_hub.methods")
register_method = METHODS.register
SELECTIONS: Registry[Any] = Registry("selection method", "pdd_hub.selection", "pdd_hub.selections")
register_selection = SELECTIONS.register
