"""Registries of named parts (methods, data sets, models): a name maps to where its entry lives.

The table of names is known without importing anything, so that the CLI can list the names (and `--help`
can answer) without loading PyTorch; an entry's module is imported the first time the entry is asked for.
Adding a part is one module that defines its entry plus one line in its registry's table.
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from metapl.errors import ConfigError
from metapl.settings import suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """`kind` names what is registered ("method"); `table` maps each name to "module:attribute"."""

    def __init__(self, kind: str, key: str, table: dict[str, str]):
        self.kind, self.key = kind, key  # key: the config key that names one ("method.name")
        self._table = dict(table)
        self._loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        return list(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def check(self, name: str) -> None:
        """An unknown name is one ConfigError with the closest name (nothing is imported)."""
        if name not in self._table:
            raise ConfigError(
                f"{self.key}={name!r} is not allowed{suggest(str(name), self.names())}; "
                f"use one of: {', '.join(self.names())}"
            )

    def get(self, name: str) -> T:
        """The entry registered as `name`."""
        self.check(name)
        if name not in self._loaded:
            module, _, attribute = self._table[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def entries(self) -> dict[str, T]:
        return {name: self.get(name) for name in self._table}

    def add(self, name: str, location: str) -> None:
        """Register a part defined outside metapl ("my_package.my_module:ENTRY")."""
        if name in self._table:
            raise ValueError(f"a {self.kind} named {name!r} is registered already")
        self._table[name] = location
