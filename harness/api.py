"""The contracts every plugin is written against.

Both ``occbench.datasets`` and ``occbench.methods`` import this module (and nothing else of each
other), so it holds only plain data types and the two abstract base classes.

Conventions used everywhere:

* Images are ``uint8`` arrays of shape ``(N, H, W, C)`` with ``C`` in ``{1, 3}``.
* A video is a ``uint8`` array of shape ``(T, H, W, C)``; it may be a read-only ``np.memmap``.
* Scores: one ``float`` per test item (image, or video frame); **higher = more anomalous**.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np

Modality: TypeAlias = Literal["image", "video"]
MODALITIES: tuple[Modality, ...] = ("image", "video")


# --------------------------------------------------------------------------------------------
# Data handed to methods (never carries test labels)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageData:
    """A set of images, ``images`` of shape ``(N, H, W, C)``, dtype ``uint8``."""

    images: np.ndarray
    modality: ClassVar[Modality] = "image"

    def __post_init__(self) -> None:
        a = self.images
        if a.ndim != 4 or a.shape[-1] not in (1, 3) or a.dtype != np.uint8:
            raise ValueError(
                f"ImageData wants uint8 (N, H, W, C) with C in {{1, 3}}, got {a.dtype} {a.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_items(self) -> int:
        return len(self)


@dataclass(frozen=True)
class Video:
    """One video: ``frames`` of shape ``(T, H, W, C)``, dtype ``uint8``."""

    video_id: str
    frames: np.ndarray

    def __post_init__(self) -> None:
        a = self.frames
        if a.ndim != 4 or a.shape[-1] not in (1, 3) or a.dtype != np.uint8:
            raise ValueError(
                f"video {self.video_id!r}: frames must be uint8 (T, H, W, C) with C in {{1, 3}}, "
                f"got {a.dtype} {a.shape}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class VideoData:
    """An ordered list of videos."""

    videos: tuple[Video, ...]
    modality: ClassVar[Modality] = "video"

    def __post_init__(self) -> None:
        ids = [v.video_id for v in self.videos]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate video ids: {ids}")

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def n_items(self) -> int:
        """Total number of frames."""
        return sum(len(v) for v in self.videos)

    @property
    def video_ids(self) -> list[str]:
        return [v.video_id for v in self.videos]


Data: TypeAlias = ImageData | VideoData

#: What ``Method.score`` returns: ``(N,)`` floats for images; per video id a ``(T,)`` float array.
ScoreOutput: TypeAlias = np.ndarray | Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Labels (held by the driver only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """Ground truth for a test split; 1 = anomalous, 0 = normal.

    For images ``per_video`` has a single key ``""`` with ``(N,)`` labels; for video one
    ``(T,)`` array per video id, in the same order as the test ``VideoData``.
    """

    per_video: Mapping[str, np.ndarray]
    source: str = ""  # which label file / convention produced these (recorded in the protocol)


@dataclass(frozen=True)
class DatasetSplit:
    """What a dataset gives the harness for one job.

    ``train`` holds normal data only; ``test`` has no labels. Labels are obtained separately
    with :meth:`Dataset.test_labels` in the driver process.
    """

    train: Data
    test: Data


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class LabelAccessError(RuntimeError):
    """Test labels were requested while a method was running."""


class _LabelGate:
    """Whether test labels may be read in this process (see :func:`labels_blocked`).

    The state lives in a ``__slots__`` object that is not exported, and the closed state of
    :func:`seal_labels` has no way back: it also replaces every dataset's ``test_labels`` and
    drops the original functions. In-process this prevents accidents and the known bypasses
    (``__wrapped__``, resetting a module-level counter); it is no defence against code that
    re-reads the dataset's source or label files: that is what the sealed process is for.
    """

    __slots__ = ("_depth", "_sealed")

    def __init__(self) -> None:
        self._depth = 0
        self._sealed = False

    def closed(self) -> bool:
        return self._sealed or self._depth > 0


_gate = _LabelGate()
del _LabelGate  # no second gate can be made to stand in for this one


@contextmanager
def labels_blocked() -> Iterator[None]:
    """Within the block, every :meth:`Dataset.test_labels` raises :class:`LabelAccessError`.

    For in-process use (``occbench validate``, debugging runs): the harness's worker processes
    use :func:`seal_labels` instead, which cannot be undone. Labels are never loaded in a worker
    process in the first place; this guard makes an attempt fail loudly instead of silently
    peeking.
    """
    _gate._depth += 1
    try:
        yield
    finally:
        _gate._depth -= 1


def seal_labels() -> None:
    """Refuse test labels in this process for good: the method worker's first step.

    Every :class:`Dataset` subclass, loaded now or later, gets a ``test_labels`` that raises,
    and the original functions are dropped, so there is nothing to unwrap or re-enable.
    """
    _gate._sealed = True
    todo = list(Dataset.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "test_labels" in cls.__dict__:
            cls.test_labels = _refusing(cls)  # type: ignore[method-assign]


def labels_sealed() -> bool:
    """True once :func:`seal_labels` ran in this process."""
    return bool(_gate._sealed)


def _refusing(cls: type) -> Any:
    def test_labels(self: Dataset, normal_class: str | None = None) -> Labels:
        raise LabelAccessError(
            f"test labels of dataset {getattr(cls, 'name', cls.__name__)!r} cannot be read in "
            "a method's process; methods must not read test labels"
        )

    test_labels._occbench_guarded = True  # type: ignore[attr-defined]
    return test_labels


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message names the layout and the source."""


