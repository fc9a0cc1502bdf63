"""Video anomaly-detection datasets with frame-level labels: ``ped2``, ``avenue``, ``shanghaitech``.

Each dataset finds its folder under the data root by documented names (see ``docs/datasets.md``)
and accepts both the official release layout and the "frames" layout of the public code
releases (MNAD / LNTRA). Frames are decoded once per ``(size, channels)`` into the frame cache
(:mod:`occbench.datasets.cache`) and handed to methods as read-only memmaps.

Common parameters (all optional):

* ``size``: ``[H, W]`` output size, default ``[256, 256]``; ``null`` keeps the native size.
* ``channels``: ``3`` (RGB, default) or ``1`` (grey).
* ``train_videos`` / ``test_videos``: lists of video ids to use (default: all present).
* ``cache``: ``True`` (default) to use the frame cache, ``False`` to decode into memory.
* ``cache_dir``: cache location (default ``$OCCBENCH_CACHE`` or ``~/.cache/occbench``).
* ``labels``: which ground truth to use (per dataset, recorded in :attr:`Labels.source`).

Video ids are the official numbers: Ped2 ``"01"``..``"12"`` (test), Avenue ``"01"``..``"21"``,
ShanghaiTech ``"01_0014"`` etc., whatever the layout on disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from occbench.datasets import formats as fmt
from occbench.datasets.cache import FrameCache, cache_root, label_cache_root
from occbench.datasets.digest import DigestCache, content_fingerprint, relative_names
from occbench.harness.api import (
    CheckReport,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetSplit,
    Labels,
    Video,
    VideoData,
)

DATA_ROOT_ENV = "OCCBENCH_DATA_ROOT"
log = logging.getLogger(__name__)

# Official per-video test frame counts (public facts of the releases), used to cut the
# concatenated label files when not every test video is present on disk.
PED2_TEST_LENGTHS: tuple[int, ...] = (180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180)
AVENUE_TEST_LENGTHS: tuple[int, ...] = (
    1439, 1211, 923, 947, 1007, 1283, 605, 36, 1175, 841, 472, 1271, 549, 507, 1001, 740, 426,
    294, 248, 273, 76,
)
_SHT = (
    "01_0014:265 01_0015:433 01_0016:337 01_0025:601 01_0026:505 01_0027:409 01_0028:457 "
    "01_0029:313 01_0030:409 01_0051:337 01_0052:337 01_0053:457 01_0054:577 01_0055:313 "
    "01_0056:529 01_0063:193 01_0064:289 01_0073:289 01_0076:265 01_0129:241 01_0130:337 "
    "01_0131:289 01_0132:265 01_0133:217 01_0134:433 01_0135:409 01_0136:529 01_0138:313 "
    "01_0139:217 01_0140:241 01_0141:313 01_0162:193 01_0163:265 01_0177:317 02_0128:457 "
    "02_0161:337 02_0164:361 03_0031:529 03_0032:409 03_0033:313 03_0035:385 03_0036:457 "
    "03_0039:481 03_0041:457 03_0059:433 03_0060:385 03_0061:241 04_0001:553 04_0003:937 "
    "04_0004:865 04_0010:505 04_0011:313 04_0012:361 04_0013:361 04_0046:529 04_0050:337 "
    "05_0017:433 05_0018:481 05_0019:649 05_0020:649 05_0021:409 05_0022:337 05_0023:769 "
    "05_0024:433 06_0144:241 06_0145:217 06_0147:265 06_0150:265 06_0153:217 06_0155:265 "
    "07_0005:409 07_0006:385 07_0007:481 07_0008:457 07_0009:313 07_0047:601 07_0048:241 "
    "07_0049:481 08_0044:313 08_0058:337 08_0077:457 08_0078:217 08_0079:241 08_0080:289 "
    "08_0156:337 08_0157:313 08_0158:337 08_0159:265 08_0178:265 08_0179:337 09_0057:361 "
    "10_0037:433 10_0038:241 10_0042:433 10_0074:601 10_0075:505 11_0176:337 12_0142:601 "
    "12_0143:265 12_0148:313 12_0149:241 12_0151:289 12_0152:361 12_0154:385 12_0173:217 "
    "12_0174:337 12_0175:265"
)
#: ShanghaiTech test videos and frame counts in official (sorted) order: 107 videos, 40,791 frames.
SHANGHAITECH_TEST_LENGTHS: tuple[tuple[str, int], ...] = tuple(
    (k, int(v)) for k, v in (item.split(":") for item in _SHT.split())
)


# --------------------------------------------------------------------------------------------
# video sources
# --------------------------------------------------------------------------------------------


@dataclass
class VideoSource:
    """One video on disk: a folder of frame images or an AVI file."""

    video_id: str
    kind: Literal["frames", "avi"]
    path: Path
    files: list[Path] = field(default_factory=list)  # frame files, for kind == "frames"

    def n_frames(self) -> int:
        """Number of frames (file count, or the AVI header count: no decoding)."""
        return len(self.files) if self.kind == "frames" else fmt.avi_frame_count(self.path)

    def stat_paths(self) -> list[Path]:
        return self.files if self.kind == "frames" else [self.path]

    def missing_frames(self) -> list[str]:
        """Frame file names absent from a numbered sequence (``000.jpg`` ... ``179.jpg`` with
        ``051.jpg`` gone → ``["051.jpg"]``); empty for AVIs and non-numeric names."""
        if self.kind != "frames" or not self.files:
            return []
        stems = [f.stem for f in self.files]
        if not all(st.isdigit() for st in stems):
            return []
        nums = sorted({int(st) for st in stems})
        if nums[-1] - nums[0] + 1 == len(nums):
            return []
        width, ext, have = len(stems[0]), self.files[0].suffix, set(nums)
        return [f"{n:0{width}d}{ext}" for n in range(nums[0], nums[-1] + 1) if n not in have]

    def fingerprint(self, mtime: bool = True) -> str:
        """Cache key (with mtimes) or, with ``mtime=False``, the portable part of a job id."""
        return fmt.stat_fingerprint(self.stat_paths(), (self.video_id, self.kind), mtime=mtime)

    def decode(self, size: tuple[int, int] | None, channels: int) -> Iterator[np.ndarray]:
        """Frames ``(H, W, C)`` uint8 one at a time."""
        if self.kind == "avi":
            yield from fmt.iter_avi(self.path, size, channels)
        else:
            for f in self.files:
                yield fmt.read_image(f, size, channels)


def frame_folders(parent: Path, id_fn: Any = None) -> list[VideoSource]:
    """Subfolders of ``parent`` holding image files, as frame-sequence sources (sorted)."""
    if not parent.is_dir():
        return []
    out = []
    for d in sorted(parent.iterdir(), key=lambda p: fmt.natural_key(p.name)):
        if not d.is_dir() or d.name.endswith("_gt"):  # UCSD keeps pixel masks in TestNNN_gt/
            continue
        files = fmt.list_images(d)
        if files:
            vid = id_fn(d.name) if id_fn else d.name
            out.append(VideoSource(vid, "frames", d, files))
    return out


def avi_files(parent: Path, id_fn: Any = None) -> list[VideoSource]:
    """``*.avi`` files of ``parent`` as sources (sorted naturally)."""
    if not parent.is_dir():
        return []
    files = sorted(
        (p for p in parent.iterdir() if p.suffix.lower() == ".avi"),
        key=lambda p: fmt.natural_key(p.name),
    )
    return [VideoSource(id_fn(p.stem) if id_fn else p.stem, "avi", p) for p in files]


def _two_digit(name: str) -> str:
    """``Test001`` / ``1`` / ``01`` → ``01`` (official numbering of Ped2 and Avenue)."""
    m = re.search(r"(\d+)$", name)
    return f"{int(m.group(1)):02d}" if m else name


def _parse_size(size: Any) -> tuple[int, int] | None:
    if size is None or size == "native" or size == "null":
        return None
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, str):
        size = json.loads(size) if size.startswith("[") else [int(x) for x in size.split("x")]
    if isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"size must be [H, W], an int or null, got {size!r}")


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """What a dataset found on disk."""

    folder: Path
    kind: str  # e.g. "ucsd", "frames", "official"
    train: list[VideoSource]
    test: list[VideoSource]


class VideoDataset(Dataset):
    """Shared machinery of the video datasets (see the module docstring for parameters)."""

    modality = "video"
    #: folder names tried under the data root, in order
    folder_names: ClassVar[tuple[str, ...]] = ()
    #: explanation of the accepted layouts and the download source, used in error messages
    help_text: ClassVar[str] = ""
    #: official test video ids in order (to report missing ones); empty if unknown
    official_test_ids: ClassVar[tuple[str, ...]] = ()
    #: whether the official test ids are one numbering 01..NN, so that a gap in the present
    #: ones means a deleted video even without reading labels (Ped2, Avenue; not ShanghaiTech,
    #: whose ids are sparse)
    numbered_test_ids: ClassVar[bool] = False
    label_choices: ClassVar[tuple[str, ...]] = ("auto",)
    known_params: ClassVar[frozenset[str]] = frozenset(
        {"size", "channels", "train_videos", "test_videos", "cache", "cache_dir", "labels"}
    )

    def __init__(self, root: str | Path | None = None, **params: Any) -> None:
        super().__init__(root, **params)
        self._layout: Layout | None = None

    # -- parameters ----------------------------------------------------------------------------
    def _size(self) -> tuple[int, int] | None:
        return _parse_size(self.params.get("size", [256, 256]))

    def _channels(self) -> int:
        c = int(self.params.get("channels", 3))
        if c not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {c}")
        return c

    def _labels_choice(self) -> str:
        choice = str(self.params.get("labels", self.label_choices[0]))
        if choice not in self.label_choices:
            raise ValueError(
                f"{self.name}: labels={choice!r} is not one of {list(self.label_choices)}"
            )
        return choice

    def _validate_params(self) -> None:
        unknown = set(self.params) - self.known_params
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.known_params)}"
            )
        self._size()
        self._channels()
        self._labels_choice()

    # -- locating ------------------------------------------------------------------------------
    def _root(self) -> Path:
        if self.root is not None:
            return self.root
        env = fmt.env_data_root()
        if env is None:
            raise DatasetNotFoundError(
                f"{self.name}: no data root given (use --data-root, ${DATA_ROOT_ENV} or "
                f"data_root in ~/.config/occbench/config.toml).\n{self.help_text}"
            )
        return env

    def _candidates(self) -> list[Path]:
        root = self._root()
        return [root, *(root / n for n in self.folder_names)]

    def _not_found(self, what: str) -> DatasetNotFoundError:
        tried = ", ".join(str(c) for c in self._candidates())
        return DatasetNotFoundError(f"{self.name}: {what} (looked in: {tried}).\n{self.help_text}")

    def _find_layout(self) -> Layout:  # pragma: no cover - abstract in spirit
        raise NotImplementedError

    def layout(self) -> Layout:
        """The layout found on disk (cached on the instance)."""
        if self._layout is None:
            self._validate_params()
            self._layout = self._find_layout()
        return self._layout

    @staticmethod
    def _select(
        sources: list[VideoSource], wanted: Any, what: str, name: str
    ) -> list[VideoSource]:
        if wanted is None:
            return sources
        if isinstance(wanted, str):
            wanted = [w for w in re.split(r"[,\s]+", wanted) if w]
        by_id = {s.video_id: s for s in sources}
        out = []
        for w in wanted:
            w = str(w)
            s = by_id.get(w)
            if s is None and w.isdigit():  # "8" matches "08"
                s = next((x for x in sources if x.video_id.isdigit() and int(x.video_id) == int(w)),
                         None)
            if s is None:
                raise DatasetNotFoundError(
                    f"{name}: {what} video {w!r} is not present; present: "
                    f"{[x.video_id for x in sources]}"
                )
            out.append(s)
        return out

    def train_sources(self) -> list[VideoSource]:
        lay = self.layout()
        return self._select(lay.train, self.params.get("train_videos"), "training", self.name)

    def test_sources(self) -> list[VideoSource]:
        lay = self.layout()
        return self._select(lay.test, self.params.get("test_videos"), "test", self.name)

    # -- contract ------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the bytes of every file a job reads (32 hex chars; see :mod:`..digest`).

        Covers the selected training and test videos' files (frames or AVIs) and the label
        files of the chosen ``labels`` option, by their path relative to the dataset folder,
        plus the layout kind, the video ids and the parameters (cache options left out: where
        frames are cached does not change the data). Any changed byte gives a new fingerprint;
        the same bytes in another folder or on another machine give the same one.
        """
        lay = self.layout()
        train, test = self.train_sources(), self.test_sources()
        params = {k: v for k, v in self.params.items() if k not in ("cache", "cache_dir")}
        files = [f for s in [*train, *test] for f in s.stat_paths()] + self._label_files()
        extra = {"dataset": self.name, "version": self.version, "layout": lay.kind,
                 "params": params, "train": [s.video_id for s in train],
                 "test": [s.video_id for s in test]}
        return content_fingerprint(relative_names(files, lay.folder), extra,
                                   DigestCache(self.params.get("cache_dir")))

    def _label_files(self) -> list[Path]:
        """Label files that the chosen ``labels`` option reads (for fingerprints and checks)."""
        return []

    def _cache(self) -> FrameCache | None:
        if not self.params.get("cache", True):
            return None
        return FrameCache(self.params.get("cache_dir") or cache_root())

    def _frames(self, src: VideoSource, cache: FrameCache | None) -> np.ndarray:
        size, channels = self._size(), self._channels()
        if cache is not None:
            try:
                return self._cached(src, cache, size, channels)
            except PermissionError as exc:  # e.g. a read-only shared cache: decode in memory
                log.warning("frame cache unusable (%s); decoding %s in memory", exc, src.path)
        frames = list(src.decode(size, channels))
        if not frames:
            raise DatasetFormatError(f"{src.path}: no frames could be decoded; replace the file")
        return np.stack(frames)

    def _cached(
        self, src: VideoSource, cache: FrameCache, size: tuple[int, int] | None, channels: int
    ) -> np.ndarray:
        return cache.get(
            dataset=self.name, source_dir=src.path.parent, video_id=src.video_id,
            fingerprint=src.fingerprint(), size=size, channels=channels,
            decode=lambda: src.decode(size, channels),
            n_frames_hint=len(src.files) if src.kind == "frames" else src.n_frames(),
        )

    def load_videos(self, sources: Sequence[VideoSource]) -> VideoData:
        """Decode (or fetch from the cache) the given sources as :class:`VideoData`."""
        cache = self._cache()
        return VideoData(tuple(Video(s.video_id, self._frames(s, cache)) for s in sources))

    # -- strictness ----------------------------------------------------------------------------
    def _subset_hint(self) -> str:
        present = [s.video_id for s in self.layout().test]
        return (f"restore them from the original archive, or run on the present videos only "
                f"with the parameter test_videos={json.dumps(present)} (a run on a subset is a "
                "separate entry and never replaces one on the whole set)")

    def _official_gaps(self) -> list[str]:
        """Official test ids absent although a later one is present (label-free, for
        :meth:`load`); empty when ``test_videos`` names the videos explicitly."""
        if (self.params.get("test_videos") is not None or not self.official_test_ids
                or not self.numbered_test_ids):
            return []
        present = {s.video_id for s in self.layout().test}
        idx = [i for i, v in enumerate(self.official_test_ids) if v in present]
        if not idx:
            return []
        return [v for v in self.official_test_ids[: max(idx)] if v not in present]

    def _source_problems(self, sources: Sequence[VideoSource]) -> list[str]:
        """Frames missing inside numbered sequences, one message per video."""
        out = []
        for s in sources:
            gone = s.missing_frames()
            if gone:
                more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
                out.append(f"{self.name}: video {s.video_id!r} in {s.path}: frame file(s) "
                           f"{', '.join(gone[:5])}{more} missing from its numbered sequence; "
                           "restore them from the original archive")
        return out

    def _label_video_ids(self) -> list[str]:
        """Test video ids that the chosen label source covers (reads label files: never call
        it from :meth:`load`). Subclasses override it where that is cheaper than all labels."""
        return list(self._all_labels(restrict=False)[0])

    def _missing_vs_labels(self) -> list[str]:
        """Test videos the labels cover but the disk lacks (``test_videos`` not given)."""
        if self.params.get("test_videos") is not None:
            return []
        present = {s.video_id for s in self.layout().test}
        return [v for v in self._label_video_ids() if v not in present]

    def _missing_message(self, missing: Sequence[str], source: str) -> str:
        return (f"{self.name}: test video(s) {list(missing)} have labels in {source} but are not "
                f"on disk under {self.layout().folder}; {self._subset_hint()}")

    # -- contract ------------------------------------------------------------------------------
    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """Training videos (all normal) and unlabelled test videos; reads no label file.

        Strict: a gap in the official test numbering (e.g. Ped2 ``02`` gone while ``03`` is
        there), a frame missing inside a numbered sequence, a truncated JPEG or AVI raise an
        error naming the video or file (without ``test_videos`` a run must see the whole set).
        """
        if normal_class is not None:
            raise ValueError(f"{self.name} is a video dataset: normal_class must be None")
        train = self.train_sources()
        if not train:
            raise self._not_found("no training videos found")
        test = self.test_sources()
        if not test:
            raise self._not_found("no test videos found")
        gaps = self._official_gaps()
        if gaps:
            raise DatasetNotFoundError(
                f"{self.name}: test video(s) {gaps} are missing under {self.layout().folder} "
                f"while later ones are present; {self._subset_hint()}"
            )
        problems = self._source_problems([*train, *test])
        if problems:
            raise DatasetFormatError("\n".join(problems))
        return DatasetSplit(train=self.load_videos(train), test=self.load_videos(test))

    def _all_labels(self, restrict: bool = True) -> tuple[dict[str, np.ndarray], str]:
        """Frame labels per test video and the source name.

        With ``restrict`` a dataset may skip videos that are not selected (to save time);
        without it every video the label source covers is returned.
        """  # pragma: no cover
        raise NotImplementedError

    def test_labels(self, normal_class: str | None = None) -> Labels:
        """``(T,)`` 0/1 labels (1 = anomalous) per selected test video, aligned with ``load``.

        Strict: a test video the label source covers but the disk lacks is an error (unless
        ``test_videos`` selects a subset explicitly), so a run on a subset never passes for one
        on the whole set.
        """
        table, source = self._all_labels()
        if self.layout().test:
            absent = self._missing_vs_labels()
            if absent:
                raise DatasetFormatError(self._missing_message(absent, source))
        ids = [s.video_id for s in self.test_sources()] if self.layout().test else list(table)
        missing = [v for v in ids if v not in table]
        if missing:
            raise DatasetFormatError(
                f"{self.name}: label source {source} has no labels for test videos {missing}"
            )
        return Labels(per_video={v: table[v] for v in ids}, source=source)

    def check(self) -> CheckReport:
        """Layout, video counts, label length vs frame count per test video, test videos and
        frames missing relative to the labels, truncated JPEG frames (their first and last
        bytes are read; nothing is decoded)."""
        rep = CheckReport(self.name)
        try:
            lay = self.layout()
        except (DatasetNotFoundError, DatasetFormatError, ValueError) as exc:
            rep.errors.append(str(exc))
            return rep
        rep.facts.update(folder=str(lay.folder), layout=lay.kind,
                         train_videos=len(lay.train), test_videos=len(lay.test))
        if not lay.train:
            rep.errors.append(f"no training videos under {lay.folder}")
        if not lay.test:
            rep.errors.append(f"no test videos under {lay.folder}")
        try:
            train_sel, test_sel = self.train_sources(), self.test_sources()
            rep.errors += self._source_problems([*train_sel, *test_sel])
            rep.errors += self._jpeg_problems([*train_sel, *test_sel])
            counts = {s.video_id: s.n_frames() for s in test_sel}
            rep.facts["train_frames"] = sum(s.n_frames() for s in train_sel)
            rep.facts["test_frames"] = sum(counts.values())
            absent = self._missing_vs_labels() if lay.test else []
            if absent:
                rep.errors.append(self._missing_message(absent, self._all_labels()[1]))
            if self.official_test_ids and lay.test:
                present = {s.video_id for s in lay.test}
                off = [v for v in self.official_test_ids if v not in present]
                if off and not absent:
                    rep.warnings.append(
                        f"only {len(present)} of {len(self.official_test_ids)} official test "
                        f"videos present (missing {off}); results are on a subset and not "
                        "comparable"
                    )
            if absent:
                return rep
            labels = self.test_labels()
            rep.facts["label_source"] = labels.source
            rep.facts["anomalous_frames"] = int(
                sum(int(v.sum()) for v in labels.per_video.values()))
            for vid, n in counts.items():
                lab = labels.per_video.get(vid)
                if lab is not None and len(lab) != n:
                    rep.errors.append(
                        f"test video {vid!r} has {n} frames but {len(lab)} frame labels in "
                        f"{labels.source}; the label file does not match this copy of the video"
                    )
        except (DatasetNotFoundError, DatasetFormatError, ValueError) as exc:
            rep.errors.append(str(exc))
        return rep

    def _jpeg_problems(self, sources: Sequence[VideoSource], limit: int = 5) -> list[str]:
        bad = []
        for s in sources:
            for f in s.files:
                if f.suffix.lower() in fmt.JPEG_EXTS:
                    why = fmt.jpeg_file_problem(f)
                    if why is not None:
                        bad.append(f"{f} {why}; replace it with an intact copy from the "
                                   "original archive")
        if len(bad) > limit:
            bad = [*bad[:limit], f"... and {len(bad) - limit} more truncated JPEG frames"]
        return bad

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["params"] = {k: v for k, v in d["params"].items() if k not in ("cache", "cache_dir")}
        return d


