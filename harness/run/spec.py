"""Benchmark spec files (TOML) and their expansion into content-addressed jobs.

Example::

    name = "quick"
    seeds = [0, 1, 2]

    [protocols]                 # default protocol per modality (optional)
    video = "video-minmax@2"

    [[methods]]
    name = "ocsvm"
    params = { nu = 0.1 }

    [[datasets]]
    name = "digits"
    classes = "all"             # or ["0", "3"]

    [[datasets]]
    name = "toy-video"
    params = { seed = 0 }
    protocol = "video-minmax@2" # overrides [protocols]
    time_limit_s = 600          # seconds, or "30m", "2h"; overrides the top-level default

A top-level ``time_limit_s`` is the default of every entry; without any, a job may run 2 h
(``occbench.harness.run.limits``); ``0`` means no limit; ``occbench run --time-limit``
overrides all.

A method that does not support a dataset's modality is skipped for it (reported, not an error).
Every name is checked before any job starts.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from occbench.harness import registry
from occbench.harness.api import Dataset, Method
from occbench.harness.scoring.protocols import DEFAULT_PROTOCOL, get_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_SPECS = Path(__file__).parent / "specs"


class SpecError(ValueError):
    """A spec that cannot run; the message names the file and the entry."""


class DataMissingError(SpecError):
    """A dataset of the spec (or a method's auxiliary dataset) has no readable data here: its
    fingerprint, part of every job id, cannot be taken."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Job:
    """One unit of work — a *run*: a method with resolved parameters on one dataset split, one
    seed.

    ``job_id`` is a content hash of everything that determines the raw scores: the method
    (name, resolved parameters, declared version), the dataset (name, parameters, version and
    *content* fingerprint), the normal class, the seed and the flags that change what a method
    computes (``fast``, ``selected_on_test``, auxiliary datasets). A change to any of them is a
    new run. ``protocol`` is *not* part of it: it names the scoring protocol requested for the
    run's headline metrics, which are derived from the stored raw scores and can be recomputed
    under any protocol without retraining. A field added later must be left out of the
    identity while it has its default value, or every stored run would change id.
    """

    method: str
    method_params: dict[str, Any]
    method_version: str
    dataset: str
    dataset_params: dict[str, Any]
    dataset_version: str
    dataset_fingerprint: str
    normal_class: str | None
    protocol: str
    seed: int
    modality: str
    fast: bool = False
    selected_on_test: bool = False
    #: role -> {"dataset", "version", "fingerprint"} of the auxiliary image datasets the method
    #: asked for (Method.auxiliary_datasets); left out of the id when empty, so the ids of
    #: methods without any are what they were before the field existed
    auxiliary: dict[str, dict[str, str]] = field(default_factory=dict)
    time_limit_s: float | None = None  # execution option: not part of the id
    #: the spec says this job is only worth running on a GPU (a 60-epoch video model): never
    #: attempted on a machine without one; an execution option, not part of the id
    requires_gpu: bool = False
    label: str = ""  # display name; not part of the id
    tags: dict[str, Any] = field(default_factory=dict)  # not part of the id (e.g. sweep trial)

    #: Fields that do not change what is computed: execution options, display, scoring.
    NOT_IDENTITY = ("time_limit_s", "label", "tags", "protocol", "requires_gpu")
    #: Versioned so that ids of the old identity scheme (which hashed the protocol and a
    #: stat-based fingerprint) can never collide with new ones.
    ID_SCHEME = "occbench.run-id/2"

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self.NOT_IDENTITY:
            d.pop(k)
        if not d["auxiliary"]:
            d.pop("auxiliary")
        d["id_scheme"] = self.ID_SCHEME
        return d

    @cached_property
    def job_id(self) -> str:
        # cached: the driver asks about ten times per job, and each hash walks the whole
        # identity (asdict + canonical JSON, ~0.1 ms). A Job is never changed after it is made
        # (frozen; its dicts are not mutated), and dataclasses.replace makes a new one.
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["job_id"] = self.job_id
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        d = dict(d)
        d.pop("job_id", None)
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown job fields {extra}")
        return cls(**d)

    @property
    def display(self) -> str:
        cls_ = f"[{self.normal_class}]" if self.normal_class is not None else ""
        return f"{self.label or self.method} × {self.dataset}{cls_} seed {self.seed}"


@dataclass
class Spec:
    name: str
    seeds: list[int]
    methods: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    protocols: dict[str, str]
    path: str = "<memory>"
    fast: bool = False
    time_limit_s: float | None = None  # default of the entries' time_limit_s (seconds)
    #: other specs this one includes (``include = ["a.toml", ...]``, relative to this file):
    #: the spec's jobs are the union of its own and theirs
    includes: list[Spec] = field(default_factory=list)

    def all_datasets(self) -> list[dict[str, Any]]:
        """Dataset entries of this spec and every spec it includes."""
        return [*self.datasets, *(d for inc in self.includes for d in inc.all_datasets())]


def load_spec(path_or_name: str | Path) -> Spec:
    """Read a spec file, or a built-in spec by name (``quick``)."""
    p = Path(path_or_name)
    if not p.exists():
        builtin = BUILTIN_SPECS / f"{path_or_name}.toml"
        if builtin.exists():
            p = builtin
        else:
            names = sorted(x.stem for x in BUILTIN_SPECS.glob("*.toml"))
            raise SpecError(f"spec {str(path_or_name)!r} not found (built-in specs: {names})")
    return _load_spec_file(p, ())


def _load_spec_file(p: Path, parents: tuple[Path, ...]) -> Spec:
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the spec ({exc.strerror})") from exc
    inc = data.get("include") or []
    if not isinstance(inc, list) or not all(isinstance(x, str) for x in inc):
        raise SpecError(f"{p}: `include` must be a list of spec file names")
    includes = []
    for name in inc:
        q = (p.parent / name).resolve()
        if q in parents or q == p.resolve():
            raise SpecError(f"{p}: includes {name} in a cycle")
        if not q.exists():
            raise SpecError(f"{p}: included spec {name} not found (paths are relative to {p})")
        includes.append(_load_spec_file(q, (*parents, p.resolve())))
    sp = spec_from_dict({k: v for k, v in data.items() if k != "include"}, str(p),
                        allow_empty=bool(includes))
    sp.includes = includes
    return sp


def _check_entries(path: str, table: str, entries: list[dict[str, Any]], keys: set[str]) -> None:
    """Each ``[[table]]`` entry has a ``name`` and only the ``keys`` it may have."""
    for i, e in enumerate(entries):
        if "name" not in e:
            raise SpecError(f"{path}: [[{table}]] entry {i + 1} has no `name`")
        bad = set(e) - keys
        if bad:
            raise SpecError(f"{path}: [[{table}]] {e['name']!r}: unknown keys {sorted(bad)}")


def spec_from_dict(data: Mapping[str, Any], path: str = "<memory>",
                   allow_empty: bool = False) -> Spec:
    unknown = set(data) - {"name", "seeds", "methods", "datasets", "protocols", "fast",
                           "time_limit_s"}
    if "include" in data:
        raise SpecError(f"{path}: `include` works in spec files only (load_spec)")
    if unknown:
        raise SpecError(f"{path}: unknown top-level keys {sorted(unknown)}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise SpecError(f"{path}: `seeds` must be a non-empty list of integers")
    methods = data.get("methods") or []
    datasets = data.get("datasets") or []
    if (not methods or not datasets) and not (allow_empty and not methods and not datasets):
        raise SpecError(f"{path}: needs at least one [[methods]] and one [[datasets]] entry")
    _check_entries(path, "methods", methods,
                   {"name", "params", "label", "selected_on_test", "requires_gpu"})
    _check_entries(path, "datasets", datasets,
                   {"name", "params", "classes", "protocol", "time_limit_s"})
    for d in datasets:
        if d.get("time_limit_s") is not None:
            _time_limit(d["time_limit_s"], f"{path}: [[datasets]] {d['name']!r}: time_limit_s")
    default_limit = (None if data.get("time_limit_s") is None
                     else _time_limit(data["time_limit_s"], f"{path}: time_limit_s"))
    protocols = {**DEFAULT_PROTOCOL, **dict(data.get("protocols") or {})}
    return Spec(
        name=str(data.get("name", Path(path).stem)), seeds=list(seeds), methods=list(methods),
        datasets=list(datasets), protocols=protocols, path=path, fast=bool(data.get("fast", False)),
        time_limit_s=default_limit,
    )


def _time_limit(value: Any, where: str) -> float:
    from occbench.harness.run.limits import parse_duration

    try:
        return parse_duration(value, where)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


@dataclass
class Plan:
    jobs: list[Job]
    skipped: list[str]  # human-readable reasons (method/modality mismatches)
    #: (why, how many jobs) of datasets whose data is not here, when expanded with
    #: ``missing_ok`` (their jobs' ids need the data's fingerprint, so they are not listed)
    missing: list[tuple[str, int]] = field(default_factory=list)


def resolve_method(name: str, params: Mapping[str, Any], where: str = "") -> tuple[type[Method],
                                                                                   dict[str, Any]]:
    """Class and fully resolved parameters (defaults filled in); unknown params are an error."""
    try:
        cls = registry.methods.get(name)
    except registry.RegistryError as exc:
        raise SpecError(f"{where}{exc}") from exc
    allowed = cls.param_names()
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise SpecError(f"{where}method {name!r} has no parameters {bad} (it takes {allowed})")
    resolved = {**cls.default_params(), **dict(params)}
    missing = sorted(set(allowed) - set(resolved))
    if missing:
        raise SpecError(f"{where}method {name!r} needs parameters {missing}")
    try:
        cls(**resolved)  # __init__ only stores: cheap, and catches type errors up front
    except TypeError as exc:
        raise SpecError(f"{where}method {name!r}: {exc}") from exc
    except Exception as exc:  # a plugin's own bug: one line naming it, not a traceback
        raise SpecError(f"{where}method {name!r}: __init__ raised {type(exc).__name__}: {exc}; "
                        "fix the plugin (__init__ must only store its parameters) or drop it "
                        "from the spec") from exc
    return cls, resolved


def make_dataset(name: str, params: Mapping[str, Any], data_root: str | Path | None,
                 where: str = "") -> Dataset:
    try:
        cls = registry.datasets.get(name)
    except registry.RegistryError as exc:
        raise SpecError(f"{where}{exc}") from exc
    try:
        return cls(root=data_root, **dict(params))
    except TypeError as exc:
        raise SpecError(f"{where}dataset {name!r}: {exc}") from exc
    except Exception as exc:  # a plugin's own bug: one line naming it, not a traceback
        raise SpecError(f"{where}dataset {name!r}: __init__ raised {type(exc).__name__}: "
                        f"{exc}; fix the plugin or its params") from exc


def spec_job_ids(specs: Sequence[str | Path], data_root: str | Path | None = None) -> set[str]:
    """Ids of the jobs ``specs`` expand to with the current code and data (a store may also
    hold runs of older method versions or dataset fingerprints)."""
    return {j.job_id for s in specs for j in expand(load_spec(s), data_root).jobs}


def auxiliary_of(method: Method, data_root: str | Path | None, where: str = ""
                 ) -> dict[str, dict[str, str]]:
    """Resolve ``method.auxiliary_datasets()``: name, version and fingerprint of each (image
    datasets only, default parameters). A missing or unknown dataset is a :class:`SpecError`."""
    out: dict[str, dict[str, str]] = {}
    try:
        wanted = method.auxiliary_datasets()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}{exc}") from exc
    for role, name in sorted(wanted.items()):
        w = f"{where}auxiliary dataset {role}={name!r}: "
        ds = make_dataset(name, {}, data_root, w)
        if ds.modality != "image":
            raise SpecError(f"{w}{name} is a {ds.modality} dataset; an auxiliary image pool "
                            "must be an image dataset (`occbench list datasets`)")
        try:
            fp = ds.fingerprint()
        except (OSError, ValueError) as exc:
            raise DataMissingError(f"{w}{exc}") from exc
        out[role] = {"dataset": name, "version": str(ds.version), "fingerprint": fp}
    return out


def expand(spec: Spec, data_root: str | Path | None = None, missing_ok: bool = False) -> Plan:
    """All jobs of a spec (and of the specs it includes, each job once). Raises
    :class:`SpecError` before anything runs if any name is bad. ``missing_ok``: a dataset
    whose data is not here is left out and named in ``Plan.missing`` instead (what
    ``refresh --check`` reports) rather than stopping the whole plan."""
    jobs: list[Job] = []
    skipped: list[str] = []
    missing: list[tuple[str, int]] = []
    for inc in spec.includes:
        sub = expand(inc, data_root, missing_ok)
        seen = {j.job_id for j in jobs}
        jobs += [j for j in sub.jobs if j.job_id not in seen]
        skipped += sub.skipped
        missing += sub.missing
    own = _expand_own(spec, data_root, missing_ok)
    seen = {j.job_id for j in jobs}
    jobs += [j for j in own.jobs if j.job_id not in seen]
    return Plan(jobs, skipped + own.skipped, missing + own.missing)


def _expand_own(spec: Spec, data_root: str | Path | None, missing_ok: bool = False) -> Plan:
    jobs: list[Job] = []
    skipped: list[str] = []
    missing: list[tuple[str, int]] = []
    resolved_methods = []
    no_aux: dict[str, list[Any]] = {}  # method -> [why its auxiliary data is missing, jobs]
    for m in spec.methods:
        where = f"{spec.path}: "
        cls, params = resolve_method(m["name"], m.get("params") or {}, where)
        try:
            aux = auxiliary_of(cls(**params), data_root, f"{where}method {m['name']!r}: ")
        except DataMissingError as exc:
            if not missing_ok:
                raise
            no_aux[m["name"]] = [str(exc).removeprefix(where), 0]
            aux = {}  # never used: the method's jobs are counted, not made
        resolved_methods.append((m, cls, params, aux))
    for d in spec.datasets:
        where = f"{spec.path}: dataset {d['name']!r}: "
        ds = make_dataset(d["name"], d.get("params") or {}, data_root, f"{spec.path}: ")
        modality = ds.modality
        proto_id = d.get("protocol") or spec.protocols.get(modality)
        try:
            proto = get_protocol(str(proto_id))
        except ValueError as exc:
            raise SpecError(f"{where}{exc}") from exc
        if proto.modality != modality:
            raise SpecError(f"{where}protocol {proto.id} is for {proto.modality}, not {modality}")
        classes: list[str | None]
        if modality == "image":
            known = ds.classes() or []
            want = d.get("classes", "all")
            if want == "all":
                classes = list(known)
            else:
                want_list = [str(c) for c in (want if isinstance(want, list) else [want])]
                # an index names a class too (fashion-mnist 8 = "bag"), as digits takes 8
                want_list = [known[int(c)] if c not in known and c.isdigit()
                             and int(c) < len(known) else c for c in want_list]
                bad = [c for c in want_list if c not in known]
                if bad:
                    raise SpecError(f"{where}unknown classes {bad} (classes are {known})")
                classes = list(want_list)
        else:
            if d.get("classes") not in (None, "all"):
                raise SpecError(f"{where}video datasets have no classes")
            classes = [None]
        try:
            fingerprint = ds.fingerprint()
        except (OSError, ValueError) as exc:
            if not missing_ok:
                raise SpecError(f"{where}{exc}") from exc
            n = sum(len(classes) * len(spec.seeds) for _, cls, _, _ in resolved_methods
                    if modality in cls.modalities)
            # the dataset is what is missing, whichever spec names it
            missing.append((f"dataset {d['name']!r}: {exc}", n))
            continue
        limit = (spec.time_limit_s if d.get("time_limit_s") is None
                 else _time_limit(d["time_limit_s"], f"{where}time_limit_s"))
        for m, cls, params, aux in resolved_methods:
            if modality not in cls.modalities:
                skipped.append(f"{m['name']} does not support {modality} ({d['name']})")
                continue
            if m["name"] in no_aux:  # counted, not listed: its id needs the missing data
                no_aux[m["name"]][1] += len(classes) * len(spec.seeds)
                continue
            for c in classes:
                for seed in spec.seeds:
                    jobs.append(Job(
                        method=m["name"], method_params=params, method_version=str(cls.version),
                        dataset=d["name"], dataset_params=dict(d.get("params") or {}),
                        dataset_version=str(ds.version), dataset_fingerprint=fingerprint,
                        normal_class=c, protocol=proto.id, seed=int(seed), modality=modality,
                        auxiliary=aux, fast=spec.fast,
                        selected_on_test=bool(m.get("selected_on_test", False)),
                        time_limit_s=limit, label=str(m.get("label", "")),
                        requires_gpu=bool(m.get("requires_gpu", False)),
                    ))
    missing += [(str(why), int(n)) for why, n in no_aux.values()]
    ids = [j.job_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise SpecError(f"{spec.path}: the spec lists the same run twice (a protocol is not "
                        "part of a run: see other protocols with `occbench board --protocol`)")
    return Plan(jobs, skipped, missing)


def gpu_available() -> bool:
    """Whether this machine can run CUDA jobs (imports torch only when asked)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def split_requires_gpu(jobs: Sequence[Job], have_gpu: bool | None = None
                       ) -> tuple[list[Job], list[Job]]:
    """(jobs to run here, jobs that need a GPU this machine lacks)."""
    if not any(j.requires_gpu for j in jobs):
        return list(jobs), []
    have = gpu_available() if have_gpu is None else have_gpu
    if have:
        return list(jobs), []
    return [j for j in jobs if not j.requires_gpu], [j for j in jobs if j.requires_gpu]
