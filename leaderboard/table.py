"""Runs in a store → tidy tables, and the aggregated table of ``occbench board``.

Reads only the run store. ``auc`` is the headline metric: the one-vs-rest AUROC for image jobs
and the micro (pooled) frame AUC for video jobs. For image protocols a seed's score is the mean
over normal classes; the table then gives mean, std, count and a 95 % Student-t interval of that
over seeds (see :mod:`occbench.leaderboard.stats`). Costs: wall time in seconds, GPU-hours =
wall time × GPUs the job declared / 3600, peak memory in MiB, parameter count.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
from occbench.harness.store.runstore import RUN_FILES, BadEntry, RunStore, StoreError
from occbench.leaderboard import _statcheck
from occbench.leaderboard.stats import summarize

RUN_COLUMNS = [
    "job_id", "method", "label", "method_version", "dataset", "normal_class", "protocol", "seed",
    "modality", "selected_on_test", "auc", "auc_macro", "eer", "n_items", "wall_time_s",
    "peak_rss_mb", "peak_gpu_mb", "n_parameters", "device", "git_sha", "gpus", "gpu_hours",
    "method_params", "dataset_params", "dataset_fingerprint", "started_at", "origin",
    "unsealed", "transductive", "unchecked", "over_memory",
]
#: What one entry of the board is measured on: a run is one seed of one class of it.
SLOT = ["label", "dataset", "protocol", "normal_class", "seed", "selected_on_test"]


def declared_gpus(rec: dict[str, Any]) -> float:
    """GPUs a run held (fractional allowed), for GPU-hours = wall time × GPUs.

    In order: what Ray assigned (``provenance.ray_resources.GPU``); 0 for a run on the CPU; the
    GPUs the job declared (``job.resources.gpus``, ``provenance.resources.gpus`` or
    ``provenance.gpus``); 1 for a CUDA run that declared nothing (the serial runner gives it the
    whole device).
    """
    job, prov = rec.get("job") or {}, rec.get("provenance") or {}
    ray_res = prov.get("ray_resources")
    if isinstance(ray_res, dict):
        return _as_float(ray_res.get("GPU"), 0.0)
    device = str(prov.get("device") or "")
    if device.startswith("cpu"):
        return 0.0
    for src in ((job.get("resources") or {}), (prov.get("resources") or {}), prov):
        v = _as_float(src.get("gpus") if isinstance(src, dict) else None, math.nan)
        if not math.isnan(v):
            return v
    return 1.0 if device.startswith("cuda") else 0.0


def _as_float(v: Any, default: float) -> float:
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _disambiguate(df: pd.DataFrame, name: str, params: str, also: str | None = None,
                  within: str | None = None) -> None:
    """Where one ``name`` (a method label, a dataset) covers runs with different parameters
    (or different ``also`` values), append what differs, e.g. ``ocsvm (gamma=0.5)``: runs of
    different configurations must never be averaged as one entry. With ``within`` (the
    dataset, for method labels) only runs sharing that value are compared: a method set up
    differently for another dataset is still the same entry name there."""
    keys = [name] + ([within] if within else [])
    cols = [params] + ([also] if also else [])
    # only names with more than one configuration need a look (found on the distinct
    # combinations: a pass over every name's runs cost 1.5 s at 100,000 runs)
    distinct = df[keys + cols].drop_duplicates().groupby(keys, sort=False).size()
    several = distinct.index[distinct.to_numpy() > 1]
    if len(several) == 0:
        return
    at = df.set_index(keys).index.isin(several)
    for gkey, g in df[at].groupby(keys, sort=False):
        value = gkey[0] if isinstance(gkey, tuple) else gkey
        combos = g[cols].drop_duplicates()
        if len(combos) < 2:
            continue
        parsed = {tuple(r): json.loads(r[0]) for r in combos.itertuples(index=False)}
        pkeys = sorted({k for p in parsed.values() for k in p})
        # a key only some runs have (a parameter added by a later method version, with its
        # default) does not make another configuration: only values that disagree do
        differ = [k for k in pkeys if len({json.dumps(p[k], sort_keys=True)
                                          for p in parsed.values() if k in p}) > 1]
        methods = {c[1] for c in parsed} if also else set()
        if not differ and len(methods) < 2:
            continue
        for combo, p in parsed.items():
            bits = [str(combo[1])] if len(methods) > 1 else []
            bits += [_params_text({k: p.get(k) for k in differ})] if differ else []
            mask = (g[cols] == pd.Series(combo, index=cols)).all(axis=1)
            df.loc[mask[mask].index, name] = f"{value} ({'; '.join(b for b in bits if b)})"


def resolve_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a store's runs into the current ones and those superseded.

    * Entries are told apart by what was run: a label (or dataset name) shared by runs of
      different parameters gets the differing parameters appended, so they never average.
    * A slot (:data:`SLOT`: entry, dataset, protocol, class, seed) holding several runs that
      differ only in method version or dataset fingerprint — a refresh after a new method version
      or changed data leaves the old run in the store — keeps the newest run (``started_at``)
      among those scored on the most test items: a run made on a subset of the test set (a
      missing video) never supersedes one made on the whole set. The others are returned as
      superseded and left out of every table.
    """
    if df.empty:
        return df, df.iloc[0:0]
    df = df.copy()
    _disambiguate(df, "dataset", "dataset_params")
    _disambiguate(df, "label", "method_params", also="method", within="dataset")
    # the order of preference sorted on its keys alone, then marked on the rows where they
    # are (sorting the whole frame, twice, was a fifth of the tables at 100,000 runs)
    df = df.reset_index(drop=True)
    pref = pd.DataFrame({"_n": pd.to_numeric(df["n_items"], errors="coerce").fillna(-1),
                         "started_at": df["started_at"], "job_id": df["job_id"]})
    order = pref.sort_values(["_n", "started_at", "job_id"], kind="stable",
                             na_position="first").index.to_numpy()
    dup = np.empty(len(df), dtype=bool)
    dup[order] = df[SLOT].take(order).duplicated(keep="last").to_numpy()
    if df["job_id"].is_unique:  # (as in a store) the job id alone orders the rows
        by_id = df.sort_values("job_id", kind="stable") \
            if not df["job_id"].is_monotonic_increasing else df
        keep = ~dup[by_id.index.to_numpy()]
        return (by_id[keep].reset_index(drop=True), by_id[~keep].reset_index(drop=True))
    df = df.take(order)
    cur, old = df[~dup[order]], df[dup[order]]
    return (cur.sort_values("job_id", kind="stable").reset_index(drop=True),
            old.sort_values("job_id", kind="stable").reset_index(drop=True))


