"""``occbench new method|dataset NAME``: a plugin package that works as generated.

The package holds a pyproject with the entry point, the class with its docstring (every
attribute the harness reads, explained), a test that runs the conformance kit, an example spec
and a README. As generated it passes ``pip install -e . && pytest && occbench validate NAME``
(``tests/test_scaffold.py`` checks this in a fresh virtual environment).
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    """A name or target folder that cannot be used; the message names the fix."""


def names(name: str) -> dict[str, str]:
    """``my-method`` → plugin name, distribution, import package and class name."""
    if not NAME_RE.match(name):
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters, digits and single "
                            "hyphens, starting with a letter (e.g. my-method)")
    module = "occbench_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    if keyword.iskeyword(cls) or not cls.isidentifier():  # pragma: no cover - regex prevents
        raise ScaffoldError(f"plugin name {name!r} gives no valid class name")
    return {"name": name, "dist": f"occbench-{name}", "module": module, "cls": cls}


def render(kind: str, name: str) -> dict[str, str]:
    """Relative path → file text of the package for a ``kind`` ("method"/"dataset") plugin."""
    n = names(name)
    if kind == "method":
        files = {
            f"{n['module']}/__init__.py": INIT.format(**n, what="method", mod="method"),
            f"{n['module']}/method.py": METHOD.format(**n),
            "tests/test_plugin.py": METHOD_TEST.format(**n),
            f"specs/{name}.toml": METHOD_SPEC.format(**n),
            "README.md": METHOD_README.format(**n),
        }
        group = "occbench.methods"
        target = f"{n['module']}.method:{n['cls']}"
    elif kind == "dataset":
        files = {
            f"{n['module']}/__init__.py": INIT.format(**n, what="dataset", mod="dataset"),
            f"{n['module']}/dataset.py": DATASET.format(**n),
            "tests/test_plugin.py": DATASET_TEST.format(**n),
            f"specs/{name}.toml": DATASET_SPEC.format(**n),
            "README.md": DATASET_README.format(**n),
        }
        group = "occbench.datasets"
        target = f"{n['module']}.dataset:{n['cls']}"
    else:
        raise ScaffoldError(f"occbench new {kind!r}: choose method or dataset")
    files["pyproject.toml"] = PYPROJECT.format(**n, group=group, target=target, kind=kind)
    files[".gitignore"] = "__pycache__/\n*.egg-info/\nruns/\nboard/\n"
    return files


def write(kind: str, name: str, out: Path) -> list[Path]:
    """Write the package into ``out`` (new or empty folder); returns the files written."""
    files = render(kind, name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ScaffoldError(f"{out} already exists and is not an empty folder; pass --out NEW "
                            "or remove it")
    written = []
    for rel, text in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written


# --------------------------------------------------------------------------------------------
# Templates (str.format: literal braces are doubled)
# --------------------------------------------------------------------------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "The {name} {kind} for occbench (one-class anomaly detection benchmark)."
readme = "README.md"
requires-python = ">=3.10"
# occbench is the harness this plugin runs in; numpy is what the {kind} computes with
dependencies = ["occbench", "numpy"]

[project.optional-dependencies]
test = ["pytest"]

# How occbench finds the plugin: the entry-point name must equal the class's `name`.
[project.entry-points."{group}"]
{name} = "{target}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""The {name} {what} plugin for occbench."""

from {module}.{mod} import {cls}

