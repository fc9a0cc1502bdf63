"""Downloads from a local HTTP server (never the internet): checksums, resume, safe extraction."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from occbench.datasets import fetch as F


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self.honour_range = True


@pytest.fixture
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append(dict(self.headers))
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            if rng and state.honour_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                body = body[start:]
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def test_download_verifies_and_resumes(server: tuple[str, _Server], tmp_path: Path) -> None:
    url, st = server
    payload = bytes(range(256)) * 4000
    st.files["a.bin"] = payload
    dest = tmp_path / "a.bin"
    part = tmp_path / "a.bin.part"
    part.write_bytes(payload[:300_000])  # an interrupted earlier download
    F.download(url + "a.bin", dest, md5=_md5(payload),
               sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload and not part.exists()
    assert st.requests[-1].get("Range") == "bytes=300000-"
    n = len(st.requests)
    F.download(url + "a.bin", dest, md5=_md5(payload))  # already there and valid: no request
    assert len(st.requests) == n


def test_server_ignoring_range_restarts(server: tuple[str, _Server], tmp_path: Path) -> None:
    url, st = server
    st.honour_range = False
    st.files["b.bin"] = b"x" * 5000
    (tmp_path / "b.bin.part").write_bytes(b"y" * 100)  # stale partial data must not survive
    F.download(url + "b.bin", tmp_path / "b.bin", md5=_md5(b"x" * 5000))
    assert (tmp_path / "b.bin").read_bytes() == b"x" * 5000


def test_checksum_mismatch_rejected(server: tuple[str, _Server], tmp_path: Path) -> None:
    url, st = server
    st.files["c.bin"] = b"evil"
    with pytest.raises(F.ChecksumError, match=r"c.bin.part: md5 .* expected 0+"):
        F.download(url + "c.bin", tmp_path / "c.bin", md5="0" * 32)
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.bin.part").exists()


def test_fetch_resources_extracts_archive(server: tuple[str, _Server], tmp_path: Path) -> None:
    url, st = server
    arc = _tar({"cifar-10-batches-py/test_batch": b"T", "cifar-10-batches-py/batches.meta": b"M"})
    st.files["cifar.tar.gz"] = arc
    res = F.Resource((url + "missing.tar.gz", url + "cifar.tar.gz"), "cifar.tar.gz", _md5(arc),
                     extract=True)
    F.fetch_resources([res], tmp_path / "root", log=lambda m: None)
    assert (tmp_path / "root" / "cifar-10-batches-py" / "test_batch").read_bytes() == b"T"


def test_path_traversal_archives_rejected(server: tuple[str, _Server], tmp_path: Path) -> None:
    url, st = server
    evil = _tar({"ok.txt": b"fine", "../escaped.txt": b"pwned"})
    st.files["evil.tar.gz"] = evil
    res = F.Resource((url + "evil.tar.gz",), "evil.tar.gz", _md5(evil), extract=True)
    with pytest.raises(F.UnsafeArchiveError, match=r"\.\./escaped.txt"):
        F.fetch_resources([res], tmp_path / "root", log=lambda m: None)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "root" / "ok.txt").exists()  # validated before anything is written

    for name, data in [("abs.tar.gz", _tar({"/tmp/abs.txt": b"x"})),
                       ("link.tar.gz", _tar({}, links={"lnk": "/etc/passwd"}))]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(F.UnsafeArchiveError):
            F.safe_extract(p, tmp_path / "out")
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../zipped.txt", b"x")
    with pytest.raises(F.UnsafeArchiveError, match=r"zipped.txt"):
        F.safe_extract(z, tmp_path / "out")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("GTSRB/Final_Test/Images/00000.ppm", b"P6")
    assert [p.name for p in F.safe_extract(good, tmp_path / "out")] == ["00000.ppm"]


def test_no_network_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_dns(*a: object, **k: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(F.FetchError, match="no network: cannot resolve ossci-datasets"):
        F.fetch("mnist", tmp_path, log=lambda m: None)
    assert not any(tmp_path.rglob("*.gz"))


def test_manual_datasets_say_where(tmp_path: Path) -> None:
    with pytest.raises(F.FetchError, match=r"svcl.ucsd.edu"):
        F.fetch("ped2", tmp_path)
    with pytest.raises(F.FetchError, match="no download recipe"):
        F.fetch("nope", tmp_path)
    assert set(F.FETCHABLE) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "gtsrb-stop"}
    assert all(r.md5 for _, rs in F.FETCHABLE.values() for r in rs)
