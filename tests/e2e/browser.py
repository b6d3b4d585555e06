"""Open an HTML file in headless Chromium, collect every console error, take a full-page screenshot.

Talks the Chrome DevTools Protocol over `--remote-debugging-pipe` (JSON messages, NUL-terminated, on file
descriptors 3 and 4), so no websocket library or browser driver is needed. Errors collected: uncaught
exceptions, console.error/assert calls, and browser log entries of level error (CSP violations, failed loads).

    python tests/e2e/browser.py report/index.html docs/report.png     # prints the errors, exit 1 if any
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # every console message, for diagnostics
    screenshot: bytes = b""
    height: int = 0


class _Pipe:
    def __init__(self, process: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.process, self.write_fd, self.read_fd = process, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)
        raise TimeoutError(f"no {method} within {timeout} s")

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.process.poll()})")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)


def _describe(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(error text or None, console line or None) for one CDP event."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        text = details.get("exception", {}).get("description") or details.get("text", "exception")
        return f"uncaught: {text}", None
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        line = f"console.{params.get('type')}: {text}"
        return (line if params.get("type") in ("error", "assert") else None), line
    if method == "Log.entryAdded":
        entry = params.get("entry", {})
        line = f"log.{entry.get('level')} ({entry.get('source')}): {entry.get('text')}"
        return (line if entry.get("level") == "error" else None), line
    return None, None


def open_page(html: Path, width: int = 1280, settle_s: float = 0.5, timeout: float = 60.0) -> PageResult:
    """Load `html` in a fresh headless Chromium profile; return its console errors and a full-page PNG."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="falserefusal-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", f"--window-size={width},1000", "about:blank",
        ]

        def wire_fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            # via fresh descriptors first: the pipe ends may themselves be 3 or 4; close_fds runs after this
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   pass_fds=(3, 4), preexec_fn=wire_fds)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(process, to_browser_w, from_browser_r)
        try:
            return _drive(pipe, html, width, settle_s, timeout)
        finally:
            try:
                pipe.send("Browser.close", timeout=5)
            except Exception:
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _drive(pipe: _Pipe, html: Path, width: int, settle_s: float, timeout: float) -> PageResult:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
        pipe.send(domain, session=session)
    pipe.events.clear()  # anything about about:blank
    pipe.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
    pipe.wait_for("Page.loadEventFired", timeout=timeout)
    deadline = time.monotonic() + settle_s  # late errors (timers, images decoding)
    while time.monotonic() < deadline:
        pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)
        time.sleep(0.1)
    size = pipe.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
                     session=session)
    height = int(size.get("result", {}).get("value", 1000))
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
    shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session,
                     timeout=timeout)
    result = PageResult(screenshot=base64.b64decode(shot["data"]), height=height)
    for event in pipe.events:
        error, line = _describe(event)
        if line:
            result.console.append(line)
        if error:
            result.errors.append(error)
    return result


if __name__ == "__main__":
    page = open_page(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_bytes(page.screenshot)
    print(f"height {page.height}px, {len(page.errors)} console errors")
    for line in page.errors:
        print("  " + line)
    sys.exit(1 if page.errors else 0)
