"""Drive headless Chromium over the DevTools protocol, for tests that must see what a user's browser sees.

Reusable by any test that opens a page (the HTML report, the FiftyOne App): :func:`open_page` loads a URL, waits
until a JavaScript condition holds, and returns the console errors, uncaught exceptions, network requests,
JavaScript dialogs (``alert()`` and friends, dismissed automatically so a page cannot hang the test), the values
of JavaScript expressions, and optionally a screenshot PNG. :class:`BrowserPage` does the same step by step,
for tests that also move the mouse or wait on several conditions.

The DevTools protocol is used rather than ``--dump-dom``/stderr logging because it reports errors and dialogs
as structured events and lets the test wait on a real condition instead of sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Flags for an isolated, quiet, offline-friendly headless browser. Software WebGL (SwiftShader) is enabled
# explicitly because recent Chromium no longer falls back to it by itself with --disable-gpu.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-allow-origins=*",
)


class BrowserError(RuntimeError):
    """Chromium could not be started, or the page never reached the awaited state."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_chromium() -> str | None:
    """The Chromium executable: ``$LABEL_AUDIT_CHROMIUM`` if set, else the first known name on ``PATH``."""
    explicit = os.environ.get("LABEL_AUDIT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium path; skip the test when it is missing locally, fail it in CI (where it must be present)."""
    found = find_chromium()
    if found:
        return found
    message = "headless Chromium not found (apt-get install chromium, or set LABEL_AUDIT_CHROMIUM)"
    if in_ci():
        pytest.fail(f"{message}; CI must run the browser tests")
    pytest.skip(message)


@dataclass
class PageReport:
    """What happened while a page was open."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: Path | None = None


class _DevTools:
    """A minimal synchronous DevTools client on one page target."""

    def __init__(self, ws_url: str, report: PageReport) -> None:
        import websocket  # websocket-client, a test dependency

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self._report = report

    def close(self) -> None:
        self._ws.close()

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._on_event(message["method"], message.get("params", {}))
        raise BrowserError(f"no answer to {method} within {timeout:.0f} s")

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        report = self._report
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            report.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                report.console_errors.append(text)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            report.console_errors.append(
                f"uncaught: {exception.get('description') or details.get('text')} "
                f"({details.get('url', '')}:{details.get('lineNumber', '?')})"
            )
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            report.console.append(f"{entry.get('level')}: {entry.get('text')}")
            if entry.get("level") == "error":
                report.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            report.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Page.javascriptDialogOpening":
            report.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            # Answer without waiting: the page is blocked until the dialog is handled.
            self._ws.send(json.dumps({"id": next(self._ids), "method": "Page.handleJavaScriptDialog",
                                      "params": {"accept": False}}))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression!r} raised {details.get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description", arg.get("type", "")))


def _devtools_port(profile: Path, process: subprocess.Popen, timeout: float) -> int:
    """Chromium writes the port it chose for ``--remote-debugging-port=0`` to DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"Chromium exited with code {process.returncode} before opening DevTools")
        if marker.is_file():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        time.sleep(0.05)
    raise BrowserError(f"Chromium did not open its DevTools port within {timeout:.0f} s")


