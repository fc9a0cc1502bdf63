"""Sealed method execution: a method's ``fit``/``score`` in a bubblewrap sandbox.

The worker (trusted harness code) loads the job's unlabelled training and test arrays, hands them
to a *sealed process* and gets raw scores back. The sealed process is ``bwrap`` (Debian's
``bubblewrap``) around the same Python, started once per worker process and device and reused by
the worker's later jobs (so the interpreter, numpy and torch are imported once, not per job).

What the sandbox contains (all read-only unless said otherwise)
    * ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links or folders), with
      ``/usr/share/datasets`` replaced by an empty ``tmpfs``; ``/etc/ld.so.cache``,
      ``/etc/ld.so.conf*`` and ``/etc/alternatives`` for the dynamic linker;
    * the Python prefix(es): ``sys.base_prefix``, ``sys.prefix`` (a virtual environment), so the
      interpreter and every installed package (including the method's entry-point package);
    * the source folders of ``occbench``'s own packages (editable installs) and of the method's
      top-level module or package when it lives outside the prefix (an editable plugin, a module
      named in ``$OCCBENCH_PLUGIN_MODULES``), plus the worker's other ``sys.path`` folders, never
      the current directory, ``/``, ``$HOME`` itself, nor a folder that holds the data root, the
      frame cache, the label cache, ``/usr/share/datasets`` or the user's occbench config;
    * ``/job``: the hand-over folder of this worker (the job's arrays as ``.npy`` files: hard
      links to the frame cache's files when they are whole memmaps on the same file system,
      written copies otherwise); the method loads them with ``np.load(mmap_mode="r")``;
    * ``/tmp`` (the work folder ``Context.workdir`` lives below it) and ``$HOME=/tmp/home``:
      private, writable ``tmpfs``, gone with the process;
    * a fresh ``/proc`` (own PID namespace: the driver and the worker are not visible) and a
      minimal ``/dev``; for GPU jobs also ``--dev-bind`` of ``/dev/nvidia*`` (and
      ``/dev/nvidia-caps`` on MIG) and ``/sys`` read-only.

What it does not contain
    The data root, the frame cache's other files, label files, ``/usr/share/datasets``, the
    store, the user's home and config, the driver's or worker's process (own PID namespace) and
    any network (own network namespace, only an unconfigured loopback). ``--unshare-all
    --die-with-parent --new-session --cap-drop ALL`` (``--new-session`` against ``TIOCSTI``
    terminal injection); the environment is cleared and rebuilt from a short allow-list; no
    socket is bound in. bwrap reads its arguments from a pipe (``--args``), so the sandbox's
    ``/proc/1/cmdline`` names no host path.

The channel back
    Requests and replies are single JSON lines on the sealed process's stdin/stdout (the
    method's own prints go to stderr). Replies are parsed as JSON, never unpickled: the worker
    does not run code the sealed process sends. Scores come back as base64 ``float64`` arrays
    and are checked again against the test split's shape.

Availability
    :func:`probe` runs ``bwrap --unshare-all ... true`` once per process and caches the result.
    ``sealed="auto"`` (the default) seals wherever the probe succeeds and otherwise runs unsealed
    with a one-line warning saying how to get the sandbox; ``"require"`` fails closed;
    ``"off"`` runs the method in the worker itself (as before sealing existed). See
    ``docs/plugins.md`` (trust model) for Ubuntu 24.04's AppArmor restriction and Docker's
    seccomp profile.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("occbench.sandbox")

SEAL_MODES = ("auto", "require", "off")
#: An unpacked bubblewrap (e.g. ``dpkg -x bubblewrap_*.deb``) when it is not on ``$PATH``.
BWRAP_ENV = "OCCBENCH_BWRAP"
_REPLY_LIMIT = 1 << 30  # bytes of one reply line (scores of ~90M frames): bounds worker memory
_GET_IT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; or unpack its .deb "
           f"and set ${BWRAP_ENV}); see docs/plugins.md")


class SandboxUnavailable(RuntimeError):
    """The sandbox was required (``--sealed``, ``--require-sealed``) but cannot be had here."""


class SandboxError(RuntimeError):
    """The sealed process failed (could not start, died, or broke the reply protocol)."""


class SealedProcessDied(SandboxError):
    """The sealed process exited during a job (killed, out of memory, ``os._exit``).

    ``how``: "killed by SIGKILL", "exited with status 3"; ``by_signal``: it was killed by a
    signal (the kernel's OOM killer, ``kill``), which a retry may survive, rather than exiting
    by its own hand. bwrap reports a child killed by signal N as exit status 128 + N, so a
    method calling ``os._exit(137)`` is taken for a SIGKILL too."""

    def __init__(self, message: str, how: str = "", by_signal: bool = False) -> None:
        super().__init__(message)
        self.how = how
        self.by_signal = by_signal


def _death(rc: int | None) -> tuple[str, bool]:
    """How a sealed process ended, from bwrap's status: (words, by a signal). In the words of
    a worker's death (``runner._signal_name``): bwrap's 128 + N is signal N."""
    from occbench.harness.run.runner import _signal_name

    if rc is None:
        return "gone", False
    code = -(rc - 128) if rc > 128 else rc
    return _signal_name(code), code < 0


@dataclass(frozen=True)
class Probe:
    """Result of :func:`probe`: ``ok``; ``by`` names the mechanism; ``why`` says why not."""

    ok: bool
    by: str | None = None
    why: str = ""
    bwrap: str | None = None


_probe_cache: dict[str, Probe] = {}


def normalise_mode(sealed: str | bool | None) -> str:
    """``True``/``False``/``None`` or a mode name → one of :data:`SEAL_MODES`."""
    if sealed is True:
        return "require"
    if sealed is False:
        return "off"
    if sealed is None:
        return "auto"
    if sealed not in SEAL_MODES:
        raise ValueError(f"sealed must be one of {SEAL_MODES}, got {sealed!r}")
    return sealed


def probe(refresh: bool = False) -> Probe:
    """Can this process start the sandbox? Runs bwrap once per process and caches the answer."""
    if not refresh and "p" in _probe_cache:
        return _probe_cache["p"]
    p = _probe()
    _probe_cache["p"] = p
    return p


def _probe() -> Probe:
    if not sys.platform.startswith("linux"):
        return Probe(False, why=f"sealing needs Linux namespaces (bubblewrap); this is "
                                f"{sys.platform}: runs are unsealed here")
    exe = os.environ.get(BWRAP_ENV) or shutil.which("bwrap")
    if not exe or not os.access(exe, os.X_OK):
        return Probe(False, why=f"bubblewrap (bwrap) not found: {_GET_IT}")
    try:
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10,
                             env=_host_env()).stdout.strip() or "bubblewrap"
        r = subprocess.run([exe, *_base_args(), "true"], capture_output=True, text=True,
                           timeout=30, env=_host_env())
    except (OSError, subprocess.SubprocessError) as exc:
        return Probe(False, why=f"bwrap could not run ({exc}): {_GET_IT}", bwrap=exe)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return Probe(False, why=f"bwrap cannot create namespaces here ({msg}); {_userns_hint()}",
                     bwrap=exe)
    return Probe(True, by=ver, bwrap=exe)


def _userns_hint() -> str:
    """What to do where user namespaces are restricted (the common causes, in order)."""
    try:
        aa = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").read_text().strip()
    except OSError:
        aa = ""
    if aa == "1":
        return ("Ubuntu >= 23.10 restricts unprivileged user namespaces through AppArmor: "
                "allow bwrap with an AppArmor profile (docs/plugins.md) or set "
                "sysctl kernel.apparmor_restrict_unprivileged_userns=0")
    if Path("/.dockerenv").exists():
        return ("Docker's default seccomp profile blocks namespaces: run the container with "
                "--security-opt seccomp=<a profile allowing clone/unshare> (or unconfined), "
                "see docs/plugins.md")
    try:
        if Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0":
            return "user namespaces are disabled: sysctl user.max_user_namespaces=15000"
    except OSError:
        pass
    return "see docs/plugins.md (sandbox requirements)"


def resolve(mode: str | bool | None, warn: bool = True) -> tuple[bool, Probe]:
    """The driver's decision before the first job: ``(seal?, probe)``.

    ``require`` raises :class:`SandboxUnavailable` when the probe fails; ``auto`` then warns in
    one line (naming how to get the sandbox) and runs unsealed; ``off`` never probes.
    """
    m = normalise_mode(mode)
    if m == "off":
        return False, Probe(False, why="--unsealed")
    p = probe()
    if p.ok:
        return True, p
    if m == "require":
        raise SandboxUnavailable(f"sealed execution was required but is unavailable: {p.why}")
    if warn:
        warnings.warn(f"running UNSEALED (methods can reach files and the network): {p.why}",
                      stacklevel=2)
    return False, p


# --------------------------------------------------------------------------------------------
# The bwrap command line
# --------------------------------------------------------------------------------------------


def _host_env() -> dict[str, str]:
    # bwrap's own environment (visible as /proc/1/environ inside): nothing of the worker's
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
              "/etc/localtime"):
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    if os.path.isdir("/usr/share/datasets"):  # Debian's dataset-* packages: labels included
        args += ["--tmpfs", "/usr/share/datasets"]
    return args


def _base_args() -> list[str]:
    return ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *_system_args(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def _under(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


def deny_paths(data_root: str | None) -> list[str]:
    """Folders that must never be visible in the sandbox (resolved, existing ones)."""
    from occbench.datasets.cache import cache_root, label_cache_root

    cands: list[str | Path | None] = [data_root, cache_root(), label_cache_root(),
                                      "/usr/share/datasets"]
    cfg = os.environ.get("XDG_CONFIG_HOME")
    cands.append(Path(cfg) / "occbench" if cfg else Path.home() / ".config" / "occbench")
    for env in ("OCCBENCH_DATA", "OCCBENCH_DATA_ROOT"):
        cands.append(os.environ.get(env))
    out = []
    for c in cands:
        if c:
            with contextlib.suppress(OSError):
                r = os.path.realpath(c)
                if os.path.exists(r) and r not in out:
                    out.append(r)
    return out


def _module_dirs(names: Iterable[str]) -> list[str]:
    """Where the top-level modules ``names`` live, found without importing (or running) them."""
    out: list[str] = []
    for n in names:
        top = n.split(".", 1)[0].strip()
        if not top:
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            out += [str(p) for p in spec.submodule_search_locations]
        elif spec.origin and os.path.isfile(spec.origin):
            out.append(spec.origin)
    return out


def _occbench_dirs() -> list[str]:
    out = []
    for pkg in ("occbench", "occbench.harness", "occbench.methods", "occbench.datasets",
                "occbench.leaderboard", "occbench.site"):
        with contextlib.suppress(ImportError):
            out += [str(p) for p in importlib.import_module(pkg).__path__]
    return out


def _plugin_modules(method: str) -> list[str]:
    from importlib.metadata import entry_points

    from occbench.harness.registry import METHOD_GROUP, PLUGIN_MODULES_ENV

    mods = [m for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m.strip()]
    mods += [ep.module for ep in entry_points(group=METHOD_GROUP) if ep.name == method]
    return mods


@dataclass(frozen=True)
class Layout:
    """The read-only folders/files bound into the sandbox and the extra ``PYTHONPATH``."""

    binds: tuple[str, ...]
    pythonpath: tuple[str, ...]
    masks: tuple[str, ...]
    refused: tuple[str, ...]


def layout(method: str, data_root: str | None, runtime: bool = False) -> Layout:
    """What the sandbox of a job of ``method`` binds (see the module docstring); ``runtime``:
    the class was registered at run time here, so its module's folder is bound too."""
    deny = deny_paths(data_root)
    home = os.path.realpath(str(Path.home()))
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    cands: list[str] = sorted(prefixes)
    extra_path: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue  # "" is the current directory: often where the store is
        r = os.path.realpath(entry)
        if any(_under(r, p) for p in prefixes):
            continue
        cands.append(r)
        extra_path.append(r)
    cands += [os.path.realpath(p) for p in _occbench_dirs()]
    mods = _plugin_modules(method)
    if runtime:
        from occbench.harness import registry

        cls = registry.methods.registered_at_runtime(method)
        if cls is not None:
            mods.append(cls.__module__)
    for p in _module_dirs(mods):
        r = os.path.realpath(p)
        cands.append(r)
        # a module file's folder, a package's parent folder: what goes on PYTHONPATH
        parent = os.path.dirname(r.rstrip("/"))
        if parent not in extra_path and not any(_under(parent, q) for q in prefixes):
            extra_path.append(parent)
    binds: list[str] = []
    refused: list[str] = []
    for c in cands:
        bad = (c in ("/", home, os.path.realpath(os.getcwd()), "/tmp",
                     os.path.realpath(tempfile.gettempdir()))
               or any(_under(d, c) and d != c and not _under(d, "/usr") for d in deny)
               or any(_under(c, d) for d in deny))
        if bad:
            if c not in refused:
                refused.append(c)
            continue
        if not any(_under(c, b) for b in binds):
            binds = [b for b in binds if not _under(b, c)] + [c]
    masks = tuple(d for d in deny if any(_under(d, b) and d != b for b in binds)
                  and not _under(d, "/usr/share/datasets"))
    pp = tuple(p for p in extra_path if any(_under(p, b) for b in binds) or
               any(_under(b, p) for b in binds))
    return Layout(tuple(binds), pp, masks, tuple(refused))


def _gpu_args() -> list[str]:
    args: list[str] = []
    for dev in sorted(glob.glob("/dev/nvidia*")):
        args += ["--dev-bind", dev, dev]  # includes /dev/nvidia-caps (MIG) when present
    for d in ("/dev/dri",):
        if os.path.exists(d):
            args += ["--dev-bind", d, d]
    if os.path.isdir("/sys"):
        args += ["--ro-bind", "/sys", "/sys"]
    return args


_ENV_PASS = ("OCCBENCH_PLUGIN_MODULES", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
             "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
             "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "TZ")


def bwrap_args(lay: Layout, handover: str, device: str) -> list[str]:
    """The bwrap arguments (without the program) for a sealed process."""
    args = _base_args()
    for b in lay.binds:
        args += ["--ro-bind", b, b]
    for m in lay.masks:
        args += ["--tmpfs", m]
    args += ["--ro-bind", handover, "/job", "--dir", "/tmp/home", "--dir", "/tmp/work",
             "--chdir", "/tmp/work"]
    if device.startswith("cuda"):
        args += _gpu_args()
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": "/tmp/home",
           "TMPDIR": "/tmp", "LANG": "C.UTF-8", "USER": "sealed", "LOGNAME": "sealed",
           "MPLCONFIGDIR": "/tmp/home", "PYTHONDONTWRITEBYTECODE": "1",
           "OCCBENCH_SEALED_CHILD": "1"}
    if lay.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(lay.pythonpath)
    for k in _ENV_PASS:
        if k in os.environ:
            env[k] = os.environ[k]
    args.append("--clearenv")
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args


# --------------------------------------------------------------------------------------------
# The worker's side: one sealed process per worker process and device
# --------------------------------------------------------------------------------------------


def _read_line(stream: Any, limit: int = _REPLY_LIMIT) -> bytes:
    line = stream.readline(limit + 1)
    if len(line) > limit:
        raise SandboxError(f"the sealed process sent a reply over {limit} bytes")
    return bytes(line)


def _clean_stale(base: Path) -> None:
    # hand-over folders of workers that were killed (their pid is in the name)
    for d in base.glob("occbench-seal-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


class SealedProcess:
    """A running sandbox with the method server inside (see :func:`_child_main`)."""

    def __init__(self, lay: Layout, device: str, p: Probe) -> None:
        assert p.bwrap is not None
        base = Path(tempfile.gettempdir())
        _clean_stale(base)
        self.handover = Path(tempfile.mkdtemp(prefix=f"occbench-seal-{os.getpid()}-", dir=base))
        self.layout, self.device, self.by = lay, device, p.by
        self._seq = 0
        t0 = time.perf_counter()
        rfd, wfd = os.pipe()
        args = bwrap_args(lay, str(self.handover), device)
        prog = [sys.executable, "-s", "-B", "-c",
                "from occbench.harness.run.sandbox import _child_main; _child_main()"]
        payload = b"".join(a.encode() + b"\0" for a in args)
        try:
            # arguments through a pipe: /proc/1/cmdline inside shows no host paths
            self.proc = subprocess.Popen([p.bwrap, "--args", str(rfd), *prog],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         pass_fds=(rfd,), env=_host_env(), close_fds=True)
            os.close(rfd)
            rfd = -1
            with os.fdopen(wfd, "wb") as w:
                wfd = -1
                w.write(payload)
        except OSError as exc:
            raise SandboxError(f"could not start bwrap: {exc}") from exc
        finally:
            for fd in (rfd, wfd):
                if fd >= 0:
                    os.close(fd)
        try:
            hello = self._reply()
        except SealedProcessDied:
            shutil.rmtree(self.handover, ignore_errors=True)
            raise SandboxError(f"the sandbox did not start (bwrap exit status "
                               f"{self.proc.returncode}; its message is in the log above)"
                               ) from None
        if not hello.get("ready"):
            raise SandboxError(f"the sealed process did not start: {hello}")
        self.start_s = time.perf_counter() - t0

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout)
        if not line:
            rc = self.proc.wait(timeout=10)
            how, by_signal = _death(rc)
            raise SealedProcessDied(f"the sealed method process died during the job ({how}: "
                                    "killed, or out of memory)", how, by_signal)
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SandboxError(f"the sealed process broke the reply protocol: {exc}") from None
        if not isinstance(obj, dict):
            raise SandboxError("the sealed process broke the reply protocol (not an object)")
        return obj

    def alive(self) -> bool:
        return self.proc.poll() is None

    def job_dir(self) -> tuple[Path, str]:
        self._seq += 1
        d = self.handover / str(self._seq)
        d.mkdir(mode=0o755)
        return d, f"/job/{self._seq}"

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise SandboxError(f"the sealed process is gone ({exc})") from None
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
        shutil.rmtree(self.handover, ignore_errors=True)


_current: dict[str, SealedProcess] = {}


def sealed_process(lay: Layout, device: str, p: Probe) -> tuple[SealedProcess, bool]:
    """This worker's sealed process for ``(layout, device)``; ``True`` when just started."""
    key = "cuda" if device.startswith("cuda") else "cpu"
    sp = _current.get(key)
    # any GPU of the node: the worker's (hence this process's) CUDA_VISIBLE_DEVICES lists them
    # all, and each request names its "cuda:N"
    if sp is not None and (sp.layout != lay or not sp.alive()):
        sp.close()
        sp = None
    if sp is None:
        sp = SealedProcess(lay, device, p)
        _current[key] = sp
        return sp, True
    return sp, False


def close_all() -> None:
    for sp in list(_current.values()):
        sp.close()
    _current.clear()


import atexit  # noqa: E402 - registered here, next to what it cleans up

atexit.register(close_all)


def _whole_npy(a: np.ndarray) -> str | None:
    """The ``.npy`` file ``a`` maps in full (a memmap from ``np.load``), else ``None``."""
    import mmap

    fn = getattr(a, "filename", None)
    if not fn or not isinstance(a.base, mmap.mmap) or not str(fn).endswith(".npy"):
        return None
    try:
        with open(fn, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    if tuple(shape) != a.shape or fortran or dtype != a.dtype or getattr(a, "offset", -1) != offset:
        return None
    return str(fn)


def hand_over(a: np.ndarray, dest: Path) -> str:
    """Put ``a`` at ``dest`` (``.npy``): a hard link to a whole memmapped file, else a write."""
    src = _whole_npy(a)
    if src is not None:
        try:
            os.link(src, dest)
            return "link"
        except OSError:  # another file system, or links not allowed: copy
            pass
    np.save(dest, np.ascontiguousarray(a), allow_pickle=False)
    return "write"


def _data_spec(data: Any, d: Path, inner: str, name: str, how: list[str]) -> dict[str, Any]:
    from occbench.harness.api import ImageData

    if isinstance(data, ImageData):
        how.append(hand_over(data.images, d / f"{name}.npy"))
        return {"kind": "image", "file": f"{inner}/{name}.npy"}
    vids = []
    for i, v in enumerate(data.videos):
        how.append(hand_over(v.frames, d / f"{name}_{i}.npy"))
        vids.append([v.video_id, f"{inner}/{name}_{i}.npy"])
    return {"kind": "video", "videos": vids}


def run_sealed(job: Any, split: Any, auxiliary: dict[str, Any], device: str,
               data_root: str | None, p: Probe, method_blob: bytes | None = None,
               threads: int | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """Run ``job``'s method on ``split`` in this worker's sealed process.

    Returns ``(raw scores, provenance, method log)``; raises :class:`SandboxError` when the
    sandbox failed and :class:`SealedJobError` (with the method's traceback) when the method did.
    """
    if method_blob is None:
        method_blob = _runtime_blob(job.method)
    lay = layout(job.method, data_root, method_blob is not None)
    sp, started = sealed_process(lay, device, p)
    t0 = time.perf_counter()
    d, inner = sp.job_dir()
    try:
        how: list[str] = []
        req: dict[str, Any] = {
            "job_id": job.job_id, "method": job.method, "params": job.method_params,
            "seed": job.seed, "fast": job.fast, "device": device, "threads": threads,
            "train": _data_spec(split.train, d, inner, "train", how),
            "test": _data_spec(split.test, d, inner, "test", how),
            "auxiliary": {role: _data_spec(a, d, inner, f"aux_{i}", how)["file"]
                          for i, (role, a) in enumerate(sorted(auxiliary.items()))},
        }
        if method_blob is not None:
            (d / "method.pkl").write_bytes(method_blob)
            req["method_blob"] = f"{inner}/method.pkl"
        t_req = time.perf_counter()
        handover_s = t_req - t0
        rep = sp.request(req)
        round_s = time.perf_counter() - t_req
    finally:
        shutil.rmtree(d, ignore_errors=True)
    prov = {"sealed": True, "sealed_by": sp.by, "sandbox_started": started,
            "sandbox_start_s": round(sp.start_s, 4) if started else 0.0,
            "handover_s": round(handover_s, 4), "handover": _count(how),
            "sealed_pid": rep.get("pid"), "sealed_refused_paths": list(lay.refused)}
    got = rep.get("provenance")
    child_prov: dict[str, Any] = got if isinstance(got, dict) else {}
    prov.update({k: v for k, v in child_prov.items() if isinstance(k, str)})
    prov["sealed_overhead_s"] = round(max(round_s - float(child_prov.get("method_s", 0.0)),
                                          0.0) + handover_s, 4)
    logtext = str(rep.get("log", ""))
    if rep.get("status") != "ok":
        e = rep.get("error")
        err: dict[str, Any] = e if isinstance(e, dict) else {}
        raise SealedJobError({k: str(err.get(k, "")) for k in ("type", "message", "traceback")},
                             prov, logtext)
    raw = decode_scores(rep.get("raw"), split.test)
    got_snaps = rep.get("snapshots")
    if isinstance(got_snaps, dict) and got_snaps:  # handed on to execute_job, which pops it
        prov["_snapshots"] = {int(e): decode_scores(sc, split.test)
                              for e, sc in got_snaps.items()}
    return raw, prov, logtext


def _runtime_blob(method: str) -> bytes | None:
    """A class registered at run time in this process (a test, a notebook, an in-process run)
    is pickled by reference for the sealed process; entry-point plugins are found there."""
    import pickle

    from occbench.harness import registry

    cls = registry.methods.registered_at_runtime(method)
    if cls is None:
        return None
    try:
        return pickle.dumps(cls)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None  # defined in a function: the sealed process reports it unknown


def _count(how: Sequence[str]) -> dict[str, int]:
    return {k: how.count(k) for k in sorted(set(how))}


class SealedJobError(Exception):
    """The method failed inside the sealed process (its error is in ``error``)."""

    def __init__(self, error: dict[str, str], provenance: dict[str, Any], log: str) -> None:
        super().__init__(error.get("message", ""))
        self.error, self.provenance, self.log = error, provenance, log


def _enc(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()


def decode_scores(raw: Any, test: Any) -> dict[str, np.ndarray]:
    """Scores from a reply, checked against the test split (the sealed side is not trusted)."""
    from occbench.harness.api import ImageData
    from occbench.harness.run.execute import ScoreError

    if not isinstance(raw, dict):
        raise ScoreError("the sealed process returned no scores")
    want = {"": len(test)} if isinstance(test, ImageData) else \
        {v.video_id: len(v) for v in test.videos}
    if set(raw) != set(want):
        raise ScoreError(f"the sealed process returned scores for {sorted(raw)[:5]}, expected "
                         f"{sorted(want)[:5]}")
    out: dict[str, np.ndarray] = {}
    for k in want:  # the test split's order
        try:
            a = np.frombuffer(base64.b64decode(raw[k], validate=True), dtype="<f8")
        except (TypeError, ValueError) as exc:
            raise ScoreError(f"the sealed process sent unreadable scores for {k!r}") from exc
        if a.shape != (want[k],):
            raise ScoreError(f"the sealed process sent {a.shape} scores for {k!r}, expected "
                             f"({want[k]},)")
        if np.isinf(a).any():
            raise ScoreError(f"infinite scores for {k!r}")
        out[k] = a.astype(np.float64)
    return out


# --------------------------------------------------------------------------------------------
# Inside the sandbox
# --------------------------------------------------------------------------------------------


def _load_data(spec: dict[str, Any]) -> Any:
    from occbench.harness.api import ImageData, Video, VideoData

    def arr(path: str) -> np.ndarray:
        # a plain read-only view of the mapping: no copy, and no .filename to follow
        return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))

    if spec["kind"] == "image":
        return ImageData(arr(spec["file"]))
    return VideoData(tuple(Video(str(v), arr(f)) for v, f in spec["videos"]))


def _serve(req: dict[str, Any]) -> dict[str, Any]:
    import pickle

    from occbench.harness import registry
    from occbench.harness.api import Context, ImageData
    from occbench.harness.run.capture import (
        CappedHandler,
        CappedLog,
        capture_fds,
        job_logger,
        release_job_logger,
    )
    from occbench.harness.run.execute import PeakRSS, gpu_info, run_method

    # the method's log and prints (fd 1 and 2), in order and capped (occbench.harness.run.capture)
    buf = CappedLog()
    handler = CappedHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    capture = capture_fds(buf)
    handler.write = capture.__enter__()
    logger = job_logger(req.get("job_id"), handler)
    prov: dict[str, Any] = {}
    wd = tempfile.mkdtemp(prefix="job-", dir="/tmp/work")
    t0 = time.perf_counter()
    try:
        if req.get("method_blob") and req["method"] not in registry.methods:
            with open(req["method_blob"], "rb") as f:
                cls = pickle.load(f)  # the driver's own class (its module may register it)
            if req["method"] not in registry.methods:
                registry.methods.register(cls, source="<runtime, shipped by the driver>")
        cls = registry.methods.get(req["method"])
        device = str(req["device"])
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SandboxError(
                    "CUDA is not available inside the sandbox (device nodes bound: "
                    f"{sorted(glob.glob('/dev/nvidia*'))}); refusing to fall back to the CPU "
                    "silently")
            # "cuda:N" from a reused Ray worker that sees all its node's GPUs: plain "cuda" in
            # the method's code (and its peak memory below) must mean that GPU too
            torch.cuda.set_device(torch.device(device))
            torch.cuda.reset_peak_memory_stats()
        method = cls(**req["params"])
        train, test = _load_data(req["train"]), _load_data(req["test"])
        aux = {r: ImageData(np.asarray(np.load(f, mmap_mode="r", allow_pickle=False)))
               for r, f in req.get("auxiliary", {}).items()}
        ctx = Context(seed=int(req["seed"]), device=device, logger=logger, workdir=Path(wd),
                      fast=bool(req["fast"]), auxiliary=aux)
        with PeakRSS() as mem:  # the method's process: its memory is the job's
            raw, method, mprov = run_method(method, train, test, ctx, logger,
                                            req.get("threads"))
        prov.update(mprov)
        prov["peak_rss_mb"] = mem.peak_mb
        prov.update(gpu_info(device))
        from dataclasses import asdict

        prov["resources"] = asdict(method.resources_for())
        prov["method_s"] = round(time.perf_counter() - t0, 4)
        from occbench.harness.run.execute import snapshot_scores

        snaps = snapshot_scores(method, test, ctx)  # per-epoch scores (Context.snapshot)
        return {"status": "ok", "pid": os.getpid(), "provenance": prov,
                "raw": {k: _enc(v) for k, v in raw.items()}, "log": _log_text(capture, buf),
                "snapshots": {str(e): {k: _enc(v) for k, v in sc.items()}
                              for e, sc in snaps.items()}}
    except BaseException as exc:
        prov["method_s"] = round(time.perf_counter() - t0, 4)
        return {"status": "failed", "pid": os.getpid(), "provenance": prov,
                "log": _log_text(capture, buf),
                "error": {"type": type(exc).__name__, "message": str(exc),
                          "traceback": traceback.format_exc(), "origin": "method"}}
    finally:
        handler.write = None
        capture.__exit__(None, None, None)  # a no-op when _log_text already ended it
        release_job_logger(logger, handler)
        shutil.rmtree(wd, ignore_errors=True)
        _release_cuda_cache()


def _release_cuda_cache() -> None:
    """Hand back the GPU memory torch's caching allocator kept from the finished job, so the
    next job on the card (this process's or another's) can use it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        import gc

        gc.collect()  # the method's modules and tensors may sit in reference cycles
        torch.cuda.empty_cache()


def _log_text(capture: Any, buf: Any) -> str:
    """End the request's output capture and return the capped log."""
    capture.__exit__(None, None, None)
    return str(buf.text())


def _child_main() -> None:
    """The method server inside the sandbox: one JSON request per line on stdin."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the method's prints go to stderr, never into the reply channel
    sys.argv = ["occbench-sealed"]
    from occbench.harness.api import seal_labels

    seal_labels()

    def send(obj: dict[str, Any]) -> None:
        proto_out.write(json.dumps(obj).encode() + b"\n")
        proto_out.flush()

    # imported before "ready": their cost is the sandbox's start, not the first job's

    send({"ready": True, "pid": os.getpid()})
    for line in proto_in:
        if not line.strip():
            continue
        send(_serve(json.loads(line)))


__all__ = ["SEAL_MODES", "Probe", "SandboxError", "SandboxUnavailable", "SealedJobError",
           "decode_scores", "layout", "normalise_mode", "probe", "resolve", "run_sealed"]
