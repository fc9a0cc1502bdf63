"""Plugin registries fed by entry points.

Built-in methods and datasets register exactly as third-party packages do: an entry point in the
group ``occbench.methods`` or ``occbench.datasets`` whose name is the plugin name and whose value
is the class. A name claimed twice is an error naming both packages; an unknown name gets a
"did you mean".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from occbench.harness.api import Dataset, Method

T = TypeVar("T")

METHOD_GROUP = "occbench.methods"
DATASET_GROUP = "occbench.datasets"


class RegistryError(LookupError):
    """Base class of registry errors."""


class UnknownPluginError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicatePluginError(RegistryError):
    pass


class BrokenPluginError(RegistryError):
    pass


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: type[T]
    source: str  # distribution name, or "<runtime>" for register()


class Registry(Generic[T]):
    """A name → class registry for one entry-point group."""

    def __init__(self, kind: str, group: str, base: type[T]) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, Entry[T]] | None = None
        self._broken: dict[str, str] = {}

    # -- loading -------------------------------------------------------------------------------
    def _load(self) -> dict[str, Entry[T]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Entry[T]] = {}
        seen: set[tuple[str, str]] = set()
        for ep in entry_points(group=self.group):
            source = _dist_name(ep)
            if (ep.name, ep.value) in seen:  # same package visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            if ep.name in entries:
                raise DuplicatePluginError(
                    f"{self.kind} {ep.name!r} is registered twice: by {entries[ep.name].source!r} "
                    f"and by {source!r} (entry-point group {self.group!r}); uninstall one or rename it"
                )
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                self._broken[ep.name] = f"{source}: {ep.value}: {type(exc).__name__}: {exc}"
                continue
            self._check(ep.name, obj, source)
            entries[ep.name] = Entry(ep.name, obj, source)
        self._entries = entries
        return entries

    def _check(self, name: str, obj: object, source: str) -> None:
        if not (isinstance(obj, type) and issubclass(obj, self.base)):  # type: ignore[arg-type]
            raise BrokenPluginError(
                f"{self.kind} {name!r} from {source!r} is {obj!r}, not a subclass of "
                f"{self.base.__module__}.{self.base.__qualname__}"
            )
        declared = getattr(obj, "name", None)
        if declared != name:
            raise BrokenPluginError(
                f"{self.kind} entry point {name!r} from {source!r} points at a class whose "
                f"`name` is {declared!r}; they must be equal"
            )

    # -- public API ----------------------------------------------------------------------------
    def register(self, obj: type[T], source: str = "<runtime>") -> type[T]:
        """Register a class at run time (tests, notebooks). Same duplicate rules as entry points."""
        entries = self._load()
        name = getattr(obj, "name", None)
        if not isinstance(name, str):
            raise BrokenPluginError(f"{obj!r} has no string `name`")
        self._check(name, obj, source)
        if name in entries:
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is registered twice: by {entries[name].source!r} and by "
                f"{source!r}"
            )
        entries[name] = Entry(name, obj, source)
        return obj

    def unregister(self, name: str) -> None:
        self._load().pop(name, None)

    def get(self, name: str) -> type[T]:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        entries = self._load()
        if name in entries:
            return entries[name]
        if name in self._broken:
            raise BrokenPluginError(f"{self.kind} {name!r} failed to load: {self._broken[name]}")
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(entries)) or "none"
        raise UnknownPluginError(f"unknown {self.kind} {name!r}{hint} (known: {known})")

    def names(self) -> list[str]:
        return sorted(self._load())

    def entries(self) -> list[Entry[T]]:
        entries = self._load()
        return [entries[n] for n in sorted(entries)]

    def broken(self) -> dict[str, str]:
        self._load()
        return dict(self._broken)

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def reset(self) -> None:
        """Forget what was loaded (re-read entry points on next use)."""
        self._entries = None
        self._broken = {}


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.name) if dist is not None else "?"


methods: Registry[Method] = Registry("method", METHOD_GROUP, Method)
datasets: Registry[Dataset] = Registry("dataset", DATASET_GROUP, Dataset)
