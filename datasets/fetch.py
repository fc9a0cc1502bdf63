"""Download datasets from their official sources (where the licence allows it).

* Every file is checked against its official MD5 (and SHA-256 where given) before use.
* Downloads resume: bytes go to ``<file>.part`` and a later call asks for the rest with an HTTP
  ``Range`` request (a server that ignores it gets a fresh download).
* Archives are extracted safely: members with absolute paths, ``..`` components, links or
  device files are rejected before anything is written.
* Without network the call fails at once (the host name is resolved first) with a clear message.

Ped2, Avenue and ShanghaiTech are distributed by their authors on request / from their pages;
:data:`MANUAL` says where to get them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download or extraction failed; the message says why and what to do."""


class ChecksumError(FetchError):
    pass


class UnsafeArchiveError(FetchError):
    pass


@dataclass(frozen=True)
class Resource:
    """One file to download: ``urls`` are mirrors tried in order."""

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False
    subdir: str = ""  # where to put / extract it, relative to the dataset's target folder


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_GTSRB = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"


def _idx(mirrors: Sequence[str], name: str, md5: str) -> Resource:
    return Resource(tuple(m + name for m in mirrors), name, md5)


#: dataset name → (folder under the data root, resources)
FETCHABLE: dict[str, tuple[str, tuple[Resource, ...]]] = {
    "mnist": ("mnist", (
        _idx(_MNIST_MIRRORS, "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        _idx(_MNIST_MIRRORS, "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        _idx(_MNIST_MIRRORS, "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        _idx(_MNIST_MIRRORS, "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    )),
    "fashion-mnist": ("fashion-mnist", (
        _idx((_FASHION,), "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        _idx((_FASHION,), "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        _idx((_FASHION,), "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        _idx((_FASHION,), "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    )),
    "cifar10": ("", (
        Resource(("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", extract=True),
    )),
    # www.cs.toronto.edu/~kriz redirects to cave.cs.toronto.edu/kriz; the MD5 guards both
    "cifar100": ("", (
        Resource(("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "https://cave.cs.toronto.edu/kriz/cifar-100-python.tar.gz"),
                 "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", extract=True),
    )),
    "gtsrb-stop": ("", (
        Resource((_GTSRB + "GTSRB_Final_Training_Images.zip",), "GTSRB_Final_Training_Images.zip",
                 "513f3c79a4c5141765e10e952eaa2478", extract=True),
        Resource((_GTSRB + "GTSRB_Final_Test_Images.zip",), "GTSRB_Final_Test_Images.zip",
                 "c7e4e6327067d32654124b0fe9e82185", extract=True),
        Resource((_GTSRB + "GTSRB_Final_Test_GT.zip",), "GTSRB_Final_Test_GT.zip",
                 "fe31e9c9270bbcd7b84b7f21a9d9d9e5", extract=True, subdir="GTSRB"),
    )),
}

#: datasets that cannot be downloaded automatically, and where to get them
MANUAL: dict[str, str] = {
    "ped2": "UCSD Ped2: download UCSD_Anomaly_Dataset.tar.gz from "
            "http://www.svcl.ucsd.edu/projects/anomaly/dataset.htm and extract it so that "
            "<data root>/UCSD_Anomaly_Dataset.v1p2/UCSDped2/Train and .../Test exist (or put "
            "the frames layout ped2/training/frames, ped2/testing/frames under the data root).",
    "avenue": "CUHK Avenue: download Avenue_Dataset.zip and ground_truth_demo.zip from "
              "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html; put "
              "training_videos/, testing_videos/ and testing_label_mask/ in <data root>/avenue.",
    "shanghaitech": "ShanghaiTech Campus: follow https://svip-lab.github.io/dataset/"
                    "campus_dataset.html (shanghaitech.tar.gz); extract to <data root>/"
                    "shanghaitech with training/videos, testing/frames, testing/test_frame_mask.",
}


# --------------------------------------------------------------------------------------------
# checksums and downloads
# --------------------------------------------------------------------------------------------


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming the file if a given checksum does not match."""
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want and _digest(path, algo) != want.lower():
            raise ChecksumError(
                f"{path}: {algo} is {_digest(path, algo)}, expected {want}; the download is "
                "corrupt or the server sent a different file — delete it and fetch again"
            )


def check_network(url: str) -> None:
    """Resolve the URL's host now so that a machine without network fails at once."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise FetchError(f"{url}: not a download URL")
    try:
        socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        raise FetchError(
            f"no network: cannot resolve {host} ({exc}); download {url} on a connected machine "
            "and copy it into the data root, or retry when online"
        ) from exc


def download(
    url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
    timeout: float = 30.0, progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify checksums, return ``dest``.

    An existing ``dest`` with the right checksum is kept as is.
    """
    dest = Path(dest)
    if dest.exists():
        try:
            verify(dest, md5, sha256)
            return dest
        except ChecksumError:
            dest.unlink()
    check_network(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "occbench"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is complete
            resp = None
        else:
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: cannot connect ({exc}); check the network and retry") from exc
    if resp is not None:
        with resp:
            resumed = have and resp.status == 206
            mode = "ab" if resumed else "wb"  # a 200 reply ignores Range: start over
            done = have if resumed else 0
            length = resp.headers.get("Content-Length")
            total = done + int(length) if length is not None else None
            with open(part, mode) as fh:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    try:
        verify(part, md5, sha256)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# safe extraction
# --------------------------------------------------------------------------------------------


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and ":" in p.parts[0]) or ".." in p.parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside the target folder "
            "(absolute path or '..'); refusing to extract this archive"
        )
    return p


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``dest`` after validating members.

    Rejects absolute paths, ``..``, symbolic/hard links and device files. Returns the paths of
    the extracted regular files.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_name(info.filename, archive)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink")
            for info in infos:
                target = dest / _safe_name(info.filename, archive)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                out.append(target)
        return out
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 - closed by the `with tf` below
    except tarfile.TarError as exc:
        raise FetchError(f"{archive}: not a tar or zip archive ({exc})") from exc
    with tf:
        members = tf.getmembers()
        for m in members:
            _safe_name(m.name, archive)
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a link; refusing")
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or fifo")
        for m in members:
            target = dest / _safe_name(m.name, archive)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            member = tf.extractfile(m)
            assert member is not None
            with member, open(target, "wb") as dst:
                shutil.copyfileobj(member, dst, CHUNK)
            out.append(target)
    return out


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


def fetch_resources(
    resources: Sequence[Resource], target: Path, *, keep_archives: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Download (trying mirrors in order), verify and extract ``resources`` into ``target``."""
    target = Path(target)
    for res in resources:
        folder = target / res.subdir
        dest = folder / res.filename
        errors = []
        for url in res.urls:
            try:
                log(f"downloading {url}")
                download(url, dest, md5=res.md5, sha256=res.sha256)
                break
            except ChecksumError:
                raise
            except FetchError as exc:
                errors.append(str(exc))
                if str(exc).startswith("no network"):
                    raise
        else:
            raise FetchError(f"{res.filename}: every mirror failed:\n  " + "\n  ".join(errors))
        if res.extract:
            log(f"extracting {dest.name} into {folder}")
            safe_extract(dest, folder)
            if not keep_archives:
                dest.unlink()
    return target


def fetch(name: str, root: Path, *, log: Callable[[str], None] = print) -> Path:
    """Fetch dataset ``name`` into the data root; returns the folder written.

    Raises :class:`FetchError` for datasets that must be obtained by hand (the message says where).
    """
    if name in MANUAL:
        raise FetchError(f"{name} cannot be downloaded automatically. {MANUAL[name]}")
    if name not in FETCHABLE:
        raise FetchError(f"no download recipe for dataset {name!r}; fetchable: "
                         f"{sorted(FETCHABLE)}")
    sub, resources = FETCHABLE[name]
    return fetch_resources(resources, Path(root) / sub, log=log)
