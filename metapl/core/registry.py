"""Registries of named parts (methods, data sets, models): a name maps to where its entry lives.

The table of names is known without importing anything, so that the CLI can list the names (and `--help`
can answer) without loading PyTorch; an entry's module is imported the first time the entry is asked for.
Adding a part is one module that defines its entry plus one line in its registry's table.

Each part owns a settings dataclass (metapl/core/settings.py): its own keys of the config's section. `settings_class`
finds it without importing the part where it can: metapl's own parts name their settings in a torch-free table
(`settings`); a part registered with `add`, or a family's member, carries them on its entry (or family) as
`settings`, which imports its module.

A *family* registers every name that starts with a prefix ("timm/" → any timm architecture): its module's
entry is a `Family`, asked for the one entry of a name and for the check of a name. Names without the prefix
never import the family's module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from metapl.core.errors import ConfigError
from metapl.core.settings import NoSettings, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Family(Generic[T]):
    """The entries of every name `prefix + rest`: entry(rest) builds one; check(rest, key) raises one ConfigError
    line naming `key` when `rest` is not a member (with the closest member), and returns when it is."""

    entry: Callable[[str], T]
    check: Callable[[str, str], None]
    shown: str  # how listings show the family: "timm/<architecture>"
    settings: type | None = None  # the settings dataclass of every member (None: no keys of their own)


class Registry(Generic[T]):
    """`kind` names what is registered ("method"); `table` maps each name to "module:attribute"; `families`
    maps a name prefix ("timm/") to the "module:attribute" of its `Family`; `settings` maps a name to the
    "module:Class" of its settings dataclass in a module that imports no PyTorch (the names it leaves out: their
    entry's `settings`)."""

    def __init__(
        self,
        kind: str,
        key: str,
        table: dict[str, str],
        families: dict[str, str] | None = None,
        settings: dict[str, str] | None = None,
    ):
        self.kind, self.key = kind, key  # key: the config key that names one ("method.name")
        self._table = dict(table)
        self._families = dict(families or {})
        self._settings = dict(settings or {})
        self._loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        return list(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table or (isinstance(name, str) and self._family_prefix(name) is not None)

    def _family_prefix(self, name: str) -> str | None:
        return next((p for p in self._families if name.startswith(p) and len(name) > len(p)), None)

    def _family(self, prefix: str) -> Family[T]:
        module, _, attribute = self._families[prefix].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def check(self, name: str, key: str | None = None) -> None:
        """An unknown name is one ConfigError with the closest name, naming `key` (default: the registry's key).
        Only a family's names import anything: the family's module, which checks them."""
        key = key or self.key
        prefix = self._family_prefix(name) if isinstance(name, str) else None
        if prefix is not None:
            self._family(prefix).check(name[len(prefix) :], key)
        elif name not in self._table:
            shown = self.names() + [self._shown(p) for p in self._families]
            raise ConfigError(
                f"{key}={name!r} is not allowed{suggest(str(name), self.names())}; use one of: {', '.join(shown)}"
            )

    def _shown(self, prefix: str) -> str:
        return self._family(prefix).shown  # the family's module only: it imports nothing heavy at import

    def get(self, name: str) -> T:
        """The entry registered as `name` (a family's entry for a name with its prefix)."""
        self.check(name)
        if name not in self._loaded:
            prefix = self._family_prefix(name)
            if prefix is not None:
                self._loaded[name] = self._family(prefix).entry(name[len(prefix) :])
            else:
                module, _, attribute = self._table[name].partition(":")
                self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def entries(self) -> dict[str, T]:
        return {name: self.get(name) for name in self._table}

    def add(self, name: str, location: str, settings: str | None = None) -> None:
        """Register a part defined outside metapl ("my_package.my_module:ENTRY"). Its settings dataclass is its
        entry's `settings`, or `settings` ("my_package.settings:MySettings") to find it without importing the
        entry's module."""
        if name in self._table:
            raise ValueError(f"a {self.kind} named {name!r} is registered already")
        self._table[name] = location
        if settings is not None:
            self._settings[name] = settings

    def remove(self, name: str) -> None:
        """Undo `add` (a test's part, a plugin unloaded)."""
        for table in (self._table, self._settings, self._loaded):
            table.pop(name, None)

    # ------------------------------------------------------------------------------------------ settings
    def settings_class(self, name: str) -> type:
        """The settings dataclass of part `name` (a registered name): from the torch-free table when it is there,
        else its entry's or family's `settings` (NoSettings when it has none). An unknown name is the ConfigError
        of `check`; a family's member is not checked here (that imports the family's library)."""
        if name in self._settings:
            module, _, attribute = self._settings[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        prefix = self._family_prefix(name)
        holder: Any = self._family(prefix) if prefix is not None else self.get(name)
        return getattr(holder, "settings", None) or NoSettings

    def all_settings(self) -> dict[str, type]:
        """Every part's settings dataclass by name, a family's under the name listings show ("timm/<architecture>");
        parts registered with `add` are imported for it."""
        classes = {name: self.settings_class(name) for name in self._table}
        for prefix in self._families:
            classes[self._shown(prefix)] = self._family(prefix).settings or NoSettings
        return classes

    def owners(self, key: str) -> list[str]:
        """The parts (as all_settings names them) whose settings have the field `key`."""
        return [name for name, cls in self.all_settings().items() if key in {f.name for f in fields(cls)}]


def lazy_exports(module: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that imports each exported name from its module on first use (`exports`: name →
    module), so that importing the package (the config, `metapl config`) does not import PyTorch."""

    def attribute(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return attribute