__all__ = ["{cls}"]
'''

METHOD = '''\
"""``{name}``: an occbench method plugin.

Replace the body of ``fit`` and ``score`` with your detector; keep the contract (checked by
``occbench validate {name}`` and by ``tests/test_plugin.py``):

* ``__init__`` only stores its keyword parameters, each under its own name, each with a default.
* ``fit`` sees normal training data only and returns ``self``; learned state goes in attributes
  ending with ``_``.
* ``score`` returns one finite float per test item, higher = more anomalous: an ``(N,)`` array
  for images, ``{{video_id: (T,) array}}`` for video. An item's score must not depend on the
  other test items, and the same ``context.seed`` must give identical scores on CPU.
* Never read test labels (the harness blocks it while a method runs).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from occbench.harness.api import (
    Context,
    Data,
    ImageData,
    Method,
    Modality,
    Resources,
    ScoreOutput,
    VideoData,
    frames_of,
    split_frames,
)


class {cls}(Method):
    """Per-pixel z-score: mean squared deviation from the normal data's pixel means, in units
    of their standard deviations (higher = more anomalous).

    Images ``(N, H, W, C)`` uint8 and video frames ``(T, H, W, C)`` uint8 are scaled to [0, 1];
    the training images (or all training frames) give a per-pixel mean and standard deviation.
    Score of an item = mean over pixels of ``((x - mean) / (std + eps)) ** power``, unitless.

    Parameters
    ----------
    eps : float
        Added to the standard deviation (pixel units in [0, 1]) so that constant pixels do not
        divide by zero.
    power : float
        Exponent of the absolute z-score (2 = squared).
    """

    #: The plugin's name: what specs, `occbench list methods` and the leaderboard call it.
    #: It must equal the entry-point name in pyproject.toml.
    name: ClassVar[str] = "{name}"
    #: Bump when the scores change (new algorithm, fixed bug): the harness reruns exactly the
    #: jobs of this method, as the version is part of every job's id.
    version: ClassVar[str] = "1"
    #: One line shown by `occbench list methods` and on the site.
    description: ClassVar[str] = "per-pixel z-score against the normal training data"
    #: "image", "video" or both; a spec's datasets of other modalities are skipped for it.
    modalities: ClassVar[frozenset[Modality]] = frozenset({{"image", "video"}})
    #: What one job needs, for the scheduler (Ray): CPU cores, GPUs (fractional allowed, e.g.
    #: 0.25) and memory in MiB. A Ray task runs with the CPUs it asks for as BLAS/torch
    #: threads; the serial runner gives each job every core.
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, memory_mb=1024)
    #: Frames (before, after) a clip-based video method cannot score: it may return NaN there
    #: and the scoring protocol decides what happens to them. (0, 0): every frame is scored.
    temporal_context: ClassVar[tuple[int, int]] = (0, 0)

    def __init__(self, eps: float = 0.05, power: float = 2.0) -> None:
        self.eps = eps
        self.power = power

    def fit(self, train: Data, context: Context) -> {cls}:
        """Per-pixel mean and std of the normal training items. ``context`` holds the seed
        (``context.rng()``), the device ("cpu"/"cuda"), ``fast`` (smallest settings: tests and
        `occbench validate`), a private ``workdir`` and a ``logger`` stored with the run."""
        x = self._pixels(train)
        self.mean_ = x.mean(axis=0)
        self.std_ = x.std(axis=0)
        context.logger.info("fit on %d items of %d pixels", len(x), x.shape[1])
        return self

    def score(self, test: Data, context: Context) -> ScoreOutput:
        """``(N,)`` float64 for images, ``{{video_id: (T,)}}`` for video; higher = anomalous."""
        z = np.abs(self._pixels(test) - self.mean_) / (self.std_ + self.eps)
        s = (z ** self.power).mean(axis=1)
        if isinstance(test, VideoData):
            return split_frames(s, frames_of(test)[1])
        return s

    def n_parameters(self) -> int | None:
        """Learned numbers after fit (shown on the leaderboard); None if not meaningful."""
        return int(self.mean_.size + self.std_.size) if hasattr(self, "mean_") else None

    @staticmethod
    def _pixels(data: Data) -> np.ndarray:
        """Items as float64 rows ``(N, H*W*C)`` in [0, 1]."""
        x = data.images if isinstance(data, ImageData) else frames_of(data)[0]
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1) / 255.0
'''

METHOD_TEST = '''\
"""The method passes occbench's conformance kit (what `occbench validate {name}` runs)."""

from occbench.harness import registry
from occbench.harness.conformance import check_method
from {module} import {cls}