def _find_file(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    return fmt.first_existing([f / n for f in folders for n in names])


def _lengths_for(
    sources: Sequence[VideoSource], official: Sequence[tuple[str, int]], n_labels: int,
    label_file: Path,
) -> list[tuple[str, int]]:
    """(video id, length) pairs to cut a concatenated label file.

    The official table is used when it sums to the label count (works with a partial copy of
    the videos); otherwise all test videos must be on disk and their frame counts are used.
    """
    if official and sum(n for _, n in official) == n_labels:
        return list(official)
    lengths = [(s.video_id, s.n_frames()) for s in sources]
    if sum(n for _, n in lengths) != n_labels:
        raise DatasetFormatError(
            f"{label_file}: {n_labels} concatenated frame labels but the test videos on disk have "
            f"{sum(n for _, n in lengths)} frames ("
            + ", ".join(f"{v}={n}" for v, n in lengths)
            + "); a video is missing frames or the label file belongs to another copy"
        )
    return lengths


# --------------------------------------------------------------------------------------------
# UCSD Ped2
# --------------------------------------------------------------------------------------------


class Ped2(VideoDataset):
    """UCSD Ped2: 16 training and 12 test videos of a pedestrian walkway, 360x240 grey frames.

    ``labels``: ``auto`` (first of ``UCSDped2.m``, ``ped2.mat``, ``frame_labels_ped2.npy``),
    ``ucsd-m``, ``mat`` or ``npy``. All known sources agree (1,648 of 2,010 frames anomalous).
    """

    name = "ped2"
    version = "1"
    description = "UCSD Ped2 (frame-level labels; 16 train / 12 test videos)"
    folder_names = ("ped2", "UCSDped2", "UCSD_Anomaly_Dataset.v1p2/UCSDped2", "ped2/UCSDped2")
    official_test_ids = tuple(f"{i:02d}" for i in range(1, 13))
    numbered_test_ids = True
    label_choices = ("auto", "ucsd-m", "mat", "npy")
    help_text = (
        "Ped2 layouts accepted under <data root>/ped2 (or UCSDped2, "
        "UCSD_Anomaly_Dataset.v1p2/UCSDped2):\n"
        "  original UCSD: Train/Train001/001.tif ..., Test/Test001/001.tif ..., "
        "Test/UCSDped2.m\n"
        "  frames:        training/frames/01/000.jpg ..., testing/frames/01/000.jpg ..., and "
        "one of UCSDped2.m, ped2.mat, frame_labels_ped2.npy\n"
        "Get it from http://www.svcl.ucsd.edu/projects/anomaly/dataset.htm "
        "(UCSD_Anomaly_Dataset.tar.gz)."
    )

    def _find_layout(self) -> Layout:
        for d in self._candidates():
            if (d / "Train").is_dir() or (d / "Test").is_dir():
                return Layout(d, "ucsd", frame_folders(d / "Train", _two_digit),
                              frame_folders(d / "Test", _two_digit))
            if (d / "training").is_dir() or (d / "testing").is_dir():
                return Layout(d, "frames", frame_folders(d / "training" / "frames", _two_digit),
                              frame_folders(d / "testing" / "frames", _two_digit))
        raise self._not_found("no Ped2 folder found")

    def _label_dirs(self) -> list[Path]:
        d = self.layout().folder
        return [d, d / "Test", d / "testing"]

    def _label_file(self) -> tuple[str, Path]:
        names = {"ucsd-m": ["UCSDped2.m"], "mat": ["ped2.mat"], "npy": ["frame_labels_ped2.npy"]}
        choice = self._labels_choice()
        order = ["ucsd-m", "mat", "npy"] if choice == "auto" else [choice]
        for kind in order:
            p = _find_file(self._label_dirs(), names[kind])
            if p is not None:
                return kind, p
        wanted = ", ".join(n for k in order for n in names[k])
        raise DatasetNotFoundError(
            f"ped2: no label file ({wanted}) in {[str(x) for x in self._label_dirs()]}.\n"
            f"{self.help_text}"
        )

    def _label_files(self) -> list[Path]:
        try:
            return [self._label_file()[1]]
        except DatasetNotFoundError:
            return []

    def _label_video_ids(self) -> list[str]:
        kind, path = self._label_file()
        if kind == "npy":  # cut by the official lengths or the frames on disk
            return super()._label_video_ids()
        ranges = fmt.parse_ucsd_m(path) if kind == "ucsd-m" else fmt.read_ped2_mat(path)
        return [f"{i + 1:02d}" for i in range(len(ranges))]

    def _all_labels(self, restrict: bool = True) -> tuple[dict[str, np.ndarray], str]:
        kind, path = self._label_file()
        test = self.layout().test
        official = list(zip(self.official_test_ids, PED2_TEST_LENGTHS, strict=True))
        source = f"ped2:{path.name}"
        if kind == "npy":
            lab = fmt.read_concatenated_labels(path)
            lengths = _lengths_for(test, official, len(lab), path)
            return fmt.split_concatenated(lab, lengths, path), source
        ranges = fmt.parse_ucsd_m(path) if kind == "ucsd-m" else fmt.read_ped2_mat(path)
        ids = [f"{i + 1:02d}" for i in range(len(ranges))]
        present = {s.video_id: s for s in test}
        known = dict(official) if len(ranges) == len(official) else {}
        out = {}
        for vid, rr in zip(ids, ranges, strict=True):
            # ranges do not say how long a video is: use the official count (so check() can
            # compare it with the frames on disk), else the frames on disk
            n = known.get(vid) or (present[vid].n_frames() if vid in present else None)
            if n is None:
                continue
            if rr and max(b for _, b in rr) > n:
                raise DatasetFormatError(
                    f"{path}: test video {vid!r} has {n} frames but its anomalous range ends at "
                    f"frame {max(b for _, b in rr)}; the label file does not match the video"
                )
            out[vid] = fmt.ranges_to_labels(rr, n)
        return out, source


# --------------------------------------------------------------------------------------------
# CUHK Avenue
# --------------------------------------------------------------------------------------------


class Avenue(VideoDataset):
    """CUHK Avenue: 16 training and 21 test videos, 640x360 colour.

    ``labels``: ``official`` (default; a frame is anomalous when its pixel mask in
    ``testing_label_mask/N_label.mat`` has any pixel set: 3,712 anomalous frames) or ``lntra``
    (the concatenated ``frame_labels_avenue.npy`` shipped by the MNAD/LNTRA code: 3,867
    anomalous frames, differs from the masks in 15 of 21 videos).
    """

    name = "avenue"
    version = "1"
    description = "CUHK Avenue (frame-level labels; 16 train / 21 test videos)"
    folder_names = ("avenue", "Avenue", "Avenue Dataset", "avenue-partial", "CUHK_Avenue")
    official_test_ids = tuple(f"{i:02d}" for i in range(1, 22))
    numbered_test_ids = True
    label_choices = ("official", "lntra")
    lntra_names = ("frame_labels_avenue.npy", "frame_labels_avenue_lntra.npy")
    help_text = (
        "Avenue layouts accepted under <data root>/avenue (or Avenue, 'Avenue Dataset', "
        "avenue-partial):\n"
        "  official: training_videos/01.avi ..., testing_videos/01.avi ..., "
        "testing_label_mask/1_label.mat ... (or ground_truth_demo/testing_label_mask/)\n"
        "  frames:   training/frames/01/0000.jpg ..., testing/frames/01/0000.jpg ...\n"
        "  labels=lntra also needs frame_labels_avenue.npy (MNAD/LNTRA code release).\n"
        "Get it from http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html "
        "(Avenue_Dataset.zip and ground_truth_demo.zip)."
    )

    def _find_layout(self) -> Layout:
        for d in self._candidates():
            if (d / "training_videos").is_dir() or (d / "testing_videos").is_dir():
                return Layout(d, "official", avi_files(d / "training_videos", _two_digit),
                              avi_files(d / "testing_videos", _two_digit))
            if (d / "training").is_dir() or (d / "testing").is_dir():
                return Layout(d, "frames", frame_folders(d / "training" / "frames", _two_digit),
                              frame_folders(d / "testing" / "frames", _two_digit))
        raise self._not_found("no Avenue folder found")

    def _mask_dir(self) -> Path | None:
        d = self.layout().folder
        return fmt.first_existing([
            d / "testing_label_mask", d / "ground_truth_demo" / "testing_label_mask",
            d / "testing" / "testing_label_mask",
        ])

    def _mask_files(self) -> dict[str, Path]:
        md = self._mask_dir()
        if md is None:
            return {}
        out = {}
        for p in md.glob("*_label.mat"):
            out[_two_digit(p.name[: -len("_label.mat")])] = p
        return dict(sorted(out.items()))

    def _lntra_file(self) -> Path | None:
        d = self.layout().folder
        return _find_file([d, d / "testing"], self.lntra_names)

    def _label_files(self) -> list[Path]:
        if self._labels_choice() == "official":
            return list(self._mask_files().values())
        # the masks too: they give the video lengths when the .npy is not the official copy's
        p = self._lntra_file()
        return ([p] if p else []) + list(self._mask_files().values())

    def _label_video_ids(self) -> list[str]:
        if self._labels_choice() == "official":  # one mask file per video: no need to read them
            masks = self._mask_files()
            if not masks:
                self._all_labels()  # raises the "need testing_label_mask" error
            return list(masks)
        return super()._label_video_ids()

    def _all_labels(self, restrict: bool = True) -> tuple[dict[str, np.ndarray], str]:
        if self._labels_choice() == "lntra":
            p = self._lntra_file()
            if p is None:
                raise DatasetNotFoundError(
                    f"avenue: labels=lntra needs one of {list(self.lntra_names)} in "
                    f"{self.layout().folder}; it ships with the MNAD/LNTRA code, or use "
                    "labels=official"
                )
            lab = fmt.read_concatenated_labels(p)
            official = list(zip(self.official_test_ids, AVENUE_TEST_LENGTHS, strict=True))
            masks = self._mask_files()
            if sum(AVENUE_TEST_LENGTHS) != len(lab) and masks:
                # not the official copy: take each video's length from its mask file
                official = [(v, len(self._mask_labels(m))) for v, m in masks.items()]
            lengths = _lengths_for(self.layout().test, official, len(lab), p)
            return fmt.split_concatenated(lab, lengths, p), f"avenue:lntra:{p.name}"
        masks = self._mask_files()
        if not masks:
            raise DatasetNotFoundError(
                f"avenue: official labels need testing_label_mask/N_label.mat under "
                f"{self.layout().folder} (from ground_truth_demo.zip).\n{self.help_text}"
            )
        wanted = (restrict and [s.video_id for s in self.test_sources()]) or list(masks)
        return {v: self._mask_labels(masks[v]) for v in wanted if v in masks}, \
            "avenue:official:testing_label_mask"

    def _mask_labels(self, path: Path) -> np.ndarray:
        """Frame labels of one mask file, memoised on disk (the masks take ~1 s each to read)."""
        fp = fmt.stat_fingerprint([path], "avenue-mask-v1")
        store = label_cache_root(self.params.get("cache_dir")) / "avenue"
        cached = store / f"{fp}.npy"
        if cached.exists():
            try:
                return np.load(cached)
            except (OSError, ValueError):
                pass
        lab = fmt.read_avenue_mask(path)
        if self.params.get("cache", True):
            store.mkdir(parents=True, exist_ok=True)
            tmp = store / f"{fp}.{os.getpid()}.tmp.npy"
            np.save(tmp, lab)
            os.replace(tmp, cached)
        return lab


# --------------------------------------------------------------------------------------------
# ShanghaiTech Campus
# --------------------------------------------------------------------------------------------


class ShanghaiTech(VideoDataset):
    """ShanghaiTech Campus: 330 training videos, 107 test videos (40,791 frames), 856x480.

    ``labels``: ``auto`` (per-video ``testing/test_frame_mask/<video>.npy`` if present, else the
    concatenated ``frame_labels_shanghai.npy``), ``masks`` or ``concatenated``.
    """

    name = "shanghaitech"
    version = "1"
    description = "ShanghaiTech Campus (frame-level labels; 330 train / 107 test videos)"
    folder_names = ("shanghaitech", "ShanghaiTech", "shanghai", "SHANGHAITECH",
                    "shanghaitech-labels")
    official_test_ids = tuple(k for k, _ in SHANGHAITECH_TEST_LENGTHS)
    label_choices = ("auto", "masks", "concatenated")
    help_text = (
        "ShanghaiTech layouts accepted under <data root>/shanghaitech (or ShanghaiTech, "
        "shanghai):\n"
        "  training/videos/01_001.avi ... or training/frames/01_001/000.jpg ...\n"
        "  testing/frames/01_0014/000.jpg ...\n"
        "  labels: testing/test_frame_mask/01_0014.npy ... or frame_labels_shanghai.npy\n"
        "Get it from https://svip-lab.github.io/dataset/campus_dataset.html."
    )

    def _find_layout(self) -> Layout:
        for d in self._candidates():
            has_labels = (d / "frame_labels_shanghai.npy").exists()
            if (d / "training").is_dir() or (d / "testing").is_dir() or has_labels:
                tr = d / "training"
                train = avi_files(tr / "videos") or frame_folders(tr / "frames")
                test = frame_folders(d / "testing" / "frames")
                return Layout(d, "official" if (tr / "videos").is_dir() else "frames", train, test)
        raise self._not_found("no ShanghaiTech folder found")

    def _mask_dir(self) -> Path | None:
        d = self.layout().folder
        return fmt.first_existing([d / "testing" / "test_frame_mask", d / "test_frame_mask"])

    def _concat_file(self) -> Path | None:
        d = self.layout().folder
        return _find_file([d, d / "testing"], ["frame_labels_shanghai.npy"])

    def _which(self) -> tuple[str, Path]:
        choice = self._labels_choice()
        md, cf = self._mask_dir(), self._concat_file()
        if choice in ("auto", "masks") and md is not None:
            return "masks", md
        if choice in ("auto", "concatenated") and cf is not None:
            return "concatenated", cf
        raise DatasetNotFoundError(
            f"shanghaitech: no labels for labels={choice!r} under {self.layout().folder} "
            f"(need testing/test_frame_mask/<video>.npy or frame_labels_shanghai.npy).\n"
            f"{self.help_text}"
        )

    def _label_files(self) -> list[Path]:
        try:
            kind, p = self._which()
        except DatasetNotFoundError:
            return []
        return sorted(p.glob("*.npy")) if kind == "masks" else [p]

    def _label_video_ids(self) -> list[str]:
        kind, p = self._which()
        if kind == "masks":
            return [f.stem for f in sorted(p.glob("*.npy"))]
        return super()._label_video_ids()

    def _all_labels(self, restrict: bool = True) -> tuple[dict[str, np.ndarray], str]:
        kind, p = self._which()
        if kind == "masks":
            return {f.stem: fmt.read_concatenated_labels(f) for f in sorted(p.glob("*.npy"))}, \
                "shanghaitech:test_frame_mask"
        lab = fmt.read_concatenated_labels(p)
        lengths = _lengths_for(self.layout().test, SHANGHAITECH_TEST_LENGTHS, len(lab), p)
        return fmt.split_concatenated(lab, lengths, p), f"shanghaitech:{p.name}"


def read_label_table(dataset: VideoDataset) -> Mapping[str, np.ndarray]:
    """All per-video labels a dataset's label source covers (even without frames on disk)."""
    return dataset._all_labels(restrict=False)[0]
