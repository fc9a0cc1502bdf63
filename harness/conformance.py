"""The public conformance kit for method plugins (``occbench validate``).

``check_method(cls)`` runs a method on small probe data of each modality it declares and returns
a :class:`ValidationReport`. The project's own tests run it over every registered method; a
plugin author runs ``occbench validate my-method`` (or ``module:Class``) before publishing.

Checks, per modality:

* ``params``: ``__init__`` stores each parameter under its own name; all parameters have defaults.
* ``auxiliary``: the image datasets it asks for (``Method.auxiliary_datasets``) exist and load;
  they are handed over as ``context.auxiliary`` as in a real run.
* ``fit_returns_self``.
* ``scores``: one finite float per test item (video: NaN only in the declared border frames).
* ``deterministic``: the same seed gives identical scores on CPU.
* ``test_independent``: an item's score does not change when the other test items change (the
  method does not learn from the test set: it was fit on normal data only).
* ``no_label_access``: reading test labels during fit/score (through any registered dataset, or
  opening the probe's label file) is caught and fails the check.
* ``constant_image`` / ``one_frame_video``: degenerate inputs give a finite score, no crash.
* ``separates`` (warning only): obvious anomalies score higher on average than normal items.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from occbench.harness import registry
from occbench.harness.api import (
    Context,
    Data,
    ImageData,
    Method,
    Modality,
    Video,
    VideoData,
)
from occbench.harness.run.execute import (
    LabelAccessError,
    ScoreError,
    _load_auxiliary,
    label_guard,
    normalise_scores,
)
from occbench.harness.run.spec import auxiliary_of


@dataclass
class CheckResult:
    check: str
    modality: str
    passed: bool
    message: str = ""
    warning_only: bool = False


@dataclass
class ValidationReport:
    method: str  # the plugin's name (a method, or a dataset when kind == "dataset")
    results: list[CheckResult] = field(default_factory=list)
    kind: str = "method"

    @property
    def ok(self) -> bool:
        return all(r.passed or r.warning_only for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and not r.warning_only]

    def format(self) -> str:
        lines = [f"conformance of {self.kind} {self.method!r}: {'PASS' if self.ok else 'FAIL'}"]
        for r in self.results:
            mark = "ok  " if r.passed else ("warn" if r.warning_only else "FAIL")
            lines.append(f"  [{mark}] {r.modality:5s} {r.check}" + (f": {r.message}"
                                                                    if r.message else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Probe data: normal = vertical bars, anomalies = horizontal bars (images); the video probe
# moves a small bar left-right, anomalies move it vertically and make it big.
# --------------------------------------------------------------------------------------------


def probe_images(n: int, anomalous: bool, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    x = rng.integers(0, 30, size=(n, size, size, 1)).astype(np.uint8)
    for i in range(n):
        p = int(rng.integers(size // 4, 3 * size // 4))
        if anomalous:
            x[i, p - 2:p + 2, 4:-4, 0] = 230
        else:
            x[i, 4:-4, p - 2:p + 2, 0] = 230
    return x


def probe_video(vid: str, n: int, rng: np.random.Generator, anomalous_from: int | None = None,
                size: int = 32) -> tuple[Video, np.ndarray]:
    f = rng.integers(0, 30, size=(n, size, size, 1)).astype(np.uint8)
    lab = np.zeros(n, np.int8)
    for t in range(n):
        x = 4 + (t % (size - 8))
        if anomalous_from is not None and t >= anomalous_from:
            lab[t] = 1
            y = 4 + (3 * t) % (size - 12)
            f[t, y:y + 10, 8:20, 0] = 250
        else:
            f[t, 12:20, x:x + 3, 0] = 220
    return Video(vid, f), lab


def probe_sets(modality: Modality, seed: int = 0) -> tuple[Data, Data, np.ndarray]:
    rng = np.random.default_rng(1234 + seed)
    if modality == "image":
        train = ImageData(probe_images(64, False, rng))
        te_n, te_a = probe_images(12, False, rng), probe_images(8, True, rng)
        test = ImageData(np.concatenate([te_n, te_a]))
        return train, test, np.r_[np.zeros(12), np.ones(8)].astype(np.int8)
    tr = [probe_video(f"tr{i}", 40, rng)[0] for i in range(2)]
    v1, l1 = probe_video("te0", 36, rng, anomalous_from=18)
    v2, l2 = probe_video("te1", 36, rng, anomalous_from=24)
    return VideoData(tuple(tr)), VideoData((v1, v2)), np.concatenate([l1, l2])


# --------------------------------------------------------------------------------------------
# Label tripwires
# --------------------------------------------------------------------------------------------

_watch: dict[str, Any] = {"paths": set(), "hits": []}
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watch["paths"] and args and isinstance(args[0], (str, Path)):
        p = str(Path(args[0]).resolve()) if not str(args[0]).startswith("<") else ""
        if p in _watch["paths"]:
            _watch["hits"].append(p)


@contextmanager
def label_tripwire(label_files: list[Path]) -> Iterator[list[str]]:
    """Within the block: every registered dataset's ``test_labels`` raises, and opening any of
    ``label_files`` is recorded. Yields the list of recorded opens."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # hooks cannot be removed; it is inert outside the block
        _hook_installed = True
    _watch["paths"] = {str(p.resolve()) for p in label_files}
    _watch["hits"] = []
    try:
        with label_guard():
            yield _watch["hits"]
    finally:
        _watch["paths"] = set()


