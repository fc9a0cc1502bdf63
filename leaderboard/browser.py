"""Look at the built site as a person would: headless Chromium driven over the DevTools protocol.

Uses ``--remote-debugging-pipe`` (DevTools messages as NUL-terminated JSON on file descriptors 3
and 4), so nothing beyond the Python standard library is needed — no websocket client, no port.
Used by the browser tests (``tests/test_site_browser.py``) and for screenshots::

    with Browser() as b:
        page = b.open(Path("site/index.html"))
        page.errors            # console errors, uncaught exceptions, failed loads
        page.eval("document.title")
        page.screenshot(Path("/tmp/overview.png"))
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$CHROMIUM`` first), or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    """One headless Chromium with a fresh profile; use as a context manager."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        b = binary or find_chromium()
        if b is None:
            raise BrowserError("no chromium found: `apt-get install -y chromium` or set $CHROMIUM")
        self.binary, self.timeout = b, timeout
        self._next = 0
        self._lock = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._buf = b""
        self._closed = False

    # -- process and transport -----------------------------------------------------------------
    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="occbench-chromium-")
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            # move both ends out of the way first: a pipe end may already sit on fd 3 or 4, and
            # dup2 onto itself would keep its close-on-exec flag
            hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(hi_r, 3, inheritable=True)
            os.dup2(hi_w, 4, inheritable=True)

        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(BrowserError):
                    self.send("Browser.close", timeout=5)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            for fd in (self._to_chrome_w, self._from_chrome_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._from_chrome_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            self._buf += chunk
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._events.append(msg)
                    self._lock.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send one DevTools command and wait for its result."""
        with self._lock:
            self._next += 1
            mid = self._next
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise BrowserError(f"no reply to {method} (browser closed or timed out)")
                self._lock.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return dict(reply.get("result") or {})

    def wait_event(self, method: str, session: str, timeout: float | None = None,
                   start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while True:
                for e in self._events[start:]:
                    if e.get("method") == method and e.get("sessionId") == session:
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise BrowserError(f"no {method} event (page did not load in time)")
                self._lock.wait(left)

    def events(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if e.get("sessionId") == session]

    # -- pages ---------------------------------------------------------------------------------
    def open(self, path: Path | str, width: int = 1280, height: int = 900,
             settle: float = 0.3) -> Page:
        """Open a local file (or URL) in a new tab and wait for its load event."""
        url = path if isinstance(path, str) and "://" in path else Path(path).resolve().as_uri()
        tid = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
        for dom in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(dom, session=sid)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=sid)
        with self._lock:
            mark = len(self._events)
        self.send("Page.navigate", {"url": url}, session=sid)
        self.wait_event("Page.loadEventFired", sid, start=mark)
        time.sleep(settle)  # let plotly finish its first draw (it renders after load)
        return Page(self, sid, tid, width)


class Page:
    """One open tab: evaluate JavaScript, read console errors, take a screenshot."""

    def __init__(self, browser: Browser, session: str, target: str, width: int) -> None:
        self.b, self.session, self.target, self.width = browser, session, target, width

    def eval(self, expression: str) -> Any:
        """Value of a JavaScript expression (promises awaited); JS exceptions raise."""
        r = self.b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in r:
            raise BrowserError(f"JavaScript error: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    @property
    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries (e.g. a missing file)."""
        out = []
        for e in self.b.events(self.session):
            m, p = e.get("method"), e.get("params") or {}
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails") or {}
                out.append("Uncaught " + str((d.get("exception") or {}).get("description")
                                             or d.get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and (p.get("entry") or {}).get("level") == "error":
                ent = p["entry"]
                out.append(f"log {ent.get('source')}: {ent.get('text')} {ent.get('url', '')}")
        return out

    def screenshot(self, path: Path, full_page: bool = True, max_height: int = 6000) -> Path:
        """Save a PNG of the page (the whole page up to ``max_height`` CSS pixels)."""
        if full_page:
            h = int(self.eval("Math.ceil(document.documentElement.scrollHeight)") or 900)
            self.b.send("Emulation.setDeviceMetricsOverride",
                        {"width": self.width, "height": min(h, max_height),
                         "deviceScaleFactor": 1, "mobile": False}, session=self.session)
            time.sleep(0.3)  # plotly is responsive: let it redraw at the new size
        data = self.b.send("Page.captureScreenshot", {"format": "png"},
                           session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.b.send("Target.closeTarget", {"targetId": self.target})
