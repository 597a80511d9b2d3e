"""A headless Chromium driven over the Chrome DevTools Protocol, for the HTML report's tests and
benchmark: no dependency beyond the standard library.

Chromium talks over ``--remote-debugging-pipe``: it reads commands on fd 3 and writes replies and
events on fd 4, each a JSON message ending in a NUL byte. `Browser` opens one page, collects its
console errors and uncaught exceptions, and offers what the tests need: load a file, evaluate
JavaScript (awaiting promises), move or click the mouse at page coordinates, take a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def chromium() -> str | None:
    """The path of a Chromium (Debian's `chromium`, or Chrome) that starts here, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            try:
                proc = subprocess.run([path, "--version"], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if proc.returncode == 0:
                return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page (use as a context manager)."""

    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        path = chromium()
        if path is None:
            raise BrowserError("no chromium")
        self.profile = tempfile.mkdtemp(prefix="attnscope-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends above 4, so that putting them on 3 and 4 cannot overwrite one with the other
        for end in ("to_browser_r", "from_browser_w"):
            fd = locals()[end]
            high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
            os.close(fd)
            if end == "to_browser_r":
                to_browser_r = high
            else:
                from_browser_w = high
        args = [path, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        # bash (dash takes one-digit fds only) puts the pipe's ends on fds 3 and 4, where chromium looks for them
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.profile, "stderr.log"), "wb"),  # noqa: SIM115 (closed with the process)
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.timeout = timeout
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    # ---- the protocol ----------------------------------------------------------------------------
    def send(self, method: str, **params) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("no reply from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                log = Path(self.profile, "stderr.log")
                raise BrowserError(f"chromium closed the pipe: {log.read_text()[-2000:] if log.exists() else ''}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    # ---- what the tests do -----------------------------------------------------------------------
    def open(self, path: Path, ready: str = "window.attnscope && window.attnscope.ready") -> float:
        """Load a file and await the promise `ready`; returns the page's time to that point (ms,
        from the start of navigation)."""
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            state = self.evaluate("document.readyState")
            if state == "complete":
                break
            time.sleep(0.02)
        self.evaluate(f"Promise.resolve({ready})")
        return float(self.evaluate("Number(document.body.dataset.rendered || performance.now())"))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited); raises on an exception."""
        reply = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def mouse(self, kind: str, x: float, y: float) -> None:
        """``mouseMoved`` to (x, y), or a click there (``click``), as a user's mouse."""
        if kind == "click":
            for event in ("mouseMoved", "mousePressed", "mouseReleased"):
                self.send("Input.dispatchMouseEvent", type=event, x=x, y=y, button="left", clickCount=1)
        else:
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def center(self, selector: str, fx: float = 0.5, fy: float = 0.5) -> tuple[float, float]:
        """The viewport coordinates of a point of an element (scrolled into view): `fx`, `fy` the
        fractions of its width and height."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            f" return [r.left + r.width * {fx}, r.top + r.height * {fy}]; }})()"
        )
        return box[0], box[1]

    def click(self, selector: str) -> None:
        self.mouse("click", *self.center(selector))
        self.evaluate("window.attnscope.render && Promise.resolve(window.attnscope.ready)")

    def errors(self) -> list[str]:
        """The console errors and uncaught exceptions of the page so far."""
        found = []
        for e in self.events:
            params = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args", []))[:500])
            elif e["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