# --------------------------------------------------------------------------------------------
# The kit
# --------------------------------------------------------------------------------------------


def load_method_class(plugin: str) -> type[Method]:
    """A registered method name, or ``package.module:ClassName``."""
    if ":" in plugin:
        mod, _, attr = plugin.partition(":")
        obj = getattr(importlib.import_module(mod), attr)
        if not (isinstance(obj, type) and issubclass(obj, Method)):
            raise TypeError(f"{plugin} is not a subclass of occbench.harness.api.Method")
        return obj
    return registry.methods.get(plugin)


def _run(cls: type[Method], params: dict[str, Any], train: Data, test: Data, seed: int,
         fast: bool, workdir: Path, aux: dict[str, ImageData]) -> tuple[Method, Any]:
    m = cls(**params)
    ctx = Context(seed=seed, device="cpu", workdir=workdir, fast=fast, auxiliary=aux)
    fitted = m.fit(train, ctx)
    return fitted, fitted.score(test, ctx)


def check_method(plugin: str | type[Method], params: dict[str, Any] | None = None,
                 fast: bool = True, modalities: list[Modality] | None = None,
                 data_root: str | Path | None = None,
                 auxiliary: dict[str, ImageData] | None = None) -> ValidationReport:
    """Run every conformance check; never raises for a method's fault.

    The auxiliary image datasets the method asks for are loaded from ``data_root``, unless
    ``auxiliary`` hands them over already loaded (a sealed check, which sees no data root).
    """
    cls = load_method_class(plugin) if isinstance(plugin, str) else plugin
    report = ValidationReport(getattr(cls, "name", cls.__name__))
    add = report.results.append
    params = dict(params or {})

    # -- params contract
    try:
        names = cls.param_names()
        defaults = cls.default_params()
        missing = [n for n in names if n not in defaults]
        m = cls(**params)
        got = m.get_params()
        expect = {**defaults, **params}
        wrong = [k for k in names if k in expect and got.get(k) is not expect[k]
                 and got.get(k) != expect[k]]
        if missing or wrong:
            add(CheckResult("params", "-", False,
                            f"parameters without default {missing}; not stored as given {wrong}"))
        else:
            add(CheckResult("params", "-", True))
    except Exception as exc:
        add(CheckResult("params", "-", False, f"{type(exc).__name__}: {exc}"))
        return report

    # -- auxiliary datasets it asks for (e.g. an intruder pool): resolved as a run would
    try:
        root = None if data_root is None else str(data_root)
        aux = dict(auxiliary) if auxiliary is not None else {
            role: _load_auxiliary(a["dataset"], root)
            for role, a in auxiliary_of(m, root).items()}
    except Exception as exc:
        add(CheckResult("auxiliary", "-", False, f"{type(exc).__name__}: {exc}"))
        return report
    if aux:
        add(CheckResult("auxiliary", "-", True, ", ".join(
            f"{role}: {len(d)} images {d.images.shape[1:]}" for role, d in sorted(aux.items()))))

    mods = modalities or sorted(cls.modalities)
    for mod in mods:
        _check_modality(cls, params, mod, fast, add, aux)
    return report