class DatasetFormatError(ValueError):
    """Raised when files exist but are corrupt or inconsistent; the message names the file."""


@dataclass
class CheckReport:
    """Result of :meth:`Dataset.check`: ``ok`` is False when any error was found."""

    dataset: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


class Dataset(ABC):
    """A benchmark dataset.

    Subclasses set ``name``, ``modality`` and ``version``; ``__init__`` takes the data ``root``
    (``None`` for built-in data) and keyword parameters, and only stores them.
    Image datasets are one-vs-rest: :meth:`classes` lists the class names, and a job names its
    normal class. Video datasets have no classes (``normal_class`` is ``None``).
    """

    name: ClassVar[str]
    modality: ClassVar[Modality]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""

    def __init__(self, root: str | Path | None = None, **params: Any) -> None:
        self.root = Path(root) if root is not None else None
        self.params = dict(params)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # wrap every subclass's test_labels so that labels_blocked()/seal_labels() can refuse it
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("test_labels")
        if fn is None or getattr(fn, "_occbench_guarded", False):
            return
        if _gate._sealed:  # a class defined (or re-imported) in a sealed process never reads
            cls.test_labels = _refusing(cls)  # type: ignore[method-assign]
            return

        # not functools.wraps: it would hand out the unguarded function as __wrapped__
        def guarded(self: Dataset, normal_class: str | None = None) -> Labels:
            if _gate.closed():
                raise LabelAccessError(
                    f"test labels of dataset {type(self).name!r} were requested while a method "
                    "was running; methods must not read test labels"
                )
            return fn(self, normal_class)  # type: ignore[no-any-return]

        guarded.__name__ = guarded.__qualname__ = "test_labels"
        guarded.__doc__ = fn.__doc__
        guarded._occbench_guarded = True  # type: ignore[attr-defined]
        cls.test_labels = guarded  # type: ignore[method-assign]

    def classes(self) -> list[str] | None:
        """Class names for one-vs-rest image protocols; ``None`` for video datasets."""
        return None

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash of the source files/parameters; changes when the data changes."""

    @abstractmethod
    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """Training split (normal only) and unlabelled test split.

        Must not read test label files: this runs in the process that runs the method.
        """

    @abstractmethod
    def test_labels(self, normal_class: str | None = None) -> Labels:
        """Per-item test labels (1 = anomalous), aligned with :meth:`load`'s test split."""

    def auxiliary_images(self) -> np.ndarray:
        """Training images of every class, ``(N, H, W, C)`` uint8, never test data: this dataset
        used as an auxiliary image pool by a method (e.g. LNTRA's intruder patches).

        The default stacks :meth:`load`'s training split over :meth:`classes`; datasets that can
        read their training files directly override it. Video datasets have none.
        """
        classes = self.classes()
        if self.modality != "image" or not classes:
            raise ValueError(f"{self.name}: only image datasets can serve as an auxiliary image "
                             "pool")
        parts = []
        for c in classes:
            train = self.load(c).train
            assert isinstance(train, ImageData)
            parts.append(train.images)
        return np.concatenate(parts)

    def check(self) -> CheckReport:
        """Verify layout, counts and labels; the default loads everything once."""
        report = CheckReport(self.name)
        try:
            classes = self.classes()
            nc = classes[0] if classes else None
            split = self.load(nc)
            labels = self.test_labels(nc)
            verify_labels_match(split.test, labels)
            report.facts.update(
                train_items=split.train.n_items, test_items=split.test.n_items,
                anomalous=int(sum(int(np.sum(v)) for v in labels.per_video.values())),
            )
        except (DatasetNotFoundError, DatasetFormatError, ValueError) as exc:
            report.errors.append(str(exc))
        return report

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "version": self.version,
                "params": dict(self.params)}


def verify_labels_match(test: Data, labels: Labels) -> None:
    """Raise :class:`DatasetFormatError` naming the video whose frame/label counts differ."""
    if isinstance(test, ImageData):
        lab = labels.per_video.get("")
        if lab is None or len(lab) != len(test):
            n = None if lab is None else len(lab)
            raise DatasetFormatError(f"{len(test)} test images but {n} labels")
        return
    missing = [v.video_id for v in test.videos if v.video_id not in labels.per_video]
    if missing:
        raise DatasetFormatError(f"no labels for test videos {missing}")
    for v in test.videos:
        n = len(labels.per_video[v.video_id])
        if n != len(v):
            raise DatasetFormatError(
                f"test video {v.video_id!r} has {len(v)} frames but {n} frame labels; "
                "check that the label file matches this copy of the dataset"
            )


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What one job of a method needs from the scheduler (GPUs may be fractional)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int = 2048