def _run_row(st: RunStore, rec: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`RUN_COLUMNS` values (but ``gpu_hours``) of one run, from its record with
    metrics (:meth:`RunStore.record`), each of its column's type (:data:`_ROW_TYPES`: text,
    a number or None, a bool), so that a row read afresh and one from the cache are the same
    values. Raises :class:`StoreError` for a record whose seed is not an integer."""
    job, m, prov = rec["job"], rec["metrics"] or {}, rec.get("provenance") or {}
    video = job["modality"] == "video"
    seed = job["seed"]
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise StoreError(f"run {rec['job_id']}: its job's seed {seed!r} is not an integer "
                         "(a hand-made or damaged record; `occbench store verify` lists it)")
    row = {
        "job_id": rec["job_id"], "method": job["method"],
        "label": job.get("label") or job["method"], "method_version": job["method_version"],
        "dataset": job["dataset"], "normal_class": job["normal_class"],
        "protocol": (rec.get("protocol") or {}).get("id") or job["protocol"],
        "seed": seed, "modality": job["modality"],
        "selected_on_test": bool(job.get("selected_on_test", False)),
        "auc": m.get("auc_micro") if video else m.get("auc"),
        "auc_macro": m.get("auc_macro") if video else None,
        "eer": m.get("eer"), "n_items": m.get("n_items"),
        "wall_time_s": prov.get("wall_time_s"), "peak_rss_mb": prov.get("peak_rss_mb"),
        "peak_gpu_mb": prov.get("peak_gpu_mb"), "n_parameters": prov.get("n_parameters"),
        "device": prov.get("device"), "git_sha": prov.get("git_sha"),
        "gpus": declared_gpus(dict(rec)),
        "method_params": json.dumps(job.get("method_params") or {}, sort_keys=True),
        "dataset_params": json.dumps(job.get("dataset_params") or {}, sort_keys=True),
        "dataset_fingerprint": job.get("dataset_fingerprint"),
        "started_at": prov.get("started_at"),
        "origin": st.origin(rec["job_id"]),
        # the method ran outside the sandbox (records from before sealing say nothing)
        "unsealed": not prov.get("sealed", False),
        # its scores changed when the rest of the test set did (execute.run_method's check)
        "transductive": prov.get("test_independent") is False,
        # no answer to that check: made before runs recorded it, or it could not run (a test
        # set of one video): whether the method is transductive is not known
        "unchecked": prov.get("test_independent") is None,
        # peak memory above what the method declared (provenance.warnings, the runners)
        "over_memory": any("memory" in str(w) for w in (prov.get("warnings") or [])),
    }
    for c in _TEXT_COLUMNS:
        row[c] = _text(row[c])
    for c in _REAL_COLUMNS:
        row[c] = _real(row[c])
    row["n_items"] = _count(row["n_items"])
    return row


def _text(v: Any) -> str | None:
    """A text column's value: text as it is, None, or anything else as JSON."""
    return v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _real(v: Any) -> float | None:
    """A number column's value, as ``pd.to_numeric(errors="coerce")`` reads it (text that is
    a number is one; anything else that is not a number is None)."""
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _count(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


#: The columns a row cache holds (every run column but the derived ``gpu_hours``).
_ROW_COLUMNS = [c for c in RUN_COLUMNS if c != "gpu_hours"]
_REAL_COLUMNS = ("auc", "auc_macro", "eer", "wall_time_s", "peak_rss_mb", "peak_gpu_mb",
                 "n_parameters", "gpus")
_BOOL_COLUMNS = ("selected_on_test", "unsealed", "transductive", "unchecked", "over_memory")
_TEXT_COLUMNS = tuple(c for c in _ROW_COLUMNS
                      if c not in (*_REAL_COLUMNS, *_BOOL_COLUMNS, "seed", "n_items"))
#: The Arrow type of each row column: every row (read afresh or from the cache) goes through
#: one table of these types into the runs frame, so the frame is the same either way.
_ROW_TYPES: dict[str, pa.DataType] = {
    **{c: pa.string() for c in _TEXT_COLUMNS}, **{c: pa.float64() for c in _REAL_COLUMNS},
    **{c: pa.bool_() for c in _BOOL_COLUMNS}, "seed": pa.int64(), "n_items": pa.int64()}
#: A row table: the row columns and each run's stat key (``_key``).
_ROWS_SCHEMA = pa.schema([*((c, _ROW_TYPES[c]) for c in _ROW_COLUMNS), ("_key", pa.string())])
#: Version of the row cache's layout (a cache of another version is not read).
ROWS_CACHE_SCHEMA = "occbench.runs-cache/2"


def _cache_common(st: RunStore) -> str:
    """What every cached row also depends on: this code, the store's formats and view, and
    every protocol's digest (stored metrics of a changed protocol are stale: recomputed)."""
    from occbench.harness.scoring.protocols import protocols
    from occbench.harness.store import runstore

    h = hashlib.sha256()
    for f in (Path(__file__), Path(runstore.__file__)):
        h.update(f.read_bytes())
    return json.dumps([ROWS_CACHE_SCHEMA, h.hexdigest(), str(st.path.resolve()),
                       st.protocol, sorted((p.id, p.digest) for p in protocols())],
                      default=str)


#: Cached rows checked in helper processes too when there are at least this many (a helper
#: costs about 20 ms to start; checking a run's five files about 10 µs).
PARALLEL_CHECK_MIN = 20_000


def _run_checks(header: list[str], lines: list[str]) -> bytes:
    """:func:`occbench.leaderboard._statcheck.check` of ``lines``; many are shared with
    helper processes on the other cores (threads only contend for the GIL)."""
    n = min(len(os.sched_getaffinity(0)), 4, len(lines) // (PARALLEL_CHECK_MIN // 2) or 1)
    if n < 2 or any(("\t" in h or "\n" in h) for h in header):
        return _statcheck.check(header, lines)
    import subprocess
    import sys

    # this process takes a smaller share: it also sends the others theirs and reads them
    size = math.ceil(len(lines) / (n - 0.3))
    shares = [lines[i:i + size] for i in range(0, len(lines), size)]
    mine, others = shares[-1], shares[:-1]
    procs: list[subprocess.Popen[bytes] | None] = []
    head = "\t".join(header) + "\n"
    for share in others:
        try:
            pr = subprocess.Popen([sys.executable, "-I", "-S", _statcheck.__file__],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        except OSError:  # no helper here: this process checks that share too
            procs.append(None)
            continue
        assert pr.stdin is not None
        try:
            pr.stdin.write(os.fsencode(head + "\n".join(share)))
            pr.stdin.close()
        except OSError:  # the helper died at once (no such file, ...): read below, failed
            pass
        procs.append(pr)
    local = _statcheck.check(header, mine)
    out = []
    for helper, share in zip(procs, others, strict=True):
        got = b""
        if helper is not None:
            assert helper.stdout is not None
            got = helper.stdout.read()
            helper.stdout.close()
            if helper.wait() != 0:
                got = b""
        # a helper that failed (a file it may not stat): this process checks its share, and
        # raises what that raises
        out.append(got if len(got) == len(share) else _statcheck.check(header, share))
    return b"".join(out) + local


class _Keys:
    """The stat key of a run: its own files, its metrics under the shown protocol, its labels
    and its origin mark (a changed key means the row is read again, and verified)."""

    # plain string paths: pathlib's joins were most of a cached row's cost
    def __init__(self, st: RunStore) -> None:
        self.st = st
        self.labels: dict[str, str] = {}
        self.metrics_dirs: dict[str, str | None] = {}
        od = st.origins_dir
        self.origins = set(os.listdir(od)) if od.is_dir() else set()
        self.runs, self.od, self.ld = str(st.runs_dir), str(od), str(st.labels_dir)
        self.names = ("record.json", *RUN_FILES)

    def metrics_dir(self, protocol: str) -> str | None:
        """The folder of the metrics files under ``protocol`` (None: not a protocol id)."""
        md = self.metrics_dirs.get(protocol, "")
        if md == "":
            try:  # the protocol id checked once (it becomes a folder name)
                md = self.metrics_dirs[protocol] = str(self.st.metrics_path("0" * 20,
                                                                            protocol).parent)
            except ValueError:
                md = self.metrics_dirs[protocol] = None
        return md

    def derived(self, jid: str, protocol: str, digest: str) -> str:
        if digest not in self.labels:
            self.labels[digest] = _statcheck.stat_text(f"{self.ld}/{digest}.parquet")
        return _statcheck.derived_text(jid, self.metrics_dir(protocol), self.labels[digest],
                                       self.od, f"{jid}.json" in self.origins)


class _RowsCache:
    """A row cache file as written by :func:`_write_rows_cache`: its table (``_ROWS_SCHEMA``),
    and as lists its job ids (``pos``: job id -> row), keys and protocols."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.ids: list[str] = table.column("job_id").to_pylist()
        self.keys: list[str] = table.column("_key").to_pylist()
        self.protocols: list[str] = table.column("protocol").to_pylist()
        self.pos = {j: i for i, j in enumerate(self.ids)}


_CACHE_META = b"occbench"


def _read_rows_cache(path: Path, common: str) -> _RowsCache | None:
    """The cache file at ``path`` if it was written by :func:`_write_rows_cache` for the same
    ``common``; None when there is none or it is of another store, code or protocol set, or
    unreadable (the store is then read in full)."""
    try:
        with pa.OSFile(str(path)) as f:  # read whole: not mapped (a file replaced under a
            table = pa.ipc.open_file(f).read_all()  # mapping must not fault the reader)
        meta = json.loads((table.schema.metadata or {}).get(_CACHE_META, b"{}"))
        if (meta.get("schema") != ROWS_CACHE_SCHEMA or meta.get("common") != common
                or not table.schema.remove_metadata().equals(_ROWS_SCHEMA)
                or any(table.column(c).null_count for c in ("job_id", "_key", "protocol"))):
            return None
        cache = _RowsCache(table)
        return cache if len(cache.pos) == len(cache.ids) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException):
        return None


def _write_rows_cache(path: Path, common: str, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {_CACHE_META: json.dumps({"schema": ROWS_CACHE_SCHEMA, "common": common}).encode()}
    table = table.replace_schema_metadata(meta)
    with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)


def _rows_table(rows: list[list[Any]], keys: list[str]) -> pa.Table:
    """Rows read afresh (values in :data:`_ROW_COLUMNS` order, as :func:`_run_row` made
    them) and their stat keys as a table of :data:`_ROWS_SCHEMA`."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(_ROW_COLUMNS)
    arrays = [pa.array(list(v), type=_ROW_TYPES[c])
              for c, v in zip(_ROW_COLUMNS, cols, strict=True)]
    return pa.Table.from_arrays([*arrays, pa.array(keys, type=pa.string())],
                                schema=_ROWS_SCHEMA)


#: Runs read in parallel processes when at least this many are missing from the row cache
#: (a process costs about a second to start; reading and verifying a run a few ms).
PARALLEL_READ_MIN = 2000

_Read = tuple[str, str | None, str, list[Any] | None, Any]  # jid, error, key, row, verified


def _read_one(st: RunStore, keys: _Keys, jid: str) -> _Read:
    """Read and verify one run: (job id, why it is bad or None, key, row values, the stat
    key it verified with)."""
    why = st.check_run(jid)  # verifies the record, checksums and labels
    if why is not None:
        return jid, why, "", None, None
    try:
        # the run files' part of the key is the stat check_run took before reading them (a
        # change since reads them again), in _statcheck.stat_text's form
        files = "|".join(f"{s}.{m}.{i}" for s, m, i in st._verified[jid])
        rec = st.run_record(jid)
        pid = st.view_protocol(rec)
        digest = str(rec.get("labels"))
        key = f"{files}|{keys.derived(jid, pid, digest)}#{digest}"
        st.with_metrics(jid, rec, pid)  # st.record(jid), without reading the record again
        row = _run_row(st, rec)
    except StoreError as exc:
        return jid, str(exc), "", None, None
    return jid, None, key, [row[c] for c in _ROW_COLUMNS], st._verified.get(jid)


def _read_batch(path: str, protocol: Any, jids: list[str]) -> list[_Read]:
    """:func:`_read_one` of each of ``jids`` in a build process (its own store object)."""
    st = RunStore(path, protocol=protocol, on_bad=lambda bad: None)
    keys = _Keys(st)
    return [_read_one(st, keys, j) for j in jids]


def _read_all(st: RunStore, keys: _Keys, jids: list[str]) -> list[_Read]:
    """:func:`_read_one` of each run, in processes on every core for a cold read of many."""
    n = min(len(os.sched_getaffinity(0)), len(jids))
    if len(jids) < PARALLEL_READ_MIN or n < 2:
        return [_read_one(st, keys, j) for j in jids]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = min(500, math.ceil(len(jids) / n))  # balanced, and few round trips
    batches = [jids[i:i + size] for i in range(0, len(jids), size)]
    # spawn, not fork: the parent may hold pyarrow and BLAS thread pools mid-use
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as ex:
        out = [r for b in ex.map(_read_batch, [str(st.path)] * len(batches),
                                 [st.protocol] * len(batches), batches) for r in b]
    for jid, _, _, _, verified in out:  # readers of this store need not verify them again
        if verified is not None:
            st._verified[jid] = verified
    return out


def _check_cached(keys: _Keys, cache: _RowsCache, names: list[str]) -> list[int | None]:
    """For each of ``names``: its row in ``cache`` when its stat key (:class:`_Keys`) is
    still the cached one, else None (:mod:`._statcheck` checks, on every core)."""
    pos, ckeys, cproto, origins = cache.pos, cache.keys, cache.protocols, keys.origins
    cand: list[tuple[str, int]] = []
    lines: list[str] = []
    for jid in names:
        i = pos.get(jid)
        if i is None:
            continue
        line = (f"{jid}\t{keys.metrics_dir(cproto[i]) or ''}\t"
                f"{1 if f'{jid}.json' in origins else 0}\t{ckeys[i]}")
        if line.count("\t") == 3 and "\n" not in line:  # (else it is read afresh)
            cand.append((jid, i))
            lines.append(line)
    header = [keys.runs, keys.ld, keys.od, *keys.names]
    found = {jid: i for (jid, i), b in zip(cand, _run_checks(header, lines), strict=True)
             if b == 49}  # b"1"
    return [found.get(j) for j in names]


def _rows(st: RunStore, cache_in: Path | None, cache_out: Path | None,
          keys_out: dict[str, str] | None = None) -> pa.Table:
    """Every good run's row, as a table of :data:`_ROWS_SCHEMA` sorted by job id; rows of
    runs whose files are unchanged since the cache was written are taken from it, unread (see
    :func:`runs_frame`)."""
    common = _cache_common(st) if (cache_in or cache_out) else ""
    cache = _read_rows_cache(cache_in, common) if cache_in else None
    keys = _Keys(st)
    names = sorted(n for n in os.listdir(st.runs_dir) if not n.startswith(".")) \
        if st.runs_dir.is_dir() else []
    # each run's row: its position in the cache (>= 0) or, read afresh, -1 - its position in
    # ``fresh``; a run with a bad entry has none
    where: dict[str, int] = {}
    fresh_keys: list[str] = []
    fresh: list[list[Any]] = []
    misses: list[str] = []
    if cache is not None:
        for jid, i in zip(names, _check_cached(keys, cache, names), strict=True):
            if i is None:
                misses.append(jid)
            else:
                where[jid] = i
    else:
        misses = names
    for jid, why, key, got, _ in _read_all(st, keys, misses):
        if why is not None or got is None:
            st._report(BadEntry(st.runs_dir / jid, str(why), "run"))
        else:
            where[jid] = -1 - len(fresh)
            fresh_keys.append(key)
            fresh.append(got)
    ids = [j for j in names if j in where]
    idx = [where[j] for j in ids]
    if cache is not None and not fresh and idx == list(range(len(cache.ids))):
        # nothing changed since the cache was written: its table as it is
        table = cache.table.replace_schema_metadata(None)
        if cache_out is not None and cache_in is not None:
            shutil.copyfile(cache_in, cache_out)  # the same content: not encoded again
    else:
        # the cached rows, then the fresh ones: row i of the cache is i, fresh row j is n + j
        n = len(cache.ids) if cache is not None else 0
        parts = [cache.table.replace_schema_metadata(None)] if cache is not None else []
        table = pa.concat_tables([*parts, _rows_table(fresh, fresh_keys)])
        take = np.fromiter((i if i >= 0 else n - 1 - i for i in idx), np.int64, len(idx))
        if not (len(take) == table.num_rows and (take == np.arange(len(take))).all()):
            table = table.take(pa.array(take))
        table = table.combine_chunks()
        if cache_out is not None:
            _write_rows_cache(cache_out, common, table)
    if keys_out is not None:
        keys_out.update(zip(ids, table.column("_key").to_pylist(), strict=True))
    return table


def _frame(table: pa.Table) -> pd.DataFrame:
    """The row table as a frame (:data:`_ROW_COLUMNS`). A column with no value at all is
    None values of dtype object, as a frame built from lists makes it."""
    n = table.num_rows
    if n == 0:
        return pd.DataFrame({c: [] for c in _ROW_COLUMNS}, columns=_ROW_COLUMNS)
    empty = [c for c in _ROW_COLUMNS if table.column(c).null_count == n]
    df = table.select([c for c in _ROW_COLUMNS if c not in empty]).to_pandas()
    for c in empty:
        df[c] = pd.Series([None] * n, dtype=object, index=df.index)
    return df[_ROW_COLUMNS]


def runs_frame(store: RunStore | str | Path, include_superseded: bool = False,
               cache_in: Path | None = None, cache_out: Path | None = None,
               keys_out: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per successful run (columns ``RUN_COLUMNS``), superseded runs left out (see
    :func:`resolve_runs`; ``include_superseded=True`` keeps them, flagged in ``superseded``).
    The number left out is in ``df.attrs["superseded"]``.

    ``cache_in``/``cache_out``: a row cache (an Arrow IPC file, written by the board into its
    own output folder). A run whose record, raw scores, log, metrics file, labels file and
    origin mark have the size, modification time and inode they had when the cache was
    written is not read again, nor verified again (it verified when it was read); any other
    run is read and verified as without a cache. A cache of another store, occbench version
    or protocol set is ignored. The frame is the same with or without a cache (both go
    through one Arrow table of fixed column types). ``keys_out``: filled with each
    run's key (job id -> text that changes when any of those files does).
    """
    st = store if isinstance(store, RunStore) else RunStore(store)
    df = _frame(_rows(st, cache_in, cache_out, keys_out))
    df["gpu_hours"] = np.nan
    df = df[RUN_COLUMNS]
    for c in ("auc", "auc_macro", "eer", "wall_time_s", "peak_rss_mb", "peak_gpu_mb",
              "n_parameters", "gpus"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["gpu_hours"] = df["wall_time_s"] * df["gpus"] / 3600.0
    df["normal_class"] = df["normal_class"].astype(object)
    df["selected_on_test"] = df["selected_on_test"].astype(bool)  # also when there are no runs
    df["unsealed"] = df["unsealed"].astype(bool)
    df["over_memory"] = df["over_memory"].astype(bool)
    df["transductive"] = df["transductive"].astype(bool)
    df["unchecked"] = df["unchecked"].astype(bool)
    cur, old = resolve_runs(df)
    if include_superseded:
        out = pd.concat([cur.assign(superseded=False), old.assign(superseded=True)])
        out = out.sort_values("job_id", kind="stable").reset_index(drop=True)
    else:
        out = cur
    out.attrs["superseded"] = len(old)
    return out


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, dataset, protocol, seed): image class means, video metrics.

    Costs are summed over the classes of the seed (wall time, GPU-hours) or maxed (memory,
    parameters), so a seed's cost is what one full run of the protocol costs.

    Image entries: a seed counts only if it covers every normal class the entry has been run
    on (a mean over 8 classes is not comparable with one over 10); the seeds left out, still
    running or partly failed, are counted in ``out.attrs["incomplete_seeds"]``.
    """
    keys = ["label", "method", "dataset", "protocol", "seed", "selected_on_test"]
    g = df.groupby(keys, dropna=False, sort=True)
    out = g.agg(auc=("auc", "mean"), auc_macro=("auc_macro", "mean"), eer=("eer", "mean"),
                n_classes=("normal_class", "nunique"), wall_time_s=("wall_time_s", "sum"),
                gpu_hours=("gpu_hours", "sum"), peak_rss_mb=("peak_rss_mb", "max"),
                peak_gpu_mb=("peak_gpu_mb", "max"), n_parameters=("n_parameters", "max"),
                modality=("modality", "first")).reset_index()
    entry = ["label", "method", "dataset", "protocol", "selected_on_test"]
    if len(df):
        classes = df.groupby(entry, dropna=False)["normal_class"].nunique().rename("_all")
        out = out.merge(classes.reset_index(), on=entry, how="left")
        complete = out["n_classes"] >= out["_all"]
        n_incomplete = int((~complete).sum())
        out = out[complete].drop(columns="_all").reset_index(drop=True)
    else:
        n_incomplete = 0
    out.attrs["incomplete_seeds"] = n_incomplete
    return out


AGG_COLUMNS = [
    "method", "dataset", "protocol", "selected_on_test", "modality", "seeds", "classes",
    "auc_mean", "auc_std", "auc_lo", "auc_hi", "auc_macro_mean", "auc_macro_std", "auc_macro_lo",
    "auc_macro_hi", "eer_mean", "eer_std", "eer_lo", "eer_hi", "wall_time_s", "gpu_hours",
    "peak_rss_mb", "peak_gpu_mb", "n_parameters", "origin", "unsealed", "transductive",
    "unchecked", "over_memory",
]


def aggregate(df: pd.DataFrame, level: float = 0.95,
              seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, std, seeds and a ``level`` t interval over seeds per (method label, dataset, protocol).

    Seeds :func:`per_seed` leaves out are counted in ``out.attrs["incomplete_seeds"]``.

    ``wall_time_s``/``gpu_hours`` are the mean per seed (one full protocol run); memory and
    parameter count the maximum over runs. Sorted by dataset, protocol, then AUC (best first).
    ``seeds``: ``per_seed(df)`` when the caller has it.
    """
    if df.empty:
        return pd.DataFrame(columns=AGG_COLUMNS)
    ps = per_seed(df) if seeds is None else seeds
    keys = ["label", "dataset", "protocol", "selected_on_test"]
    out = ps.groupby(keys, dropna=False, sort=True).agg(
        modality=("modality", "first"), seeds=("seed", "nunique"), classes=("n_classes", "max"),
        wall_time_s=("wall_time_s", "mean"), gpu_hours=("gpu_hours", "mean"),
        peak_rss_mb=("peak_rss_mb", "max"), peak_gpu_mb=("peak_gpu_mb", "max"),
        n_parameters=("n_parameters", "max"),
    ).reset_index()
    for v in ("auc", "auc_macro", "eer"):
        s = summarize(ps, keys, v, level).drop(columns=[f"{v}_n"])
        out = out.merge(s, on=keys, how="left")
    # verified (made by CI or a maintainer from the plugin's code) or self-reported (merged)
    src = df if "origin" in df else df.assign(origin="verified")
    # an entry's origin is that of all its runs, or "mixed" (counted for all entries at once)
    g = src["origin"].fillna("verified").groupby([src[k] for k in keys], dropna=False)
    org = g.first().where(g.nunique() == 1, "mixed").rename("origin")
    out = out.merge(org.reset_index(), on=keys, how="left")
    # an entry is unsealed / transductive when any of its runs is
    for flag in ("unsealed", "transductive", "unchecked", "over_memory"):
        col = df[flag] if flag in df.columns else pd.Series(False, index=df.index)
        f = df.assign(_f=col.astype(bool)).groupby(keys, dropna=False)["_f"].any()
        out = out.merge(f.rename(flag).reset_index(), on=keys, how="left")
        out[flag] = out[flag].fillna(False).astype(bool)
    out = out.rename(columns={"label": "method"})[AGG_COLUMNS]
    out = out.sort_values(["dataset", "protocol", "auc_mean", "method"],
                          ascending=[True, True, False, True]).reset_index(drop=True)
    out.attrs["incomplete_seeds"] = ps.attrs.get("incomplete_seeds", 0)
    return out


def per_class(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Image protocols: per (method label, dataset, protocol, class) AUC over seeds with interval.

    Columns: ``method, dataset, protocol, selected_on_test, normal_class, auc_mean, auc_std,
    auc_n, auc_lo, auc_hi``. Video runs (no class) are left out.
    """
    keys = ["label", "dataset", "protocol", "selected_on_test", "normal_class"]
    img = df[(df["modality"] == "image") & df["normal_class"].notna()]
    out = summarize(img, keys, "auc", level).rename(columns={"label": "method"})
    return out.sort_values(["dataset", "protocol", "method", "normal_class"],
                           key=_natural_key).reset_index(drop=True)


def _natural_key(col: pd.Series) -> pd.Series:
    """Sort class names '2' before '10' (numeric when every value is an integer string)."""
    if col.name == "normal_class":
        as_num = pd.to_numeric(col, errors="coerce")
        if as_num.notna().all():
            return as_num
    return col


def _pm(mean: float, std: float, scale: float = 100.0) -> str:
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def display_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings (percent) for Markdown/terminal output."""
    return pd.DataFrame({
        "dataset": agg["dataset"], "method": agg["method"]
        + np.where(agg["selected_on_test"], " [selected on test]", "")
        + np.where(agg.get("unsealed", False), " [unsealed]", "")
        + np.where(agg.get("transductive", False), " [transductive]", "")
        # (an entry already known to be transductive needs no "not known")
        + np.where(np.asarray(agg.get("unchecked", False), bool)
                   & ~np.asarray(agg.get("transductive", False), bool), " [unchecked]", "")
        + np.where(agg.get("over_memory", False), " [memory > declared]", ""),
        "protocol": agg["protocol"], "seeds": agg["seeds"],
        "AUC %": [_pm(m, s) for m, s in zip(agg["auc_mean"], agg["auc_std"], strict=True)],
        "AUC (macro) %": [_pm(m, s) for m, s in zip(agg["auc_macro_mean"], agg["auc_macro_std"],
                                                     strict=True)],
        "EER %": [_pm(m, s) for m, s in zip(agg["eer_mean"], agg["eer_std"], strict=True)],
        "AUC 95% CI": [_ci(lo, hi) for lo, hi in zip(agg["auc_lo"], agg["auc_hi"], strict=True)],
        "wall s": agg["wall_time_s"].round(1),
        "runs": agg.get("origin", "verified"),
    })


#: What each mark in the display table's method column means (the order it is listed in).
TAG_MEANINGS = {
    "[selected on test]": "its configuration was chosen on test labels",
    "[unsealed]": "some runs ran outside the sandbox (the method could have read the labels)",
    "[transductive]": "an item's score changed when the rest of the test set changed",
    "[unchecked]": "some runs were made before runs were checked for transductive scoring: "
                   "whether an item's score depends on the rest of the test set is not known",
    "[memory > declared]": "peak memory above what the method declares",
}

#: The caption of the display table (terminal and Markdown).
CAPTION = ("mean ± std over seeds; AUC: micro frame AUC for video, class-mean AUROC for images "
           "(one vs rest)")


def tag_legend(display: pd.DataFrame) -> list[str]:
    """One line per mark of :data:`TAG_MEANINGS` that appears in ``display``'s method column
    (a :func:`display_table`), saying what it means; none for a table without marks."""
    methods = " ".join(str(m) for m in display.get("method", []))
    return [f"{tag}: {why}" for tag, why in TAG_MEANINGS.items() if tag in methods]


def _ci(lo: float, hi: float, scale: float = 100.0) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return "—"
    return f"[{lo * scale:.2f}, {hi * scale:.2f}]"


def write_board(store: RunStore | str | Path, out: str | Path,
                agg: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``leaderboard.csv`` (numbers) and ``leaderboard.md`` (mean ± std, CI) into ``out``.

    ``agg``: the store's :func:`aggregate` when the caller has it (the store is not read again).

    The other tables (per class, comparisons, ranks, published vs reproduced) are written by
    :func:`occbench.leaderboard.analysis.write_tables`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(runs_frame(store)) if agg is None else agg
    csv, md = out / "leaderboard.csv", out / "leaderboard.md"
    agg.to_csv(csv, index=False)
    md.write_text(
        "# occbench leaderboard\n\nMean ± std over seeds and a 95 % t interval of the mean; "
        "AUC = frame-level micro AUC for video, class-mean AUROC for images (one vs rest).\n\n"
        + markdown(display_table(agg)) + "\n"
        if not agg.empty else "# occbench leaderboard\n\nNo runs yet.\n"
    )
    return agg, [csv, md]


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (pipes in cells escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
