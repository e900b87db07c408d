"""A headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the
browser tests of ``lmtui --web``.

textual-serve draws the terminal with xterm.js on a canvas, so the screen's text is not in
the DOM. The page's own xterm.js ``Terminal`` holds it: a script added before the page's
own catches the object textual-serve's client assigns to ``this.terminal`` and the test
reads its buffer (``translateToString``), the text the canvas is drawn from. A screenshot
is saved beside it for a human to look at.

Every wait is bounded; ``close`` ends the browser (SIGKILL after 5 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

#: Flags that work headless as root in a container, with nothing reaching the internet.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1600,1000",
]

#: Runs before the page's scripts: keeps every xterm.js Terminal the client makes.
CATCH_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  get() { return undefined; },
  set(value) {
    Object.defineProperty(this, "terminal", {
      value, writable: true, configurable: true, enumerable: true,
    });
    (window.__lmtuiTerminals = window.__lmtuiTerminals || []).push(value);
  },
});
"""

#: The text of the first terminal's screen, one line per row.
SCREEN_TEXT = """
(() => {
  const t = (window.__lmtuiTerminals || [])[0];
  if (!t || !t.buffer) return "";
  const b = t.buffer.active, rows = [];
  for (let i = 0; i < b.length; i++) {
    const line = b.getLine(i);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
})()
"""


def require_chromium() -> None:
    """Skip (fail under CI) without Debian's chromium."""
    if Path(CHROMIUM).exists():
        return
    reason = "chromium not found: apt-get install chromium to run the browser tests"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}. CI=true, so this is an error rather than a skip.")
    pytest.skip(reason)


def _launch(profile: Path, flags: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Chromium in a process group of its own (its helpers too: killed together)."""
    return subprocess.Popen(
        [CHROMIUM, *FLAGS, *flags, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class Browser:
    """``async with Browser(tmp) as b: await b.open(url); await b.text()``."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.flags = flags
        self.profile = tmp / "chromium-profile"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True)
        self.proc = _launch(self.profile, self.flags)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port within 30 s")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are dropped)."""
        assert self.ws is not None
        mid = next(self._ids)
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        async with asyncio.timeout(20):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"DevTools connection ended: {msg.type}")
                data = json.loads(msg.data)
                if data.get("id") == mid:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))

    async def open(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.addScriptToEvaluateOnNewDocument", source=CATCH_TERMINAL)
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def text(self) -> str:
        return str(await self.evaluate(SCREEN_TEXT) or "")

    async def wait_for_text(self, *needles: str, timeout: float = 60.0) -> str:
        """The terminal's text once every needle is in it; AssertionError after ``timeout``
        with what was there."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.text()
            if all(n in text for n in needles):
                return text
            await asyncio.sleep(0.5)
        raise AssertionError(f"not on the page within {timeout:.0f} s: {needles}\n{text}")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> None:
        """Until ``expression`` is true on the page; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.evaluate(expression):
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"not true on the page within {timeout:.0f} s: {expression}")

    async def press(self, char: str) -> None:
        """A key typed into the terminal (xterm.js listens on its hidden textarea)."""
        await self.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
        code = f"Key{char.upper()}" if char.isalpha() else ""
        vk = ord(char.upper())
        for kind in ("keyDown", "keyUp"):
            params: dict[str, Any] = {"type": kind, "key": char, "code": code}
            params["windowsVirtualKeyCode"] = vk
            if kind == "keyDown":
                params["text"] = char
            await self.send("Input.dispatchKeyEvent", **params)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))

    async def close(self) -> None:
        if self.ws is not None:
            try:
                async with asyncio.timeout(5):
                    await self.send("Browser.close")
            except (RuntimeError, TimeoutError, aiohttp.ClientError):
                pass
            await self.ws.close()
            self.ws = None
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            # Its helpers (zygote, renderer, GPU process) share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