def _check_modality(cls: type[Method], params: dict[str, Any], mod: Modality, fast: bool,
                    add: Callable[[CheckResult], None], aux: dict[str, ImageData]) -> None:
    train, test, y = probe_sets(mod)
    with tempfile.TemporaryDirectory(prefix="occbench-validate-") as tmp:
        wd = Path(tmp)
        decoy = wd / "test_labels.npy"
        np.save(decoy, y)
        # 1. fit/score under the tripwire
        try:
            with label_tripwire([decoy]) as hits:
                model = cls(**params)
                ctx = Context(seed=0, device="cpu", workdir=wd, fast=fast, auxiliary=aux)
                fitted = model.fit(train, ctx)
                add(CheckResult("fit_returns_self", mod, fitted is model,
                                "" if fitted is model else "fit() must return self"))
                out = fitted.score(test, ctx)
            if hits:
                add(CheckResult("no_label_access", mod, False,
                                f"opened the test label file {hits[0]}"))
                return
            add(CheckResult("no_label_access", mod, True))
        except LabelAccessError as exc:
            add(CheckResult("no_label_access", mod, False, f"reads test labels: {exc}"))
            return
        except Exception as exc:
            add(CheckResult("fit_score", mod, False,
                            f"{type(exc).__name__}: {exc}\n{_short_tb()}"))
            return
        try:
            scores = normalise_scores(fitted, test, out)
            add(CheckResult("scores", mod, True))
        except ScoreError as exc:
            add(CheckResult("scores", mod, False, str(exc)))
            return
        flat = np.concatenate([scores[k] for k in scores])

        # 2. determinism
        try:
            _, out2 = _run(cls, params, train, test, 0, fast, wd, aux)
            s2 = normalise_scores(cls(**params), test, out2)
            flat2 = np.concatenate([s2[k] for k in s2])
            same = np.array_equal(flat, flat2, equal_nan=True)
            diff = np.nanmax(np.abs(flat - flat2)) if not same else 0.0
            msg = "" if same else f"same seed gave different scores (max |Δ| {diff:.3g})"
            add(CheckResult("deterministic", mod, bool(same), msg))
        except Exception as exc:
            add(CheckResult("deterministic", mod, False, f"{type(exc).__name__}: {exc}"))

        # 3. test independence: score a reordered subset with the same fitted model
        try:
            if isinstance(test, ImageData):
                idx = np.arange(len(test))[::-2][:6]
                sub = ImageData(np.ascontiguousarray(test.images[idx]))
                s_sub = normalise_scores(fitted, sub, fitted.score(sub, ctx))[""]
                ref = scores[""][idx]
            else:
                sub_v = VideoData((test.videos[1],))
                s_sub = normalise_scores(fitted, sub_v, fitted.score(sub_v, ctx))[
                    test.videos[1].video_id]
                ref = scores[test.videos[1].video_id]
            ok = np.allclose(s_sub, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
            add(CheckResult("test_independent", mod, bool(ok), "" if ok else
                            "an item's score changed when other test items changed: the method "
                            "uses the test set (transductive); it must score each item from the "
                            "model fit on normal data only"))
        except Exception as exc:
            add(CheckResult("test_independent", mod, False, f"{type(exc).__name__}: {exc}"))

        # 4. degenerate input
        try:
            if mod == "image":
                shape = test.images.shape[1:]  # type: ignore[union-attr]
                const = ImageData(np.stack([np.zeros(shape, np.uint8),
                                            np.full(shape, 128, np.uint8)]))
                s = normalise_scores(fitted, const, fitted.score(const, ctx))[""]
                add(CheckResult("constant_image", mod, True))
            else:
                one = VideoData((Video("one", np.ascontiguousarray(
                    test.videos[0].frames[:1])),))  # type: ignore[union-attr]
                s = normalise_scores(fitted, one, fitted.score(one, ctx))["one"]
                add(CheckResult("one_frame_video", mod, True,
                                "" if np.isfinite(s).all() else "returns NaN (unscorable frame)"))
        except Exception as exc:
            add(CheckResult("constant_image" if mod == "image" else "one_frame_video", mod, False,
                            f"{type(exc).__name__}: {exc}"))

        # 5. direction (warning only: fast settings may be too weak to learn)
        keep = ~np.isnan(flat)
        if keep.any() and 0 < y[keep].sum() < keep.sum():
            gap = flat[keep][y[keep] == 1].mean() - flat[keep][y[keep] == 0].mean()
            add(CheckResult("separates", mod, bool(gap > 0),
                            f"mean anomalous − normal score = {gap:.4g}", warning_only=True))


def _short_tb() -> str:
    return "".join(traceback.format_exc().splitlines(True)[-4:]).rstrip()


# --------------------------------------------------------------------------------------------
# Dataset plugins
# --------------------------------------------------------------------------------------------


def check_dataset_plugin(name: str, params: dict[str, Any] | None = None,
                         root: str | Path | None = None, max_classes: int = 3
                         ) -> ValidationReport:
    """Checks of a dataset plugin (``occbench validate NAME`` for a dataset); never raises for
    the plugin's fault.

    ``construct`` (``__init__`` with ``root`` and ``params``), ``classes`` (image: unique
    strings; video: ``None``), per class (the first ``max_classes``): ``load`` (non-empty
    normal-only training split of the declared modality, read without test labels: ``load`` runs
    under the same label guard as a method), ``labels`` (aligned with the test split, 0/1, both
    present), ``deterministic`` (a second load gives identical arrays); then ``fingerprint``
    (a non-empty string, the same for a second instance) and the dataset's own ``check()``.
    """
    from occbench.harness.api import Dataset, verify_labels_match

    report = ValidationReport(name, kind="dataset")
    add = report.results.append
    try:
        cls = registry.datasets.get(name)
        ds: Dataset = cls(root=root, **dict(params or {}))
        add(CheckResult("construct", "-", True))
    except Exception as exc:
        add(CheckResult("construct", "-", False, f"{type(exc).__name__}: {exc}"))
        return report
    mod = getattr(cls, "modality", None)
    try:
        classes = ds.classes()
        if mod == "image":
            ok = bool(classes) and all(isinstance(c, str) for c in classes or []) and \
                len(set(classes or [])) == len(classes or [])
            add(CheckResult("classes", str(mod), ok, "" if ok else
                            f"an image dataset lists its classes as unique strings, got "
                            f"{classes!r}"))
            if not ok:
                return report
        else:
            add(CheckResult("classes", str(mod), classes is None, "" if classes is None else
                            "a video dataset has no classes: classes() must return None"))
    except Exception as exc:
        add(CheckResult("classes", str(mod), False, f"{type(exc).__name__}: {exc}"))
        return report
    for c in (classes or [None])[:max_classes]:
        where = f"{mod}[{c}]" if c is not None else str(mod)
        try:
            with label_guard():
                split = ds.load(c)
            again = ds.load(c)
        except LabelAccessError as exc:
            add(CheckResult("load", where, False, f"load() reads test labels: {exc}"))
            continue
        except Exception as exc:
            add(CheckResult("load", where, False, f"{type(exc).__name__}: {exc}"))
            continue
        kinds = {"image": ImageData, "video": VideoData}
        want = kinds.get(str(mod))
        if want is None or not isinstance(split.train, want) or not isinstance(split.test, want):
            add(CheckResult("load", where, False, f"load() must return {mod} data for train "
                            f"and test, got {type(split.train).__name__}/"
                            f"{type(split.test).__name__}"))
            continue
        if split.train.n_items == 0 or split.test.n_items == 0:
            add(CheckResult("load", where, False, "empty training or test split"))
            continue
        add(CheckResult("load", where, True, f"{split.train.n_items} training, "
                        f"{split.test.n_items} test items"))
        try:
            labels = ds.test_labels(c)
            verify_labels_match(split.test, labels)
            lab = np.concatenate([np.asarray(v).ravel() for v in labels.per_video.values()])
            bad = set(np.unique(lab).tolist()) - {0, 1}
            msg = (f"labels must be 0/1, found {sorted(bad)[:5]}" if bad else
                   "" if 0 < lab.sum() < len(lab) else
                   "the test set needs normal (0) and anomalous (1) items")
            add(CheckResult("labels", where, not msg, msg))
        except Exception as exc:
            add(CheckResult("labels", where, False, f"{type(exc).__name__}: {exc}"))
        same = _same_data(split.train, again.train) and _same_data(split.test, again.test)
        add(CheckResult("deterministic", where, same, "" if same else
                        "a second load() gave different data"))
    try:
        fp = ds.fingerprint()
        fp2 = cls(root=root, **dict(params or {})).fingerprint()
        ok = isinstance(fp, str) and bool(fp) and fp == fp2
        add(CheckResult("fingerprint", "-", ok, "" if ok else
                        f"fingerprint() must be a non-empty string, stable across instances "
                        f"(got {fp!r} and {fp2!r})"))
    except Exception as exc:
        add(CheckResult("fingerprint", "-", False, f"{type(exc).__name__}: {exc}"))
    try:
        rep = ds.check()
        add(CheckResult("check", "-", rep.ok, "; ".join(rep.errors)))
    except Exception as exc:
        add(CheckResult("check", "-", False, f"{type(exc).__name__}: {exc}"))
    return report


def _same_data(a: Data, b: Data) -> bool:
    if isinstance(a, ImageData) and isinstance(b, ImageData):
        return bool(np.array_equal(a.images, b.images))
    if isinstance(a, VideoData) and isinstance(b, VideoData):
        return a.video_ids == b.video_ids and all(
            np.array_equal(x.frames, y.frames) for x, y in zip(a.videos, b.videos, strict=True))
    return False


# --------------------------------------------------------------------------------------------
# Sealed: the checks in the bubblewrap sandbox that runs the method's jobs
# --------------------------------------------------------------------------------------------


def check_method_sealed(name: str, params: dict[str, Any], data_root: str | None,
                        bwrap: str, timeout_s: float = 1800) -> ValidationReport:
    """:func:`check_method` (fast) run by ``occbench validate --format json`` inside the same
    sandbox as the method's jobs (``sandbox.layout``: no data root, store, labels or network).

    The auxiliary image datasets it asks for are loaded here, by the harness, and handed over as
    ``.npy`` files, as a sealed job's are. A sandbox that cannot report is a failed
    ``sealed_check``.
    """
    import json
    import subprocess

    from occbench.harness.run import sandbox

    cls = registry.methods.get(name)
    runtime = registry.methods.registered_at_runtime(name) is not None
    # a class registered at run time is not an entry point inside: name its module instead
    ref = f"{cls.__module__}:{cls.__qualname__}" if runtime else name
    report = ValidationReport(name)
    lay = sandbox.layout(name, data_root, runtime=runtime)
    with tempfile.TemporaryDirectory(prefix="occbench-check-") as hd:
        extra: list[str] = []
        for role, a in auxiliary_of(cls(**params), data_root).items():
            np.save(Path(hd) / f"aux-{role}.npy", _load_auxiliary(a["dataset"], data_root).images)
            extra += ["--aux", f"{role}=/job/aux-{role}.npy"]
        for k, v in params.items():
            extra += ["-p", f"{k}={json.dumps(v)}"]
        prog = [sys.executable, "-s", "-B", "-m", "occbench.harness", "validate", ref,
                "--format", "json", *extra]
        try:
            proc = subprocess.run([bwrap, *sandbox.bwrap_args(lay, hd, "cpu"), *prog],
                                  capture_output=True, text=True, timeout=timeout_s,
                                  env=sandbox._host_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            report.results.append(CheckResult("sealed_check", "-", False, str(exc)))
            return report
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        report.results = [CheckResult(**r) for r in out["results"]]
    except (ValueError, IndexError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        report.results.append(CheckResult("sealed_check", "-", False,
                                          f"exit status {proc.returncode}: {tail[0]}"))
    return report