def test_registered_through_its_entry_point() -> None:
    entry = registry.methods.entry("{name}")
    assert entry.obj is {cls} and entry.source == "{dist}"


def test_conformance_kit_passes() -> None:
    report = check_method("{name}", fast=True)
    assert report.ok, report.format()
    # the probe data's anomalies score higher than its normal items (a warning-only check)
    assert all(r.passed for r in report.results if r.check == "separates"), report.format()
'''

METHOD_SPEC = '''\
# An example benchmark of {name}: the built-in datasets (no download), 3 seeds, beside a baseline.
#   occbench run specs/{name}.toml --store runs/{name}
#   occbench board --store runs/{name} --out board/
name = "{name}-example"
seeds = [0, 1, 2]

[[methods]]
name = "{name}"
params = {{ power = 2.0 }}

[[methods]]
name = "ocsvm"

[[datasets]]
name = "digits"
classes = "all"

[[datasets]]
name = "toy-video"
params = {{ seed = 0 }}
'''

METHOD_README = '''\
# {dist}

The `{name}` method for occbench (one-class anomaly detection): a per-pixel z-score against
the normal training data. Generated by `occbench new method {name}`.

```bash
pip install -e .                 # registers the entry point occbench.methods:{name}
pytest                           # the conformance kit (tests/test_plugin.py)
occbench validate {name}         # the same checks from the command line
occbench run specs/{name}.toml --store runs/{name}     # a small benchmark beside ocsvm
occbench board --store runs/{name} --out board/
```

