"""Plugin registries fed by entry points.

Built-in methods and datasets register exactly as third-party packages do: an entry point in the
group ``occbench.methods`` or ``occbench.datasets`` whose name is the plugin name and whose value
is the class. A name claimed twice is an error naming both packages; an unknown name gets a
"did you mean".
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from occbench.harness.api import Dataset, Method

T = TypeVar("T")

METHOD_GROUP = "occbench.methods"
DATASET_GROUP = "occbench.datasets"
PLUGIN_MODULES_ENV = "OCCBENCH_PLUGIN_MODULES"


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) for the choices close to ``name``
    (``difflib``'s similarity ≥ ``cutoff``), else ``""``: the hint occbench's unknown-name
    errors end with."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

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
    """A name → class registry for one entry-point group.

    Entry points are *listed* eagerly (so duplicates are caught at once) but *imported* only
    when a plugin is asked for, so a worker running one method never imports the others.
    """

    def __init__(self, kind: str, group: str, base: type[T]) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._eps: dict[str, tuple[EntryPoint | None, str]] | None = None
        self._loaded: dict[str, Entry[T]] = {}
        self._broken: dict[str, str] = {}

    # -- loading -------------------------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[EntryPoint | None, str]]:
        if self._eps is not None:
            return self._eps
        eps: dict[str, tuple[EntryPoint | None, str]] = {}
        seen: set[tuple[str, str]] = set()
        for ep in entry_points(group=self.group):
            source = _dist_name(ep)
            if (ep.name, ep.value) in seen:  # same package visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            if ep.name in eps:
                raise DuplicatePluginError(
                    f"{self.kind} {ep.name!r} is registered twice: by {eps[ep.name][1]!r} and by "
                    f"{source!r} (entry-point group {self.group!r}); uninstall one or rename it"
                )
            eps[ep.name] = (ep, source)
        self._eps = eps
        # Modules named in $OCCBENCH_PLUGIN_MODULES are imported too: they register classes with
        # register() at import time. This lets unpackaged plugins (and tests) reach worker
        # processes, which inherit the environment.
        for mod in filter(None, os.environ.get(PLUGIN_MODULES_ENV, "").split(",")):
            try:
                importlib.import_module(mod.strip())
            except Exception as exc:
                self._broken[f"<module {mod}>"] = f"{type(exc).__name__}: {exc}"
        return eps

    def _load_one(self, name: str) -> Entry[T] | None:
        if name in self._loaded:
            return self._loaded[name]
        eps = self._scan()  # may import $OCCBENCH_PLUGIN_MODULES, which register() directly
        if name in self._loaded:
            return self._loaded[name]
        if name not in eps or name in self._broken:
            return None
        ep, source = eps[name]
        assert ep is not None
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            self._broken[name] = f"{source}: {ep.value}: {type(exc).__name__}: {exc}"
            return None
        try:
            self._check(name, obj, source)
        except BrokenPluginError as exc:  # misnamed or not a subclass: reported, not raised
            self._broken[name] = str(exc)
            return None
        entry = Entry(name, obj, source)
        self._loaded[name] = entry
        return entry

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
        eps = self._scan()
        name = getattr(obj, "name", None)
        if not isinstance(name, str):
            raise BrokenPluginError(f"{obj!r} has no string `name`")
        self._check(name, obj, source)
        if name in eps:
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is registered twice: by {eps[name][1]!r} and by "
                f"{source!r}"
            )
        eps[name] = (None, source)
        self._loaded[name] = Entry(name, obj, source)
        return obj

    def unregister(self, name: str) -> None:
        self._scan().pop(name, None)
        self._loaded.pop(name, None)

    def registered_at_runtime(self, name: str) -> type[T] | None:
        """The class of ``name`` if :meth:`register` put it here (no entry point); imports
        nothing."""
        e = self._loaded.get(name)
        if e is None or self._eps is None or name not in self._eps:
            return None
        return e.obj if self._eps[name][0] is None else None

    def get(self, name: str) -> type[T]:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        e = self._load_one(name)
        if e is not None:
            return e
        if name in self._broken:
            raise BrokenPluginError(f"{self.kind} {name!r} failed to load: {self._broken[name]}")
        names = list(self._scan())
        hint = did_you_mean(name, names)
        known = ", ".join(sorted(names)) or "none"
        raise UnknownPluginError(f"unknown {self.kind} {name!r}{hint} (known: {known})")

    def source_of(self, name: str) -> str | None:
        """The distribution that provides ``name`` (``"<runtime>"``... for ``register()``),
        read from the entry point without importing the plugin; ``None`` if unknown."""
        if name in self._loaded:
            return self._loaded[name].source
        try:
            found = self._scan().get(name)
        except RegistryError:
            return None
        return None if found is None else found[1]

    def names(self) -> list[str]:
        """Names of plugins that load (imports every plugin)."""
        return [e.name for e in self.entries()]

    def entries(self) -> list[Entry[T]]:
        out = []
        for n in sorted(self._scan()):
            e = self._load_one(n)
            if e is not None:
                out.append(e)
        return out

    def broken(self) -> dict[str, str]:
        self.entries()
        return dict(self._broken)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._scan() and name not in self._broken

    def snapshot(self) -> object:
        """The registry's state (entry points listed, classes loaded or registered, broken
        plugins), for :meth:`restore`: tests that reset the registry put it back exactly, so
        classes registered at import time by other test modules survive."""
        return (None if self._eps is None else dict(self._eps), dict(self._loaded),
                dict(self._broken))

    def restore(self, state: object) -> None:
        """Put back a state taken by :meth:`snapshot`."""
        eps: dict[str, tuple[EntryPoint | None, str]] | None
        loaded: dict[str, Entry[T]]
        broken: dict[str, str]
        eps, loaded, broken = state  # type: ignore[misc]
        self._eps = None if eps is None else dict(eps)
        self._loaded, self._broken = dict(loaded), dict(broken)

    def reset(self) -> None:
        """Forget what was loaded (re-read entry points on next use)."""
        self._eps = None
        self._loaded = {}
        self._broken = {}


def dist_version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` (``None`` for runtime registrations)."""
    from importlib.metadata import PackageNotFoundError, version

    if dist.startswith("<") or dist == "?":
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.name) if dist is not None else "?"


methods: Registry[Method] = Registry("method", METHOD_GROUP, Method)
datasets: Registry[Dataset] = Registry("dataset", DATASET_GROUP, Dataset)
