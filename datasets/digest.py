"""Content fingerprints: a hash of the bytes of every file a job reads, with a per-file cache.

A dataset's :meth:`~occbench.harness.api.Dataset.fingerprint` is :func:`content_fingerprint` of
``(portable name, path)`` pairs: the name is the file's path relative to the dataset folder
(``testing/frames/01/000.jpg``), never an absolute path or an mtime, so the same bytes give the
same fingerprint on every machine and in every folder, and any changed byte gives a new one.

Hashing Ped2's 4,560 JPEGs (109 MB) takes seconds, so each file's SHA-256 is remembered in a
SQLite table in the user cache directory (``$OCCBENCH_CACHE``, else ``$XDG_CACHE_HOME/occbench``,
else ``~/.cache/occbench``; never the data root, which may be read-only), keyed by the absolute
path and the file's ``(size, mtime_ns, ctime_ns, inode, device)``. An unchanged file costs one
``os.stat`` and a row lookup. A rewrite changes ``mtime``/``ctime`` (even a rewrite of the same
size, or one that restores the old mtime with ``touch -d``, which still moves ``ctime``).

Two guards keep a cache hit from ever making a changed file look unchanged:

* *racy files*: a file whose mtime is within :data:`RACY_WINDOW_NS` of the moment it was hashed
  is not remembered (as git does for its index), because a second write inside the same
  filesystem timestamp tick would keep every stat field equal;
* the cache is advisory: any SQLite error (a locked, read-only or corrupt file) makes it a miss,
  a corrupt database is moved aside and rebuilt, and nothing is ever raised from it.
  Concurrent processes share it safely (SQLite transactions, ``busy_timeout``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occbench.harness.api import DatasetNotFoundError

log = logging.getLogger(__name__)

#: The per-file hash (hashlib name). Changing it changes every fingerprint.
ALGORITHM = "sha256"
#: Bumped when the table layout or the manifest format changes.
SCHEMA = 1
#: A file modified less than this long before it was hashed is not cached (see module docs).
RACY_WINDOW_NS = 2_000_000_000
#: Hex characters of a dataset fingerprint (128 bits).
FINGERPRINT_CHARS = 32
_BLOCK = 1 << 20  # read size: large reads, one buffer reused for every file of a call
_SQL_BATCH = 500  # parameters per IN (...) query; SQLite's limit is 999 on old builds


def default_cache_dir() -> Path:
    """``$OCCBENCH_CACHE``, else ``$XDG_CACHE_HOME/occbench``, else ``~/.cache/occbench``."""
    env = os.environ.get("OCCBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "occbench"


def hash_file(path: str | Path, buf: bytearray | None = None) -> str:
    """SHA-256 hex digest of a file's bytes, read unbuffered in 1 MiB blocks into ``buf``."""
    h = hashlib.new(ALGORITHM)
    view = memoryview(buf if buf is not None else bytearray(_BLOCK))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _open(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=10.0)
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, dev INTEGER, algo TEXT, "
            "digest TEXT)"
        )
    except BaseException:
        con.close()
        raise
    return con