Edit `{module}/method.py`: the docstring there explains every attribute the harness reads
(`name`, `version`, `description`, `modalities`, `resources`, `temporal_context`,
`n_parameters`). Bump `version` whenever the scores change.
'''

DATASET = '''\
"""``{name}``: an occbench dataset plugin.

As generated it makes a small synthetic image set in memory (no files), so that the package
works at once. To serve real data, read it from ``self.root`` (the data root the user passes
with ``--data-root`` or ``$OCCBENCH_DATA_ROOT``; ``None`` when none was given) in ``_arrays``,
raise ``DatasetNotFoundError`` naming the expected layout when files are missing, and let
``fingerprint`` hash the files (their sizes and modification times, or contents).

Contract (checked by ``occbench validate {name}`` and ``tests/test_plugin.py``):

* ``__init__(root, **params)`` only stores; every parameter has a default.
* ``load(normal_class)`` returns the normal class's training items and the unlabelled test set;
  it runs in the process that runs a method and must never read test labels.
* ``test_labels(normal_class)`` returns 1 = anomalous per test item, aligned with ``load``'s
  test set; only the harness's driver calls it.
* ``fingerprint()`` changes whenever the data changes (it is part of every job's id).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
from occbench.harness.api import Dataset, DatasetSplit, ImageData, Labels, Modality


class {cls}(Dataset):
    """Oriented bars, one class per orientation, one-vs-rest (synthetic; replace with yours).

    Images are ``(N, 16, 16, 1)`` uint8. Classes are ``"0"``..``"3"`` (bar at 0, 45, 90 and
    135 degrees); a job's normal class trains on that class's training images only and is
    tested on every test image (label 1 = another class).

    Parameters
    ----------
    n_train : int
        Training images per class.
    n_test : int
        Test images per class.
    seed : int
        Seed of the generator (the data, not the method's seed).
    """

    #: The plugin's name in specs and tables; equals the entry-point name in pyproject.toml.
    name: ClassVar[str] = "{name}"
    #: "image" (one-vs-rest classes) or "video" (no classes; per-frame labels).
    modality: ClassVar[Modality] = "image"
    #: Bump when the loader's output changes for the same files (reruns its jobs).
    version: ClassVar[str] = "1"
    #: One line shown by `occbench list datasets` and on the site.
    description: ClassVar[str] = "synthetic oriented bars, one-vs-rest (template)"

    def __init__(self, root: str | Path | None = None, n_train: int = 40, n_test: int = 10,
                 seed: int = 0) -> None:
        super().__init__(root, n_train=n_train, n_test=n_test, seed=seed)
        self.n_train = n_train
        self.n_test = n_test
        self.seed = seed

    def classes(self) -> list[str]:
        return ["0", "1", "2", "3"]

    def fingerprint(self) -> str:
        """Hash of what determines the data: here the parameters (files: hash them too)."""
        blob = json.dumps({{"name": self.name, "version": self.version, **self.params}},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        k = self._class_index(normal_class)
        x_tr, y_tr, x_te, _ = self._arrays()
        return DatasetSplit(train=ImageData(x_tr[y_tr == k]), test=ImageData(x_te))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        k = self._class_index(normal_class)
        _, _, _, y_te = self._arrays()
        return Labels({{"": (y_te != k).astype(np.int8)}}, source=f"{{self.name}}:generated")

    def _class_index(self, normal_class: str | None) -> int:
        if normal_class not in self.classes():
            raise ValueError(f"{{self.name}}: normal class must be one of {{self.classes()}}, "
                             f"got {{normal_class!r}}")
        return int(normal_class)  # type: ignore[arg-type]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train images, train classes, test images, test classes), generated from the seed."""
        rng = np.random.default_rng(self.seed)
        parts = []
        for n in (self.n_train, self.n_test):
            y = np.repeat(np.arange(4), n)
            x = np.stack([_bar(int(c), rng) for c in y])
            parts += [x, y]
        return parts[0], parts[1], parts[2], parts[3]


def _bar(k: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy 16x16 image of a bar at ``45 * k`` degrees through a jittered centre."""
    img = rng.integers(0, 40, size=(size, size)).astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-2, 2, 2)
    dy, dx = np.sin(np.pi * k / 4), np.cos(np.pi * k / 4)
    for t in np.linspace(-6, 6, 25):
        y, x = int(round(cy + t * dy)), int(round(cx + t * dx))
        if 0 <= y < size and 0 <= x < size:
            img[y, x] = 230
    return img.astype(np.uint8)[..., None]
'''

DATASET_TEST = '''\
"""The dataset passes occbench's dataset checks (what `occbench validate {name}` runs)."""

from occbench.harness import registry
from occbench.harness.conformance import check_dataset_plugin
from {module} import {cls}


def test_registered_through_its_entry_point() -> None:
    entry = registry.datasets.entry("{name}")
    assert entry.obj is {cls} and entry.source == "{dist}"


def test_dataset_checks_pass() -> None:
    report = check_dataset_plugin("{name}")
    assert report.ok, report.format()


def test_train_split_holds_only_the_normal_class() -> None:
    ds = {cls}()
    split = ds.load("2")
    labels = ds.test_labels("2").per_video[""]
    assert split.train.n_items == ds.n_train
    assert len(labels) == split.test.n_items and labels.sum() == 3 * ds.n_test
'''

DATASET_SPEC = '''\
# An example benchmark on {name}: two built-in baselines, every class, 3 seeds.
#   occbench run specs/{name}.toml --store runs/{name}
#   occbench board --store runs/{name} --out board/
name = "{name}-example"
seeds = [0, 1, 2]

[[methods]]
name = "ocsvm"

[[methods]]
name = "iforest"

[[datasets]]
name = "{name}"
classes = "all"
params = {{ n_train = 40, n_test = 10 }}
'''

DATASET_README = '''\
# {dist}

The `{name}` dataset for occbench (one-class anomaly detection), one-vs-rest. As generated it
is a synthetic set of oriented bars; replace `_arrays` in `{module}/dataset.py` with a loader
of your files under the data root. Generated by `occbench new dataset {name}`.

```bash
pip install -e .                 # registers the entry point occbench.datasets:{name}
pytest                           # the dataset checks (tests/test_plugin.py)
occbench validate {name}         # the same checks from the command line
occbench data check {name}       # layout, counts, labels
occbench run specs/{name}.toml --store runs/{name}
```

The docstring of `{module}/dataset.py` explains every attribute (`name`, `modality`, `version`,
`description`) and method (`classes`, `fingerprint`, `load`, `test_labels`).
'''
