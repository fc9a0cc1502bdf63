"""The run store: one verified folder per run, content-addressed by job id; scoring derived.

Layout (schema ``occbench.store/2``, see docs/store-format.md)::

    STORE/occbench-store.json                 {"schema": "occbench.store/2"}
    STORE/runs/<job_id>/record.json           RunRecord: job, provenance, checksums (no metrics)
    STORE/runs/<job_id>/raw.parquet           one row per test item: video_id, frame, raw
    STORE/runs/<job_id>/log.txt               what the method logged (capped)
    STORE/labels/<sha>.parquet                a test set's labels, once: video_id, frame, label
    STORE/metrics/<protocol_id>/<job_id>.json metrics of a run under a protocol (derived, redoable)
    STORE/failed/<job_id>.json                the last failure of a job that has not succeeded
    STORE/locks/claims                        empty; a driver's claim on a job is a lock on
                                              one byte of it (see :class:`RangeClaim`)
    STORE/quarantine/...                      bad entries set aside by ``store verify --quarantine``

A **run** is what was computed (method, data content, class, seed): its folder never changes once
written. **Metrics** are derived from the run's raw scores and the test labels under a named
protocol; each metrics file records the digest of the protocol and metric code that produced it
and the checksums of the raw scores and labels it read, so a protocol fix re-evaluates a store
without retraining (``occbench store rescore``) and stale metrics are never shown: readers
recompute them on the fly instead.

Every file is checksummed (sha256) in the record, and the record carries a checksum of itself;
every read verifies. A bad entry (truncated, edited, garbage) is *not done*: ``run`` reruns it,
readers skip it with one line, ``store verify --quarantine`` moves it aside. Nothing is deleted.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import locale
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from occbench.harness.store.paths import is_job_id

STORE_SCHEMA = "occbench.store/2"
RECORD_SCHEMA = "occbench.run/2"
METRICS_SCHEMA = "occbench.metrics/2"

#: Keys of a run record; the JSON schema is documented in docs/store-format.md.
RECORD_KEYS = ("schema", "job_id", "status", "job", "provenance", "labels", "files", "sha256")

#: A job id: 20 lowercase hex characters (the first 80 bits of a sha256). Anything else that
#: appears where a job id belongs (a record's ``job_id``, a folder name) is never made a path.
# (``is_job_id`` is occbench.harness.store.paths': fullmatch, so "<id>\n" is not one either)
JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_PROTOCOL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*@[0-9]+$")

RUN_FILES = ("raw.parquet", "log.txt")
_RECORD_AND_FILES = ("record.json", *RUN_FILES)


class StoreError(RuntimeError):
    pass


class DiskFullError(StoreError):
    pass


def check_job_id(s: object) -> str:
    if not is_job_id(s):
        raise StoreError(f"{s!r} is not a job id (20 lowercase hex characters)")
    return str(s)


def check_protocol_id(s: object) -> str:
    if not isinstance(s, str) or not _PROTOCOL_RE.match(s):
        raise StoreError(f"{s!r} is not a protocol id (name@version)")
    return s


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _json_file_bytes(obj: Mapping[str, Any]) -> bytes:
    """A record or metrics file: its canonical JSON (sorted keys, no spaces) on one line.

    Any JSON reads back the same (checksums are over the canonical form, not the file's
    bytes), so older indented files stay valid. One line, because ``json.dumps`` with
    ``indent`` runs the pure-Python encoder: it was a fifth of the driver's cost per job.
    ``jq . record.json`` shows one indented."""
    return canonical(obj) + b"\n"


def self_digest(obj: Mapping[str, Any]) -> str:
    """sha256 of a JSON object's canonical form without its own ``sha256`` key."""
    return hashlib.sha256(canonical({k: v for k, v in obj.items() if k != "sha256"})).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def labels_digest(labels: Mapping[str, np.ndarray]) -> str:
    """Content hash of a test set's labels (video ids, lengths and values; order-independent)."""
    h = hashlib.sha256(b"occbench.labels/1")
    for vid in sorted(labels):
        y = np.ascontiguousarray(np.asarray(labels[vid]).astype(np.int8))
        h.update(f"{vid}\0{len(y)}\0".encode())
        h.update(y.tobytes())
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it). ``durable``:
    fsync before the rename (several ms on a busy disk); derived files that a reader verifies
    and recomputes when damaged skip it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _raise_disk_full(exc, path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    _atomic_write_bytes(path, text.encode(), durable)


def _raise_disk_full(exc: OSError, where: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            f"disk full while writing {where}: free space and rerun the same command; finished "
            "runs are kept and only missing ones will run"
        ) from exc


def _write_parquet(df: pd.DataFrame | Any, path: Path) -> bytes:
    """Write a table (a DataFrame, or a ``pyarrow.Table`` built by :func:`_raw_table`) to
    ``path``; returns the file's bytes (encoded in memory, then written with one plain write,
    so the caller can checksum them without reading the file back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pyarrow directly (no pandas metadata): smaller, faster, and byte-stable for equal input.
    # Dictionary-encode only the repetitive columns and delta-encode the frame index: a
    # dictionary of 10,000 distinct scores costs more than the scores (a Fashion-MNIST run:
    # 77 KB instead of 123 KB; as dense ranks, 23 KB instead of 68 KB)
    t = df if isinstance(df, pa.Table) else \
        pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    names = set(t.column_names)
    buf = pa.BufferOutputStream()
    pq.write_table(t, buf, compression="zstd",
                   use_dictionary=[c for c in ("video_id", "label") if c in names],
                   column_encoding={c: e for c, e in (("frame", "DELTA_BINARY_PACKED"),
                                                      ("raw", "PLAIN")) if c in names})
    data = buf.getvalue().to_pybytes()
    with open(path, "wb") as f:
        f.write(data)
    return data


def raw_frame(raw: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-item raw scores: video_id ('' for images), frame (index within video), raw."""
    parts = [pd.DataFrame({"video_id": pd.Series([vid] * len(r), dtype="string"),
                           "frame": np.arange(len(r), dtype=np.int64),
                           "raw": np.asarray(r, dtype=np.float64)})
             for vid, r in raw.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"video_id": pd.Series([], dtype="string"), "frame": np.array([], np.int64),
         "raw": np.array([], np.float64)})


def frame_index(lens: np.ndarray) -> np.ndarray:
    """Each item's index within its video (int64), for videos of ``lens`` items laid end to
    end: ``[0, 1, 2, 0, 1]`` for lengths ``[3, 2]``."""
    lens = np.asarray(lens, dtype=np.int64)
    return np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)