class DigestCache:
    """Per-file SHA-256 digests remembered in ``<dir>/digests-v1.sqlite`` (see module docs).

    ``DigestCache(None)`` uses :func:`default_cache_dir`; ``DigestCache(False)`` remembers
    nothing (every call hashes every file). :attr:`hashed` counts files whose bytes were read.
    """

    def __init__(self, directory: str | Path | bool | None = None) -> None:
        if directory is False:
            self.path: Path | None = None
        else:
            d = default_cache_dir() if directory in (None, True) else Path(str(directory))
            self.path = d / f"digests-v{SCHEMA}.sqlite"
        self.hashed = 0
        self.hits = 0
        self._corrupt = False

    # -- sqlite ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return _open(self.path)
        except sqlite3.DatabaseError as exc:
            # "file is not a database", a truncated page ...: move it aside and start afresh
            log.warning("digest cache %s is unreadable (%s); rebuilding it", self.path, exc)
            return self._rebuild()
        except (sqlite3.Error, OSError) as exc:  # read-only home, full disk: work uncached
            log.info("digest cache %s unusable (%s); hashing without it", self.path, exc)
            return None

    def _rebuild(self) -> sqlite3.Connection | None:
        assert self.path is not None
        with contextlib.suppress(OSError):  # kept (one copy) for a post-mortem, never read
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
        try:
            return _open(self.path)
        except (sqlite3.Error, OSError) as exc:
            log.info("digest cache %s cannot be rebuilt (%s); hashing without it", self.path, exc)
            return None

    def _lookup(self, con: sqlite3.Connection | None, keys: Sequence[str]
                ) -> dict[str, tuple[_Stat, str]]:
        out: dict[str, tuple[_Stat, str]] = {}
        if con is None:
            return out
        try:
            for i in range(0, len(keys), _SQL_BATCH):
                chunk = keys[i: i + _SQL_BATCH]
                rows = con.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, ino, dev, digest FROM digests "
                    f"WHERE algo = ? AND path IN ({','.join('?' * len(chunk))})",
                    (ALGORITHM, *chunk),
                )
                for path, size, mt, ct, ino, dev, digest in rows:
                    out[path] = (_Stat(size, mt, ct, ino, dev), str(digest))
        except sqlite3.DatabaseError as exc:  # corrupt pages show up only here: start afresh
            log.warning("digest cache %s is unreadable (%s); rebuilding it", self.path, exc)
            self._corrupt = True
            return {}
        except sqlite3.Error as exc:  # e.g. locked for longer than the timeout: all misses
            log.info("digest cache %s not read (%s)", self.path, exc)
            return {}
        return out

    def _store(self, con: sqlite3.Connection | None,
               rows: Sequence[tuple[str, _Stat, str]]) -> None:
        if con is None or not rows:
            return
        try:
            with con:  # one transaction: other processes see all rows or none
                con.executemany(
                    "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(k, s.size, s.mtime_ns, s.ctime_ns, s.ino, s.dev, ALGORITHM, d)
                     for k, s, d in rows],
                )
        except sqlite3.Error as exc:  # locked for too long, read-only, full: stay uncached
            log.info("digest cache %s not updated (%s)", self.path, exc)

    # -- public ---------------------------------------------------------------------------------
    def digests(self, paths: Sequence[str | Path]) -> list[str]:
        """SHA-256 hex digest of each file, from the cache where its stat is unchanged.

        Raises :class:`DatasetNotFoundError` naming the first file that does not exist.
        """
        keys = [os.path.abspath(p) for p in paths]  # str ops: pathlib costs more than hashing
        buf = bytearray(_BLOCK)
        stats = []
        for p, k in zip(paths, keys, strict=True):
            try:
                stats.append(_Stat.of(os.stat(k)))
            except FileNotFoundError as exc:
                raise DatasetNotFoundError(f"{p} does not exist (it disappeared while the "
                                           "dataset was being fingerprinted?)") from exc
        con = self._connect()
        try:
            known = self._lookup(con, keys)
            out: list[str] = []
            new: list[tuple[str, _Stat, str]] = []
            for k, st in zip(keys, stats, strict=True):
                hit = known.get(k)
                if hit is not None and hit[0] == st:
                    self.hits += 1
                    out.append(hit[1])
                    continue
                d = hash_file(k, buf)
                self.hashed += 1
                out.append(d)
                after = _Stat.of(os.stat(k))
                # remember only files that did not change while being read and are not "racy"
                if after == st and time.time_ns() - st.mtime_ns > RACY_WINDOW_NS:
                    new.append((k, st, d))
            if self._corrupt and con is not None:
                con.close()
                con = self._rebuild()
                self._corrupt = False
            self._store(con, new)
            return out
        finally:
            if con is not None:
                con.close()


def content_fingerprint(files: Iterable[tuple[str, Path]], extra: Any = None,
                        cache: DigestCache | None = None) -> str:
    """Hash of ``extra`` (JSON) and of each file's portable name, size and SHA-256 (32 hex).

    ``files`` are ``(name, path)`` pairs; ``name`` (e.g. ``testing/frames/01/000.jpg``) is what
    goes into the hash, so a copy of the dataset elsewhere gives the same fingerprint. The
    order of ``files`` does not matter (sorted by name); a name given twice is an error.
    """
    pairs = sorted(files, key=lambda x: x[0])
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"content_fingerprint: file name {dup!r} given twice")
    digests = (cache or DigestCache()).digests([p for _, p in pairs])
    h = hashlib.sha256()
    h.update(f"occbench-content-v{SCHEMA}:{ALGORITHM}\n".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode() + b"\n")
    for name, digest in zip(names, digests, strict=True):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def relative_names(paths: Iterable[Path], base: Path) -> list[tuple[str, Path]]:
    """``(posix path relative to base, path)`` pairs; a path outside ``base`` keeps its last
    two components (e.g. a system folder's file), still without any absolute part."""
    # string slicing, not Path.relative_to: ten times faster on Ped2's 4,560 frames
    prefix = os.path.join(str(base), "")
    out = []
    for p in paths:
        s = str(p)
        if s.startswith(prefix):
            name = s[len(prefix):].replace(os.sep, "/")
        else:
            name = "/".join(Path(s).parts[-2:])
        out.append((name, p))
    return out