@dataclass
class Context:
    """Passed to ``fit`` and ``score``.

    ``device`` is ``"cpu"`` or ``"cuda"``/``"cuda:N"``; ``workdir`` is a private scratch folder
    (checkpoints); ``fast`` asks the method for its smallest, quickest settings (tests, CI).
    ``auxiliary`` maps each role the method asked for in :meth:`Method.auxiliary_datasets` to
    that dataset's training images (all classes, no labels, no test data).
    """

    seed: int = 0
    device: str = "cpu"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("occbench.method"))
    workdir: Path | None = None
    fast: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    auxiliary: dict[str, ImageData] = field(default_factory=dict)
    #: epoch -> raw test scores of the model after that many training epochs (see snapshot())
    snapshots: dict[int, ScoreOutput] = field(default_factory=dict)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def snapshot(self, epoch: int, scores: ScoreOutput) -> None:
        """Report the raw test scores of an intermediate model, taken after ``epoch`` completed
        training epochs (same shapes and direction as :meth:`Method.score`'s return value).

        Called from :meth:`Method.score`, which alone sees the test data: a method that kept
        copies of its weights every few epochs during ``fit`` scores each copy there. The harness
        checks each snapshot like the final scores and stores the per-epoch curve with the run;
        the run's headline metrics stay those of the final model.
        """
        e = int(epoch)
        if e < 0 or e in self.snapshots:
            raise ValueError(f"snapshot epoch {epoch!r} is negative or was reported twice")
        self.snapshots[e] = scores


class Method(ABC):
    """A one-class anomaly detector.

    Contract (like scikit-learn estimators): ``__init__`` only stores its keyword parameters
    (every one with a default, as attributes of the same name); ``fit`` sees normal training data
    only and returns ``self``; ``score`` returns one finite float per test item, higher = more
    anomalous: an ``(N,)`` array for :class:`ImageData`, a ``{video_id: (T,) array}`` mapping for
    :class:`VideoData`. Clip-based video methods that cannot score the first ``before`` and last
    ``after`` frames of each video declare ``temporal_context = (before, after)`` and return NaN
    there; the scoring protocol decides what happens to those frames.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})
    resources: ClassVar[Resources] = Resources()
    temporal_context: ClassVar[tuple[int, int]] = (0, 0)
    description: ClassVar[str] = ""

    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, read back from attributes of the same name."""
        return {n: getattr(self, n) for n in self.param_names()}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            n: sig.parameters[n].default for n in cls.param_names()
            if sig.parameters[n].default is not inspect.Parameter.empty
        }

    def resources_for(self) -> Resources:
        """Resources for this instance (override when they depend on parameters)."""
        return self.resources

    def auxiliary_datasets(self) -> dict[str, str]:
        """Registered image datasets this instance needs besides its training data, by role,
        e.g. ``{"intruder": "cifar100"}`` (override when a parameter names one).

        A method never imports datasets: the harness resolves each name when the spec is
        expanded (so a missing dataset fails before anything runs, and the dataset's fingerprint
        becomes part of the job id), then passes its training images of every class, without
        labels, as ``context.auxiliary[role]``.
        """
        return {}

    @abstractmethod
    def fit(self, train: Data, context: Context) -> Method:
        """Fit on normal-only training data; return ``self``."""

    @abstractmethod
    def score(self, test: Data, context: Context) -> ScoreOutput:
        """Anomaly scores, higher = more anomalous (see class docstring for shapes)."""

    def n_parameters(self) -> int | None:
        """Number of learned parameters after fit (``None`` if not meaningful)."""
        return None

    def stack_key(self) -> Hashable | None:
        """Key under which instances can be trained together as one computation (``None``: never).

        Instances (possibly of different classes, e.g. seeds of one method, or methods that differ
        only in their inputs or loss) whose keys are equal and not ``None`` may be fitted by
        ``type(first).fit_stacked`` on the same training data, each with its own ``Context``
        (seed). Each must end up exactly as if fitted alone (to floating-point tolerance), so the
        harness can store one ordinary run per job.
        """
        return None

    @classmethod
    def fit_stacked(cls, methods: Sequence[Method], train: Data,
                    contexts: Sequence[Context]) -> None:
        """Fit ``methods`` (equal :meth:`stack_key`) together; ``contexts[i]`` is method i's.

        The default fits them one after another. After it, each method is scored on its own.
        """
        for m, c in zip(methods, contexts, strict=True):
            if m.fit(train, c) is not m:
                raise TypeError(f"{type(m).name}.fit() must return self to be fitted stacked")


def frames_of(data: VideoData) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Stack all frames of ``data`` to ``(sum T, H, W, C)``; also return (video_id, length)."""
    if not data.videos:
        raise ValueError("no videos")
    arr = np.concatenate([np.asarray(v.frames) for v in data.videos], axis=0)
    return arr, [(v.video_id, len(v)) for v in data.videos]


def split_frames(values: np.ndarray, index: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`frames_of` for per-frame values."""
    out: dict[str, np.ndarray] = {}
    start = 0
    for vid, n in index:
        out[vid] = np.asarray(values[start:start + n], dtype=np.float64)
        start += n
    return out