def _raw_table(raw: Mapping[str, np.ndarray]) -> Any:
    """:func:`raw_frame` as a ``pyarrow.Table``, built without pandas (a DataFrame and its
    conversion cost the driver about 1.5 ms a run). Same columns and types as the DataFrame
    converts to (``video_id`` large_string, ``frame`` int64, ``raw`` float64), so the
    parquet file is byte for byte what writing :func:`raw_frame` gives
    (``tests/test_driver_scale.py`` checks)."""
    import pyarrow as pa

    vids = list(raw)
    arrs = [np.asarray(raw[v], dtype=np.float64) for v in vids]
    lens = np.array([len(a) for a in arrs], dtype=np.int64)
    video_id = np.repeat(np.array(vids, dtype=object), lens) if vids else np.array([], object)
    frame = frame_index(lens)
    return pa.table({"video_id": pa.array(video_id, type=pa.large_string()),
                     "frame": pa.array(frame, type=pa.int64()),
                     # NaN (unscored border frames) stored as null, as from a DataFrame
                     "raw": pa.array(np.concatenate(arrs) if arrs else np.array([], np.float64),
                                     type=pa.float64(), from_pandas=True)})


def _read_split(path: Path, col: str, dtype: Any) -> dict[str, np.ndarray]:
    """``path``'s ``col`` per video (in first-seen video order, each in frame order), read
    with pyarrow into numpy (no DataFrame: pandas was two thirds of reading a run for a board
    page).
    Nulls become NaN (float columns). Raises what pyarrow raises for a damaged file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # one plain read, parsed from memory on this thread: read_table's dataset set-up and
    # thread pool cost 8x the parse on small files (2.6 ms against 0.32 ms a run)
    with open(path, "rb") as fh:
        data = fh.read()
    # video ids as the file's dictionary (written dictionary-encoded): codes without decoding
    # and re-encoding a string per row, which was half of reading a small run
    t = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["video_id"]).read(
        columns=["video_id", "frame", col], use_threads=False)
    vals = np.asarray(t.column(col).to_numpy(), dtype=dtype)
    frames = np.asarray(t.column("frame").to_numpy(), dtype=np.int64)
    vid = t.column("video_id")
    if not len(vid):
        return {}
    if vid.num_chunks == 1 and pa.types.is_dictionary(vid.type):
        chunk = vid.chunk(0)
        codes = np.asarray(chunk.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        dictionary = chunk.dictionary.to_pylist()
    else:  # several row groups (a file another writer made): one dictionary for all
        enc = vid.cast(pa.large_string()).combine_chunks().dictionary_encode()
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        dictionary = enc.dictionary.to_pylist()
    cuts = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(codes)]])
    block_codes = codes[starts].tolist()
    if len(set(block_codes)) == len(block_codes):
        # each video's rows in one block (as written): the blocks in file order are the
        # videos in first-seen order, whatever order the dictionary has
        return {str(dictionary[c]): _in_frame_order(frames[a:b], vals[a:b])
                for c, a, b in zip(block_codes, starts.tolist(), ends.tolist(), strict=True)}
    # interleaved rows: each video's in first-seen order of its code
    _, first = np.unique(codes, return_index=True)
    out: dict[str, np.ndarray] = {}
    for c in np.unique(codes)[np.argsort(first, kind="stable")]:
        m = codes == c
        out[str(dictionary[int(c)])] = _in_frame_order(frames[m], vals[m])
    return out


def _in_frame_order(frames: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` sorted by their ``frames`` (as they are when written in frame order)."""
    if len(frames) and not np.array_equal(frames, np.arange(len(frames))):
        return values[np.argsort(frames, kind="stable")]
    return values


#: Test sets whose labels a :class:`RunStore` keeps in memory once read (a few MB at most:
#: int8 per frame).
_LABELS_CACHED = 64

#: How often :meth:`JobLock.acquire` retries when the file it locked was deleted by the holder
#: releasing it in between (a race with a release, not contention: a few tries settle it).
_LOCK_TRIES = 8


def _ofd_lock_cmd() -> int | None:
    """``F_OFD_SETLK`` where the platform has open-file-description locks (Linux), else None."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    return getattr(fcntl, "F_OFD_SETLK", None)


class RangeClaim:
    """A driver's claim on one job: an exclusive lock on one byte of the shared, empty file
    ``STORE/locks/claims``, at an offset given by the job id, never waited for.

    The lock is an open-file-description lock (``F_OFD_SETLK``, Linux): like ``flock`` it
    belongs to this claim's own descriptor, so two claims are exclusive even in one process and
    closing one never drops another (plain POSIX record locks are per process). Nothing is
    created or deleted per job: on a slow disk the lock file per job (:class:`JobLock`), made
    and deleted for every job, was a sixth of the driver's cost. Two job ids share a byte only
    if their first 60 bits agree (one in 2^60): at worst such a job is skipped as "locked" once
    while the other runs, and a rerun does it.
    """

    def __init__(self, path: str | Path, offset: int, cmd: int) -> None:
        self.path = Path(path)
        self.offset = offset
        self._cmd = cmd
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _flock(self, kind: int) -> bytes:
        # struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid}: l_pid must
        # be 0 for OFD locks; the trailing pad keeps the kernel's 32 bytes defined
        return struct.pack("hhqqi4x", kind, os.SEEK_SET, self.offset, 1, 0)

    def acquire(self) -> bool:
        """Take the claim without waiting: True if taken, False if another claim holds it."""
        import fcntl

        if self.held:
            raise RuntimeError(f"{self.path}@{self.offset}: already held by this claim")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # locks/ removed since the store made it
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.fcntl(fd, self._cmd, self._flock(fcntl.F_WRLCK))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            # a file system without byte-range locks (some FUSE and network mounts)
            raise StoreError(
                f"cannot lock {self.path} ({exc.strerror or exc}): this file system does not "
                "support file locks; put the store on a local disk or an NFSv4 mount "
                "(--store)") from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the claim up (a no-op when not held); the file stays, empty."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases its lock


class JobLock:
    """A driver's claim on one job: an exclusive ``flock`` on ``STORE/locks/<job_id>.lock``,
    never waited for, and the file is deleted when the claim is released, so a store does not
    keep one lock file per job it ever ran.

    Deleting a lock file is safe only with a check: a driver may open the file just before the
    holder deletes it and lock that deleted file afterwards. So a claim counts only if the file
    locked is still the one at the path (same device and inode) once locked, and only the
    holder deletes it, while it still holds it; any other outcome retries on the new file.
    Where ``fcntl`` is missing (Windows) it falls back to :class:`filelock.FileLock`, which
    leaves the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._fallback: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def acquire(self) -> bool:
        """Take the claim without waiting: True if taken, False if another driver holds it."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this JobLock")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            lock = FileLock(str(self.path))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return False
            self._fallback = lock
            return True
        for _ in range(_LOCK_TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                now = os.stat(self.path)
                mine = os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # we locked a file its holder deleted on release: try the new one
        return False

    def release(self) -> None:
        """Give the claim up and delete the file (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.unlink(self.path)  # while still held: see the class docstring
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)  # releases the flock
        fb, self._fallback = self._fallback, None
        if fb is not None:  # pragma: no cover - Windows
            fb.release()