class BrowserPage:
    """One page in a fresh headless Chromium (own profile, no network services), driven step by step.

    Use as a context manager::

        with BrowserPage() as page:
            page.goto(url, until="window.ready === true")
            page.mouse_move(200, 300)
            value = page.evaluate("document.title")
            page.screenshot(path)
        page.report.console_errors  # everything seen while the page was open
    """

    def __init__(self, *, width: int = 1400, height: int = 1000, timeout: float = 60.0,
                 extra_flags: Sequence[str] = ()) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self.extra_flags = tuple(extra_flags)
        self.report = PageReport(url="about:blank")
        self._profile: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self._client: _DevTools | None = None

    def __enter__(self) -> BrowserPage:
        executable = find_chromium()
        if executable is None:
            raise BrowserError("Chromium not found (apt-get install chromium, or set LABEL_AUDIT_CHROMIUM)")
        self._profile = tempfile.TemporaryDirectory(prefix="label-audit-chromium-")
        profile = Path(self._profile.name)
        try:
            self._process = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, *self.extra_flags, "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", f"--window-size={self.width},{self.height}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            port = _devtools_port(profile, self._process, timeout=30.0)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                targets = json.load(answer)
            target = next(t for t in targets if t.get("type") == "page")
            self._client = _DevTools(target["webSocketDebuggerUrl"], self.report)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self._client.send(f"{domain}.enable")
            self._resize(self.height)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # the browser may close its socket mid-answer
                self._client.send("Browser.close", timeout=5)
            self._client.close()
            self._client = None
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        if self._profile is not None:
            with contextlib.suppress(OSError):  # Chromium may still be removing its own files
                self._profile.cleanup()
            self._profile = None

    @property
    def client(self) -> _DevTools:
        if self._client is None:
            raise BrowserError("the browser is not open: use BrowserPage as a context manager")
        return self._client

    def _resize(self, height: int) -> None:
        self.client.send("Emulation.setDeviceMetricsOverride",
                         {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def goto(self, url: str, until: str = "true", settle: float = 0.3) -> None:
        """Navigate and wait until the page has loaded and ``until`` is truthy, then listen ``settle`` s more."""
        self.report.url = url
        self.client.send("Page.navigate", {"url": url})
        self.wait_for(f"document.readyState === 'complete' && Boolean({until})")
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self.client.evaluate("0")  # keeps receiving events (late errors) while waiting
            time.sleep(0.05)

    def wait_for(self, condition: str, timeout: float | None = None) -> None:
        """Poll a JavaScript expression until it is truthy; raise BrowserError with the console errors if not."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if self.client.evaluate(condition):
                    return
            except BrowserError as exc:  # e.g. the page is still navigating
                last_error = str(exc)
            time.sleep(0.1)
        raise BrowserError(
            f"page never satisfied {condition!r} within {timeout or self.timeout:.0f} s; console errors: "
            f"{self.report.console_errors}; last evaluation error: {last_error or 'none'}"
        )

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        return self.client.evaluate(expression)

    def mouse_move(self, x: float, y: float) -> None:
        """Move the mouse to viewport coordinates, as a user would (hover handlers fire)."""
        self.client.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """Save a PNG of the whole page (or the viewport) and restore the viewport size."""
        if full_page:
            metrics = self.client.send("Page.getLayoutMetrics")
            content = metrics.get("cssContentSize") or metrics.get("contentSize", {})
            self._resize(max(self.height, int(content.get("height", self.height))))
            time.sleep(0.3)  # let the page re-layout (responsive plots resize) before capturing
        shot = self.client.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
        if full_page:
            self._resize(self.height)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        self.report.screenshot = path
        return path


def open_page(
    url: str,
    *,
    until: str = "document.readyState === 'complete'",
    evaluate: Mapping[str, str] | None = None,
    screenshot: Path | None = None,
    full_page: bool = True,
    width: int = 1400,
    height: int = 1000,
    timeout: float = 60.0,
    settle: float = 0.3,
    extra_flags: Sequence[str] = (),
) -> PageReport:
    """Open ``url`` in a fresh headless Chromium, wait until ``until`` is truthy, and report what happened.

    Parameters
    ----------
    url
        ``file://``, ``http://``... (use ``Path.as_uri()`` for a local file).
    until
        JavaScript expression polled until it is truthy (the page's own readiness, e.g. plots drawn).
    evaluate
        ``{name: expression}``; each is evaluated once ``until`` holds and returned in ``values`` (JSON values;
        promises are awaited).
    screenshot
        Where to save a PNG of the page (the whole page when ``full_page``, else the viewport).
    settle
        Seconds to keep listening after ``until`` holds, so late errors are still caught.

    Raises
    ------
    BrowserError
        Chromium did not start, or ``until`` did not hold within ``timeout`` (the message lists console errors).
    """
    with BrowserPage(width=width, height=height, timeout=timeout, extra_flags=extra_flags) as page:
        page.goto(url, until=until, settle=settle)
        for name, expression in (evaluate or {}).items():
            page.report.values[name] = page.evaluate(expression)
        if screenshot is not None:
            page.screenshot(screenshot, full_page=full_page)
    return page.report
