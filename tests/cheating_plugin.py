"""A method plugin that tries every known route to the test labels (tests/test_sealed.py).

It reports, in its job log, one line ``CHEAT-REPORT {json}`` with each route's outcome
(``"open: ..."`` or ``"blocked: ..."``); when a route hands it the test labels it returns them as
scores (AUC 1), otherwise it scores honestly exactly like ``test-mean``.

``token``: a string that only the data root's path contains (the routes look for it);
``port``: a label server on 127.0.0.1 started by the test; ``probe_file``: a label file whose
host path the attacker knows; ``config_file``: the user's occbench config, by host path.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from occbench.harness import registry
from occbench.harness.api import Context, Data, Dataset, ImageData, Labels, Method, Modality


class _OwnDataset(Dataset):
    """A dataset whose labels are harmless: tests whether the guard itself can be undone."""

    name = "cheat-own"
    modality = "image"

    def fingerprint(self) -> str:
        return "x"

    def load(self, normal_class: str | None = None) -> Any:
        raise NotImplementedError

    def test_labels(self, normal_class: str | None = None) -> Labels:
        return Labels({"": np.ones(3)})


def _has(v: Any, token: str) -> bool:
    if v is token:  # the needle itself
        return False
    try:
        return isinstance(v, str | Path | bytes) and token in (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    except Exception:
        return False


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(1 << 20)


class Cheater(Method):
    name = "test-cheater"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "video"})

    def __init__(self, token: str = "", port: int = 0, probe_file: str = "",
                 config_file: str = "") -> None:
        self.token = token
        self.port = port
        self.probe_file = probe_file
        self.config_file = config_file

    # -- honest part (identical to plugins_for_tests.MeanDistance) ------------------------------
    def fit(self, train: Data, context: Context) -> Method:
        self.mean_ = float(np.mean(train.images) if isinstance(train, ImageData)
                           else np.mean([v.frames.mean() for v in train.videos]))
        self._train = train
        return self

    def _honest(self, test: Data) -> Any:
        if isinstance(test, ImageData):
            return np.abs(test.images.reshape(len(test), -1).mean(1) - self.mean_)
        return {v.video_id: np.abs(v.frames.reshape(len(v), -1).mean(1) - self.mean_)
                for v in test.videos}

    # -- the routes ----------------------------------------------------------------------------
    def _routes(self, test: Data, ctx: Context) -> tuple[dict[str, str], Any]:
        r: dict[str, str] = {}
        labels: Any = None
        # the data root's path holds "/root-<token>": only the params hold the bare token
        tok = "/root-" + self.token

        def attempt(name: str, fn: Any) -> Any:
            try:
                out = fn()
            except Exception as exc:
                r[name] = f"blocked: {type(exc).__name__}: {str(exc)[:120]}"
                return None
            if not r.get(name):
                r[name] = "blocked: nothing" if out is None else \
                    "open" if not isinstance(out, str) else f"open: {out[:150]}"
            return out

        # 1. guard bypasses: __wrapped__ of a real dataset's test_labels, then reset counters
        def wrapped() -> Any:
            for e in registry.datasets.entries():
                fn = getattr(e.obj.test_labels, "__wrapped__", None)
                if fn is not None:
                    r["wrapped"] = f"open: {e.name}.test_labels.__wrapped__"
                    return fn
            raise AttributeError("no test_labels has __wrapped__")
        attempt("wrapped", wrapped)

        def reset_guard() -> Any:
            import occbench.harness.api as api

            g = getattr(api, "_label_guard", None)
            if isinstance(g, dict):
                g["depth"] = 0
            gate = getattr(api, "_gate", None)
            for attr in ("_depth", "_sealed"):
                if gate is not None and hasattr(gate, attr):
                    setattr(gate, attr, 0 if attr == "_depth" else False)
            return _OwnDataset().test_labels(None)
        attempt("guard_reset", reset_guard)

        # 2. the data root by name: frames, gc objects, argv, environment, other processes
        def frames() -> Any:
            f = sys._getframe()
            while f is not None and f.f_code.co_filename == __file__:
                f = f.f_back  # the plugin's own frames hold the needle
            while f is not None:
                for k, v in list(f.f_locals.items()):
                    vals = [v, *(list(v)[:50] if isinstance(v, list | tuple) else [])]
                    vals += [getattr(v, "_value", None)] if hasattr(v, "__slots__") else []
                    if any(_has(x, tok) for x in vals):
                        return f"{f.f_code.co_name}:{k}"
                f = f.f_back
            raise LookupError("no frame local names the data root")
        attempt("frames", frames)

        def gc_walk() -> Any:
            for i, o in enumerate(gc.get_objects()):
                if i > 3_000_000:
                    break
                try:
                    refs = gc.get_referents(o)
                except Exception:
                    continue
                for x in refs:
                    if _has(x, tok):
                        return type(o).__name__
            raise LookupError("no object names the data root")
        attempt("gc", gc_walk)

        def argv() -> Any:
            if any(_has(a, tok) for a in sys.argv) or _has(_read("/proc/self/cmdline"), tok):
                return "argv"
            raise LookupError("argv names no data root")
        attempt("argv", argv)

        def environ() -> Any:
            if any(_has(v, tok) for v in os.environ.values()) or \
                    _has(_read("/proc/self/environ"), tok):
                return "environ"
            raise LookupError("environment names no data root")
        attempt("environ", environ)

        def ppid() -> Any:
            pp = os.getppid()
            for what in ("cmdline", "environ"):
                try:
                    if _has(_read(f"/proc/{pp}/{what}"), tok):
                        return f"/proc/{pp}/{what}"
                except OSError:
                    pass
            raise LookupError(f"/proc/{pp} names no data root")
        attempt("ppid", ppid)

        def any_process() -> Any:
            for d in os.listdir("/proc"):
                if not d.isdigit() or int(d) == os.getpid():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        if _has(_read(f"/proc/{d}/{what}"), tok):
                            return f"/proc/{d}/{what}"
                    except OSError:
                        pass
            raise LookupError("no visible process names the data root")
        attempt("processes", any_process)

        # 3. memmaps: their files, the sidecars next to them, up to the label files
        def memmaps() -> Any:
            arrays = [*([test.images] if isinstance(test, ImageData) else
                        [v.frames for v in test.videos])]
            names = [getattr(a, "filename", None) for a in arrays]
            names = [n for n in names if n]
            if not names:
                raise LookupError("the arrays name no file")
            return str(names[0])
        mm = attempt("memmap", memmaps)

        def sidecar() -> Any:
            if not mm:
                raise LookupError("no memmap file")
            meta = json.loads(Path(mm).with_suffix(".json").read_text())
            if "source" not in meta:
                raise LookupError("the sidecar names no source folder")
            return meta["source"]
        attempt("sidecar_source", sidecar)

        # 4. files by host path: known label file, the user's config, Debian's datasets
        def probe_file() -> Any:
            return np.load(self.probe_file)
        got = attempt("probe_file", probe_file)
        if got is not None:
            labels = got

        def config() -> Any:
            paths = [self.config_file,
                     str(Path.home() / ".config" / "occbench" / "config.toml")]
            for p in paths:
                if p and os.path.exists(p):
                    return Path(p).read_text()
            raise FileNotFoundError("no occbench config visible")
        attempt("config", config)

        def usr_share() -> Any:
            items = os.listdir("/usr/share/datasets")
            if not items:
                raise FileNotFoundError("/usr/share/datasets is empty")
            return items
        attempt("usr_share_datasets", usr_share)

        # 5. the network: ask the test's label server
        def server() -> Any:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/labels",
                                        timeout=3) as resp:
                return np.asarray(json.loads(resp.read()), dtype=float)
        got = attempt("label_server", server)
        if got is not None:
            labels = got
        return r, labels

    def score(self, test: Data, context: Context) -> Any:
        if getattr(self, "_scored", False):  # the harness's test-independence re-score
            return self._honest(test)
        self._scored = True
        routes, labels = self._routes(test, context)
        context.logger.info("CHEAT-REPORT %s", json.dumps(routes, sort_keys=True))
        honest = self._honest(test)
        if labels is not None and isinstance(test, ImageData) and len(labels) == len(test):
            return np.asarray(labels, dtype=float)
        return honest


registry.methods.register(Cheater, source="tests")