@dataclass(frozen=True)
class BadEntry:
    """A store entry that failed verification: its path and why."""

    path: Path
    reason: str
    kind: str  # "run" | "labels" | "metrics" | "failure" | "stray"

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class RunRead:
    """One run as :meth:`RunStore.read_run` read it. Per video (``""`` for images), in the
    labels' video order: ``raw`` the method's scores (NaN = not scored), ``labels`` (1 =
    anomalous, read-only), ``evaluated`` the protocol's scores of the frames it kept."""

    record: dict[str, Any]
    raw: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    evaluated: dict[str, np.ndarray]

    def frame(self) -> pd.DataFrame:
        """The :meth:`RunStore.scores` table of these arrays."""
        return scores_frame(self.raw, self.evaluated, self.labels)

    def per_video(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """video id -> (score, label) of its frames in frame order, in the labels' video
        order: score after the protocol, NaN where it dropped the frame (the ``score`` and
        ``label`` columns of :meth:`frame`, without building it); label int8. Made once (a
        page asks for it and for :meth:`items`); the arrays are shared, not to be changed."""
        return self._per_video

    @functools.cached_property
    def _per_video(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for vid, lab in self.labels.items():
            r = np.asarray(self.raw[vid], dtype=np.float64)
            ev = np.asarray(self.evaluated[vid], dtype=np.float64)
            if len(ev) != len(r):  # dropped frames (NaN raw scores) put back as NaN
                full = np.full(len(r), np.nan)
                full[~np.isnan(r)] = ev
                ev = full
            out[vid] = (ev, np.asarray(lab).astype(np.int8))
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(score, label) of every test item, the videos of :meth:`per_video` concatenated."""
        pv = list(self.per_video().values())
        if not pv:
            return np.array([], np.float64), np.array([], np.int8)
        return np.concatenate([s for s, _ in pv]), np.concatenate([y for _, y in pv])


class RunStore:
    """A run store rooted at ``path`` (created on first write).

    ``protocol``: the protocol(s) whose metrics :meth:`record` and :meth:`scores` show, one per
    modality (default: each run's requested protocol, ``record["job"]["protocol"]``).
    ``on_bad``: called once per bad entry a reader skips (default: one line on stderr).
    """

    def __init__(self, path: str | Path, protocol: str | Sequence[str] | None = None,
                 on_bad: Callable[[BadEntry], None] | None = None) -> None:
        self.path = Path(path)
        self.protocol = protocol
        self.on_bad = on_bad
        self._verified: dict[str, tuple[Any, ...]] = {}
        self._labels_ok: dict[str, str] = {}  # labels digest -> "" (good) or why bad
        #: labels digest -> (size, mtime_ns, inode) of the labels file this object wrote or
        #: read and verified: every run of a test set writes its labels, and re-reading the
        #: parquet to see that it is intact cost 3 ms a run
        self._labels_file: dict[str, tuple[int, int, int]] = {}
        #: per thread (the driver writes runs from several): (job id, stat key, record) of the
        #: record write_run wrote or check_run parsed last, for run_record once (a board's
        #: read of a run checked it, then read it again)
        self._thread = threading.local()
        self._dirs_made: set[Path] = set()  # metrics folders known to exist
        self._locks_made = False  # locks/ known to exist
        #: labels digest -> (stat key, labels) of files read and verified (most recent last)
        self._labels_cache: OrderedDict[str, tuple[tuple[int, int, int],
                                                   dict[str, np.ndarray]]] = OrderedDict()
        self._reported: set[Path] = set()
        self.skipped: list[BadEntry] = []

    # -- layout --------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def failed_dir(self) -> Path:
        return self.path / "failed"

    @property
    def locks_dir(self) -> Path:
        return self.path / "locks"

    @property
    def labels_dir(self) -> Path:
        return self.path / "labels"

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    @property
    def quarantine_dir(self) -> Path:
        return self.path / "quarantine"

    @property
    def pruned_dir(self) -> Path:
        return self.path / "pruned"

    #: What a store folder may hold; anything else before the marker exists means a foreign
    #: folder. (Another driver creating the same new store at the same moment writes these.)
    OWN_ENTRIES = frozenset({"occbench-store.json", "runs", "failed", "locks", "sweeps",
                             "pruned", "labels", "metrics", "quarantine", "origins"})

    def run_dir(self, job_id: str) -> Path:
        return self.runs_dir / check_job_id(job_id)

    @property
    def origins_dir(self) -> Path:
        return self.path / "origins"

    def origin(self, job_id: str) -> str:
        """``"verified"`` (made by occbench from the plugin's code: by CI or a maintainer) or
        ``"self-reported"`` (merged with ``--self-reported`` from a store made elsewhere)."""
        p = self.origins_dir / f"{check_job_id(job_id)}.json"
        if not p.exists():
            return "verified"
        try:
            return str(json.loads(p.read_text()).get("origin", "self-reported"))
        except (OSError, ValueError):
            return "self-reported"  # never upgrade an unreadable mark

    def metrics_path(self, job_id: str, protocol_id: str) -> Path:
        return self.metrics_dir / check_protocol_id(protocol_id) / f"{check_job_id(job_id)}.json"

    def init(self) -> RunStore:
        """Create the store, or check that an existing folder is one (safe when racing)."""
        marker = self.path / "occbench-store.json"
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a store folder; pass a folder to "
                             "--store")
        if self.path.exists() and not marker.exists():
            foreign = sorted(p.name for p in self.path.iterdir()
                             if p.name not in self.OWN_ENTRIES
                             and not p.name.startswith(".occbench-store.json."))
            if foreign:
                raise StoreError(
                    f"{self.path} exists and is not an occbench store (no occbench-store.json; "
                    f"it holds {foreign[:5]}); give --store an empty or new folder (e.g. "
                    f"--store {self.path / 'new'})"
                )
        try:
            for d in (self.runs_dir, self.failed_dir, self.locks_dir, self.labels_dir,
                      self.metrics_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _raise_disk_full(exc, self.path)
            raise StoreError(f"cannot create the store {self.path}: {exc}") from exc
        if not marker.exists():
            # atomic replace: two drivers racing here both write the same content
            _atomic_write_text(marker, json.dumps({"schema": STORE_SCHEMA}) + "\n")
        else:
            self.check_schema()
        return self

    def check_schema(self) -> None:
        marker = self.path / "occbench-store.json"
        try:
            schema = json.loads(marker.read_text()).get("schema")
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"{marker}: unreadable store marker ({exc}); it should hold "
                             f'{{"schema": "{STORE_SCHEMA}"}}') from exc
        if schema == "occbench.store/1":
            raise StoreError(
                f"{marker}: a store of occbench.store/1, whose job ids ignored data content and "
                "mixed scoring into runs; its runs cannot be trusted under the new identity. "
                "Start a new store (e.g. --store runs/new) and rerun; the old one is untouched")
        if schema != STORE_SCHEMA:
            raise StoreError(f"{marker}: store schema {schema!r}, this occbench reads "
                             f"{STORE_SCHEMA!r}")

    # -- bad entries ---------------------------------------------------------------------------
    def _report(self, bad: BadEntry) -> None:
        if bad.path in self._reported:
            return
        self._reported.add(bad.path)
        self.skipped.append(bad)
        if self.on_bad is not None:
            self.on_bad(bad)
        else:
            print(f"skipping {bad.line()} (`occbench store verify --quarantine` moves it aside)",
                  file=sys.stderr)

    # -- runs: verification --------------------------------------------------------------------
    def check_run(self, job_id: str, deep: bool = True) -> str | None:
        """Why the run ``job_id`` is bad, or None if it verifies (record checksum, job identity,
        every file's size and sha256; ``deep=False`` checks sizes only)."""
        if not is_job_id(job_id):
            return "not a job id (20 lowercase hex characters)"
        # text paths: pathlib's joins were a tenth of the driver's own cost per job
        ds = f"{self.path}{os.sep}runs{os.sep}{job_id}{os.sep}"
        try:
            st = [os.stat(ds + n) for n in _RECORD_AND_FILES]
        except FileNotFoundError as exc:
            return f"missing {Path(str(exc.filename)).name}"
        key = tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in st)
        if deep and self._verified.get(job_id) == key:
            return None
        d = self.runs_dir / job_id
        p = d / "record.json"
        try:
            rec = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"record.json unreadable ({type(exc).__name__}: {exc})"
        if not isinstance(rec, dict):
            return "record.json is not a JSON object"
        if rec.get("schema") != RECORD_SCHEMA:
            return f"record schema {rec.get('schema')!r}, expected {RECORD_SCHEMA!r}"
        if rec.get("job_id") != job_id:
            return f"record says job {rec.get('job_id')!r}"
        try:
            if rec.get("sha256") != self_digest(rec):
                return "record.json checksum mismatch (edited or damaged)"
        except (TypeError, ValueError) as exc:
            return f"record.json not canonical JSON ({exc})"
        try:
            from occbench.harness.run.spec import Job

            ident = Job.from_dict(rec["job"]).job_id
        except (KeyError, TypeError, ValueError) as exc:
            return f"record's job is malformed ({type(exc).__name__}: {exc})"
        if ident != job_id:
            return f"record's job hashes to {ident}, not its folder name (edited record)"
        files = rec.get("files")
        if not isinstance(files, dict) or set(files) != set(RUN_FILES):
            return "record.json lists no checksums of its files"
        for name, s in zip(RUN_FILES, st[1:], strict=True):
            want = files[name]
            if not isinstance(want, dict) or want.get("size") != s.st_size:
                return f"{name}: size {s.st_size}, record says {want.get('size')}"
            if deep and file_sha256(d / name) != want.get("sha256"):
                return f"{name}: sha256 mismatch (damaged)"
        digest = rec.get("labels")
        if deep:
            # a run whose test labels are gone or damaged cannot be scored: not done
            why_labels = self._labels_ok.get(str(digest))
            if why_labels is None:
                try:
                    self.labels_by_digest(str(digest))
                    why_labels = ""
                except StoreError as exc:
                    why_labels = f"its labels {str(digest)[:12]}… are missing or damaged ({exc})"
                self._labels_ok[str(digest)] = why_labels
            if why_labels:
                return why_labels
        if deep:
            self._verified[job_id] = key
            self._thread.fresh_record = (job_id, key, rec)
        return None

    def has(self, job_id: str) -> bool:
        """True if the run exists and verifies (a bad entry is not done)."""
        return is_job_id(job_id) and self.check_run(job_id) is None

    def job_ids(self) -> list[str]:
        """Ids of the runs that verify, sorted; bad entries are reported once and skipped."""
        if not self.runs_dir.exists():
            return []
        out = []
        for p in sorted(self.runs_dir.iterdir()):
            if p.name.startswith("."):
                continue
            why = self.check_run(p.name)
            if why is None:
                out.append(p.name)
            else:
                self._report(BadEntry(p, why, "run"))
        return out

    def run_record(self, job_id: str) -> dict[str, Any]:
        """The run's own record (job, provenance, checksums), verified."""
        why = self.check_run(job_id)
        if why is not None:
            raise StoreError(f"{self.runs_dir / str(job_id)}: {why}; run `occbench store verify "
                             "--quarantine` and rerun")
        jw = getattr(self._thread, "fresh_record", None)
        self._thread.fresh_record = None
        if jw is not None and jw[0] == job_id and self._verified.get(job_id) == jw[1]:
            # the record write_run just wrote or check_run just parsed, files unchanged since:
            # not read again (used once, so no caller shares the dict with a later one)
            return jw[2]
        return dict(json.loads((self.runs_dir / job_id / "record.json").read_text()))

    # -- reads ---------------------------------------------------------------------------------
    def raw(self, job_id: str) -> dict[str, np.ndarray]:
        """The method's raw scores per video (``""`` for images), float64, NaN = not scored."""
        return _read_split(self.run_dir(job_id) / "raw.parquet", "raw", np.float64)

    def labels_by_digest(self, digest: str) -> dict[str, np.ndarray]:
        if not isinstance(digest, str) or not _SHA_RE.match(digest):
            raise StoreError(f"{digest!r} is not a labels digest")
        p = self.labels_dir / f"{digest}.parquet"
        try:  # (gone between the stat and the read: missing too)
            key = _stat_key(p)
            hit = self._labels_cache.get(digest)
            if hit is not None and hit[0] == key:
                # the file read and verified before, unchanged since (runs of one test set
                # share their labels: a board read them once per run); its arrays are read-only
                self._labels_cache.move_to_end(digest)
                return dict(hit[1])
            lab = _read_split(p, "label", np.int8)
        except FileNotFoundError:
            raise StoreError(f"{p}: labels missing; merge them from the store the run came from "
                             "or rerun") from None
        except Exception as exc:  # pyarrow raises many types for damaged files
            raise StoreError(f"{p}: unreadable labels ({type(exc).__name__}: {exc})") from exc
        if labels_digest(lab) != digest:
            raise StoreError(f"{p}: labels do not match their checksum (damaged)")
        for y in lab.values():
            y.flags.writeable = False  # shared by every caller of this digest
        self._labels_cache[digest] = (key, lab)
        if len(self._labels_cache) > _LABELS_CACHED:
            self._labels_cache.popitem(last=False)
        return dict(lab)

    def labels(self, job_id: str) -> dict[str, np.ndarray]:
        """The test labels of the run's test set (1 = anomalous), per video."""
        return self.labels_by_digest(str(self.run_record(job_id).get("labels")))

    def view_protocol(self, rec: Mapping[str, Any], protocol: str | None = None) -> str:
        """The protocol a read shows: ``protocol``, else the view's protocol for the run's
        modality, else the run's own requested one."""
        if protocol:
            return protocol
        view = self.protocol
        if view:
            from occbench.harness.scoring.protocols import get_protocol

            for pid in ([view] if isinstance(view, str) else list(view)):
                if get_protocol(pid).modality == rec["job"]["modality"]:
                    return get_protocol(pid).id
        return str(rec["job"]["protocol"])

    def metrics(self, job_id: str, protocol: str | None = None,
                compute: bool = True) -> dict[str, Any] | None:
        """Metrics of the run under ``protocol`` (default: the view's / the run's own).

        Stored metrics are used when fresh (same protocol digest, raw scores and labels);
        otherwise they are recomputed from the raw scores and labels (``compute``) without
        being written — ``rescore`` writes them. None when they cannot be had.
        """
        rec = self.run_record(job_id)
        return self._metrics_of(job_id, rec, self.view_protocol(rec, protocol), compute)

    def _metrics_of(self, job_id: str, rec: Mapping[str, Any], pid: str, compute: bool = True,
                    raw: Mapping[str, np.ndarray] | None = None,
                    labels: Mapping[str, np.ndarray] | None = None,
                    processed: Any = None) -> dict[str, Any] | None:
        """:meth:`metrics` of the verified record ``rec`` under protocol ``pid``; ``raw`` and
        ``labels``: the run's, when the caller has read them already; ``processed``: the
        protocol's ``process(raw, labels)`` of them, when the caller has it."""
        from occbench.harness.scoring.protocols import get_protocol

        proto = get_protocol(pid)
        stored = self._stored_metrics(job_id, proto.id, rec)
        if stored is not None:
            return dict(stored["metrics"])
        if not compute or proto.modality != rec["job"]["modality"]:
            return None
        try:
            return proto.evaluate(self.raw(job_id) if raw is None else raw,
                                  self.labels_by_digest(str(rec.get("labels")))
                                  if labels is None else labels, processed=processed)
        except (StoreError, ValueError):
            return None

    def _stored_metrics(self, job_id: str, pid: str, rec: Mapping[str, Any]
                        ) -> dict[str, Any] | None:
        p = self.metrics_path(job_id, pid)
        if not p.exists():
            return None
        why, m = self._check_metrics_file(p, rec)
        if why is not None:
            if not why.startswith("stale"):
                self._report(BadEntry(p, why, "metrics"))
            return None
        return m

    def _check_metrics_file(self, p: Path, rec: Mapping[str, Any] | None = None
                            ) -> tuple[str | None, dict[str, Any] | None]:
        from occbench.harness.scoring.protocols import ProtocolError, get_protocol

        try:
            m = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"unreadable metrics ({type(exc).__name__}: {exc})", None
        if not isinstance(m, dict) or m.get("schema") != METRICS_SCHEMA:
            return "not an occbench metrics file", None
        try:
            if m.get("sha256") != self_digest(m):
                return "metrics checksum mismatch (edited or damaged)", None
        except (TypeError, ValueError):
            return "metrics not canonical JSON", None
        if m.get("job_id") != p.stem or m.get("protocol_id") != p.parent.name:
            return "metrics file names another run or protocol", None
        if rec is None:
            return None, m
        try:
            proto = get_protocol(str(m["protocol_id"]))
        except ProtocolError:
            return "stale: protocol no longer exists", m
        if m.get("protocol_digest") != proto.digest:
            return "stale: protocol or metric code changed", m
        if m.get("raw_sha256") != rec["files"]["raw.parquet"]["sha256"]:
            return "stale: computed from other raw scores", m
        if m.get("labels") != rec.get("labels"):
            return "stale: computed with other labels", m
        return None, m

    def record(self, job_id: str, protocol: str | None = None) -> dict[str, Any]:
        """The run's record plus ``metrics`` and ``protocol`` (description) under the view's
        protocol — the shape tables and exports read."""
        rec = self.run_record(job_id)
        return self.with_metrics(job_id, rec, self.view_protocol(rec, protocol))

    def with_metrics(self, job_id: str, rec: dict[str, Any], pid: str,
                     raw: Mapping[str, np.ndarray] | None = None,
                     labels: Mapping[str, np.ndarray] | None = None,
                     processed: Any = None) -> dict[str, Any]:
        """``rec`` (the run's verified record, from :meth:`run_record`) with ``metrics`` and
        ``protocol`` under protocol ``pid`` added, as :meth:`record` gives it, without reading
        the record again; ``raw``/``labels``/``processed``: as :meth:`_metrics_of` takes
        them."""
        from occbench.harness.scoring.protocols import get_protocol

        rec["metrics"] = self._metrics_of(job_id, rec, pid, raw=raw, labels=labels,
                                          processed=processed)
        rec["protocol"] = get_protocol(pid).describe()
        return rec

    def records(self, protocol: str | None = None) -> Iterator[dict[str, Any]]:
        for jid in self.job_ids():
            try:
                yield self.record(jid, protocol)
            except StoreError as exc:
                self._report(BadEntry(self.runs_dir / jid, str(exc), "run"))

    def read_run(self, job_id: str, protocol: str | None = None) -> RunRead:
        """Everything a run page shows of one run, verified once: :meth:`record` (with
        ``metrics`` and ``protocol``), the raw scores, the labels and the protocol's evaluated
        scores. Calling :meth:`record` and :meth:`scores` verified the run four times and
        read its record as often (a third of an image run's page)."""
        from occbench.harness.scoring.protocols import get_protocol

        rec = self.run_record(job_id)
        pid = self.view_protocol(rec, protocol)
        proto = get_protocol(pid)
        raw = self.raw(job_id)
        labels = self.labels_by_digest(str(rec.get("labels")))
        # processed once: metrics computed here (stale, or another protocol's) use it too
        processed = proto.process(raw, labels)
        self.with_metrics(job_id, rec, pid, raw=raw, labels=labels, processed=processed)
        return RunRead(rec, raw, labels, processed[0])

    def scores(self, job_id: str, protocol: str | None = None) -> pd.DataFrame:
        """Per-item table: video_id, frame, raw, score (after the protocol, NaN where it dropped
        the frame), label (1 = anomalous)."""
        from occbench.harness.scoring.protocols import get_protocol

        rec = self.run_record(job_id)
        proto = get_protocol(self.view_protocol(rec, protocol))
        raw = self.raw(job_id)
        labels = self.labels(job_id)
        evaluated, _ = proto.process(raw, labels)
        return scores_frame(raw, evaluated, labels)

    def log(self, job_id: str) -> str:
        p = self.run_dir(job_id) / "log.txt"
        return p.read_text(errors="replace") if p.exists() else ""

    def failures(self) -> list[dict[str, Any]]:
        """Failure records of jobs with no good run; unreadable ones are reported and skipped."""
        if not self.failed_dir.exists():
            return []
        out = []
        for p in sorted(self.failed_dir.glob("*.json")):
            if not is_job_id(p.stem):
                self._report(BadEntry(p, "not named by a job id", "failure"))
                continue
            rec = _read_failure(p)
            if rec is None:
                self._report(BadEntry(p, "unreadable failure record", "failure"))
                continue
            if not self.has(p.stem):
                out.append(rec)
        return out

    # -- writes --------------------------------------------------------------------------------
    @contextmanager
    def claim(self, job_id: str) -> Iterator[bool]:
        """Try to take the job's lock without waiting; yields False if another driver holds it."""
        lock = self.job_lock(job_id)
        if not lock.acquire():
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def job_lock(self, job_id: str) -> RangeClaim | JobLock:
        """The (not yet taken) claim on ``job_id``: a :class:`RangeClaim` where the platform
        has open-file-description locks (Linux), else a lock file per job (:class:`JobLock`)."""
        check_job_id(job_id)
        cmd = _ofd_lock_cmd()
        if not self._locks_made:
            self.locks_dir.mkdir(parents=True, exist_ok=True)
            self._locks_made = True
        if cmd is None:  # pragma: no cover - not Linux
            return JobLock(self.locks_dir / f"{job_id}.lock")
        return RangeClaim(self.locks_dir / "claims", int(job_id[:15], 16), cmd)

    def write_labels(self, labels: Mapping[str, np.ndarray]) -> str:
        """Store a test set's labels once (content-addressed); returns their digest."""
        digest = labels_digest(labels)
        p = self.labels_dir / f"{digest}.parquet"
        if p.exists():
            if self._labels_file.get(digest) == _stat_key(p):
                return digest  # the very file this object verified, unchanged since
            try:
                self.labels_by_digest(digest)
                self._labels_file[digest] = _stat_key(p)
                return digest
            except StoreError:
                pass  # damaged copy: rewrite it from the labels we hold
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        df = pd.concat([pd.DataFrame({"video_id": pd.Series([vid] * len(y), dtype="string"),
                                      "frame": np.arange(len(y), dtype=np.int64),
                                      "label": np.asarray(y).astype(np.int8)})
                        for vid, y in labels.items()], ignore_index=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
        try:
            _write_parquet(df, tmp)
            os.replace(tmp, p)
        except OSError as exc:
            _raise_disk_full(exc, p)
            raise
        finally:
            if tmp.exists():
                tmp.unlink()
        self._labels_ok.pop(digest, None)
        self._labels_file[digest] = _stat_key(p)
        return digest

    def write_run(self, record: Mapping[str, Any], raw: Mapping[str, np.ndarray],
                  labels: Mapping[str, np.ndarray], log: str = "") -> bool:
        """Write a finished run atomically with checksums. Returns False if a good run is
        already there (a bad one is moved to quarantine and replaced)."""
        job_id = check_job_id(record["job_id"])
        final = self.runs_dir / job_id
        if final.exists():
            why = self.check_run(job_id)
            if why is None:
                return False
            self._quarantine(final, "run", why)
        digest = self.write_labels(labels)
        # a fresh hidden folder, renamed into place whole (a plain mkdir of a random name:
        # mkdtemp's name generator cost 0.3 ms a run)
        tmp = self.runs_dir / f".{job_id}.{uuid.uuid4().hex}"
        try:
            try:
                os.mkdir(tmp)
            except FileNotFoundError:  # no runs/ yet (made once, not stat'ed every run)
                self.runs_dir.mkdir(parents=True, exist_ok=True)
                os.mkdir(tmp)
            # checksums of the bytes as written, not of a read-back: two opens fewer a run
            data = {"raw.parquet": _write_parquet(_raw_table(raw), tmp / "raw.parquet"),
                    # the encoding Path.write_text used (readers use read_text)
                    "log.txt": log.encode(locale.getpreferredencoding(False))}
            with open(tmp / "log.txt", "wb") as f:
                f.write(data["log.txt"])
            rec = {k: v for k, v in record.items() if k not in ("metrics", "protocol", "sha256")}
            rec.update(schema=RECORD_SCHEMA, job_id=job_id, labels=digest, files={
                n: {"size": len(data[n]), "sha256": hashlib.sha256(data[n]).hexdigest()}
                for n in RUN_FILES})
            body = canonical(rec)
            rec = json.loads(body)  # what is hashed is exactly what is read back
            rec["sha256"] = hashlib.sha256(body).hexdigest()  # = self_digest(rec)
            with open(tmp / "record.json", "wb") as f:
                f.write(_json_file_bytes(rec))
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if final.exists():  # another driver won the race: keep its result
                    return False
                raise exc
            # verified as written (the checksums were just taken of these files): reading the
            # run back (write_metrics, has) need not hash them again
            fs = f"{final}{os.sep}"
            self._verified[job_id] = key = tuple(_stat_key(fs + n) for n in _RECORD_AND_FILES)
            self._labels_ok[digest] = ""
            self._thread.fresh_record = (job_id, key, rec)
        except OSError as exc:
            _raise_disk_full(exc, final)
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        failed = self.failed_dir / f"{job_id}.json"
        if failed.exists():
            failed.unlink()
        return True

    def write_metrics(self, job_id: str, protocol: str | None = None,
                      raw: Mapping[str, np.ndarray] | None = None,
                      labels: Mapping[str, np.ndarray] | None = None,
                      processed: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]
                      | None = None) -> dict[str, Any]:
        """Compute the run's metrics under ``protocol`` (default: its own) from its raw scores
        and labels and store them; returns the metrics. Raises ProtocolError/ValueError when
        the protocol cannot evaluate the scores. ``processed``: that protocol's
        ``process(raw, labels)``, when the caller has it already (the driver validates with
        it), so it is not computed twice."""
        from occbench.harness.scoring.protocols import get_protocol

        rec = self.run_record(job_id)
        proto = get_protocol(self.view_protocol(rec, protocol))
        if proto.modality != rec["job"]["modality"]:
            raise StoreError(f"protocol {proto.id} is for {proto.modality}, run {job_id} is "
                             f"{rec['job']['modality']}")
        raw = self.raw(job_id) if raw is None else raw
        labels = self.labels(job_id) if labels is None else labels
        metrics = proto.evaluate(raw, labels, processed=processed)
        doc = {"schema": METRICS_SCHEMA, "job_id": job_id, "protocol_id": proto.id,
               "protocol": proto.describe(), "protocol_digest": proto.digest,
               "raw_sha256": rec["files"]["raw.parquet"]["sha256"], "labels": rec["labels"],
               "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "metrics": metrics}
        body = canonical(doc)
        doc = json.loads(body)
        doc["sha256"] = hashlib.sha256(body).hexdigest()  # = self_digest(doc)
        p = self.metrics_path(job_id, proto.id)
        if p.parent not in self._dirs_made:  # one mkdir per protocol, not per run
            p.parent.mkdir(parents=True, exist_ok=True)
            self._dirs_made.add(p.parent)
        # not fsynced (it was 6 ms of a run's 17 on a loaded machine): metrics are derived and
        # checksummed; one torn by a crash fails its checksum, readers recompute it on the fly
        # and `store rescore` rewrites it (the run's own files are not fsynced either)
        data = _json_file_bytes(doc)
        try:
            _atomic_write_bytes(p, data, durable=False)
        except FileNotFoundError:  # its folder was removed since: make it again
            p.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(p, data, durable=False)
        return dict(doc["metrics"])

    def rescore(self, protocols: list[str] | None = None, force: bool = False
                ) -> dict[str, int]:
        """(Re)compute missing or stale metrics of every good run under its own protocol and
        ``protocols`` (those of the run's modality). Never retrains. Returns counts."""
        from occbench.harness.scoring.protocols import get_protocol

        counts = {"fresh": 0, "computed": 0, "failed": 0}
        wanted = [get_protocol(p) for p in (protocols or [])]
        for jid in self.job_ids():
            rec = self.run_record(jid)
            pids = {get_protocol(str(rec["job"]["protocol"])).id} | {
                p.id for p in wanted if p.modality == rec["job"]["modality"]}
            raw = labels = None
            for pid in sorted(pids):
                if not force and self._stored_metrics(jid, pid, rec) is not None:
                    counts["fresh"] += 1
                    continue
                try:
                    if raw is None:
                        raw, labels = self.raw(jid), self.labels(jid)
                    self.write_metrics(jid, pid, raw, labels)
                    counts["computed"] += 1
                except (StoreError, ValueError) as exc:
                    counts["failed"] += 1
                    self._report(BadEntry(self.runs_dir / jid, f"cannot score under {pid}: "
                                          f"{exc}", "run"))
        return counts

    def write_failure(self, record: Mapping[str, Any]) -> None:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        p = self.failed_dir / f"{check_job_id(record['job_id'])}.json"
        prev = _read_failure(p) or {} if p.exists() else {}
        rec = dict(record)
        rec["attempts"] = int(prev.get("attempts", 0) or 0) + 1
        _atomic_write_text(p, json.dumps(rec, indent=1, sort_keys=True, default=_json_default))

    # -- verification and quarantine -----------------------------------------------------------
    def verify(self, quarantine: bool = False, recompute: bool = True) -> list[BadEntry]:
        """Check every entry: runs (checksums, identity), labels (content hash), metrics
        (checksum; with ``recompute``, equal to metrics recomputed from the stored raw scores
        and labels under the current protocol when fresh), failure records. ``quarantine``
        moves each bad entry under ``STORE/quarantine/`` (nothing is deleted)."""
        bad: list[BadEntry] = []
        if self.runs_dir.exists():
            for p in sorted(self.runs_dir.iterdir()):
                if p.name.startswith("."):
                    continue
                why = self.check_run(p.name)
                if why is not None:
                    bad.append(BadEntry(p, why, "run"))
        if self.labels_dir.exists():
            for p in sorted(self.labels_dir.glob("*.parquet")):
                try:
                    self.labels_by_digest(p.stem)
                except StoreError as exc:
                    bad.append(BadEntry(p, str(exc).split(": ", 1)[-1], "labels"))
        bad_runs = {b.path.name for b in bad if b.kind == "run"}
        if self.metrics_dir.exists():
            for p in sorted(self.metrics_dir.glob("*/*.json")):
                if p.stem in bad_runs:
                    continue  # set aside with its run
                if not is_job_id(p.stem) or not (self.runs_dir / p.stem).exists():
                    bad.append(BadEntry(p, "metrics of no run in the store", "metrics"))
                    continue
                rec = self.run_record(p.stem)
                why, m = self._check_metrics_file(p, rec)
                if why is not None and not why.startswith("stale"):
                    bad.append(BadEntry(p, why, "metrics"))
                    continue
                if why is None and recompute and m is not None:
                    diff = self._recompute_diff(p.stem, m)
                    if diff:
                        bad.append(BadEntry(p, f"stored metrics differ from recomputed: {diff}",
                                            "metrics"))
        if self.failed_dir.exists():
            for p in sorted(self.failed_dir.glob("*.json")):
                if not is_job_id(p.stem) or _read_failure(p) is None:
                    bad.append(BadEntry(p, "unreadable failure record", "failure"))
        if quarantine:
            for b in bad:
                self._quarantine(b.path, b.kind, b.reason)
        return bad

    def _recompute_diff(self, job_id: str, m: Mapping[str, Any]) -> str:
        from occbench.harness.scoring.protocols import get_protocol

        proto = get_protocol(str(m["protocol_id"]))
        try:
            fresh = proto.evaluate(self.raw(job_id), self.labels(job_id))
        except (StoreError, ValueError) as exc:
            return f"cannot recompute ({exc})"
        fresh = json.loads(canonical(fresh))
        diffs = [k for k in sorted(set(fresh) | set(m["metrics"]))
                 if fresh.get(k) != m["metrics"].get(k)]
        return ", ".join(f"{k} {m['metrics'].get(k)!r} != {fresh.get(k)!r}"
                         for k in diffs[:3])

    def _quarantine(self, path: Path, kind: str, reason: str) -> Path | None:
        if not path.exists():
            return None
        dst_dir = self.quarantine_dir / kind
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{path.name}.{uuid.uuid4().hex[:8]}"
        os.rename(path, dst)  # same file system: atomic
        (dst_dir / f"{dst.name}.why.txt").write_text(f"{path}\n{reason}\n")
        self._verified.pop(path.name, None)
        self._labels_ok.pop(path.stem, None)
        if kind == "run" and is_job_id(path.name):  # its derived metrics go with it
            for mp in self.metrics_dir.glob(f"*/{path.name}.json"):
                self._quarantine(mp, "metrics", f"metrics of the bad run {path.name}")
        return dst

    # -- pruning and merging -------------------------------------------------------------------
    def set_aside(self, job_id: str) -> bool:
        """Move a finished run out of ``runs/`` into ``pruned/`` (kept, never deleted): tables,
        exports and resumes no longer see it. False if the job's lock is held or it is gone."""
        with self.claim(job_id) as got:
            if not got or not (self.runs_dir / job_id).exists():
                return False
            self.pruned_dir.mkdir(parents=True, exist_ok=True)
            dst = self.pruned_dir / job_id
            if dst.exists():  # pruned before, then run again: keep the older copy aside too
                dst = self.pruned_dir / f"{job_id}.{uuid.uuid4().hex[:8]}"
            os.rename(self.runs_dir / job_id, dst)  # same file system: atomic
            self._verified.pop(job_id, None)
            return True

    def merge_from(self, other: RunStore, compact: bool = False,
                   self_reported: bool = False, metrics: bool = True) -> tuple[int, int]:
        """Copy good runs of ``other`` missing here, with their labels and metrics; returns
        (copied, already present). Bad entries of ``other`` are reported and not copied.

        ``metrics=False``: copy no metrics files (they are derived: every reader computes the
        metrics it lacks from the raw scores and labels, and ``store rescore`` writes them).
        The committed reference store keeps only what cannot be derived.

        ``compact``: image runs are stored with their raw scores replaced by dense ranks
        (``scipy.stats.rankdata(method="dense")``, ties kept): every image metric (AUROC,
        EER) depends only on the order of the scores, so they are recomputed exactly, at a
        fraction of the size (the committed reference store, ``results/``). The record says
        so (``provenance.raw_compacted``, with the original raw scores' sha256).

        ``self_reported``: the runs were made elsewhere, not from the plugin's code by CI or a
        maintainer; the board says so (``STORE/origins/<job_id>.json``). A run already marked
        self-reported in ``other`` stays so."""
        self.init()
        other.check_schema()
        copied = present = 0
        for jid in other.job_ids():
            if self_reported or other.origin(jid) != "verified":
                self.origins_dir.mkdir(parents=True, exist_ok=True)
                op = self.origins_dir / f"{jid}.json"
                if not op.exists():
                    _atomic_write_text(op, json.dumps(
                        {"job_id": jid, "origin": "self-reported", "merged_from": other.path.name,
                         "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                        indent=1, sort_keys=True) + "\n")
            orec = other.run_record(jid)
            digest = str(orec.get("labels"))
            if not (self.labels_dir / f"{digest}.parquet").exists():
                self.write_labels(other.labels_by_digest(digest))
            if self.has(jid):
                present += 1
            elif compact and orec["job"]["modality"] == "image" and \
                    "raw_compacted" not in orec.get("provenance", {}):
                from scipy.stats import rankdata

                raw = other.raw(jid)
                ranked = {k: rankdata(v, method="dense").astype(np.float64)
                          for k, v in raw.items()}
                prov = {**orec["provenance"], "raw_compacted": {
                    "transform": "dense-rank",
                    "raw_sha256": orec["files"]["raw.parquet"]["sha256"]}}
                self.write_run({**orec, "provenance": prov}, ranked,
                               other.labels_by_digest(digest), other.log(jid))
                if metrics:
                    self.write_metrics(jid, None, ranked)
                copied += 1
                continue
            else:
                if (self.runs_dir / jid).exists():  # a bad copy here: set it aside first
                    self._quarantine(self.runs_dir / jid, "run", str(self.check_run(jid)))
                tmp = Path(tempfile.mkdtemp(prefix=f".{jid}.", dir=self.runs_dir))
                try:
                    for n in _RECORD_AND_FILES:
                        shutil.copy2(other.runs_dir / jid / n, tmp / n)
                    try:
                        os.rename(tmp, self.runs_dir / jid)
                        copied += 1
                    except OSError:
                        if not self.has(jid):
                            raise
                        present += 1
                except OSError as exc:
                    _raise_disk_full(exc, self.runs_dir / jid)
                    raise
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
            for mp in sorted(other.metrics_dir.glob(f"*/{jid}.json") if metrics else []):
                why, _ = other._check_metrics_file(mp, orec)
                dst = self.metrics_dir / mp.parent.name / mp.name
                if why is None and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    _atomic_write_bytes(dst, mp.read_bytes())
        return copied, present


def _stat_key(p: Path | str) -> tuple[int, int, int]:
    """What tells a file changed: size, mtime (ns) and inode (as :meth:`RunStore.check_run`)."""
    st = os.stat(p)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _read_failure(p: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(rec, dict) or not is_job_id(rec.get("job_id")) or \
            not isinstance(rec.get("job"), dict):
        return None
    return rec


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def scores_frame(raw: Mapping[str, np.ndarray], evaluated: Mapping[str, np.ndarray],
                 labels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-item table: video_id ('' for images), frame (index within video), raw, score, label.

    ``evaluated`` holds the protocol's scores for the non-dropped frames, in order.
    """
    vids, raws, evs, labs = [], [], [], []
    for vid, lab in labels.items():
        r = np.asarray(raw[vid], dtype=np.float64)
        ev = np.full(len(r), np.nan)
        keep = ~np.isnan(r) if len(evaluated[vid]) != len(r) else np.ones(len(r), bool)
        ev[keep] = evaluated[vid]
        vids.append(vid)
        raws.append(r)
        evs.append(ev)
        labs.append(np.asarray(lab).astype(np.int8))
    # one frame of the concatenated columns (a frame per video and a concat cost a board
    # page several ms); the same columns and types as before
    lens = np.array([len(r) for r in raws], dtype=np.int64)
    return pd.DataFrame({
        "video_id": pd.Series(np.repeat(np.array(vids, dtype=object), lens), dtype="string"),
        "frame": frame_index(lens),
        "raw": np.concatenate(raws) if raws else np.array([], np.float64),
        "score": np.concatenate(evs) if evs else np.array([], np.float64),
        "label": np.concatenate(labs) if labs else np.array([], np.int8),
    })
