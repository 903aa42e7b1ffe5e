"""A small Chrome DevTools Protocol driver for headless Chromium (the system's, not downloaded)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from .serve_util import free_port

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Page:
    """One page target over a DevTools WebSocket: commands, and the events seen so far."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect
        self._connection = connect(ws_url, max_size=None, open_timeout=30)
        self.ws = self._connection.__enter__()  # closed in close()
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})  # type: ignore[no-any-return]
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls seen so far."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:500])
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(" ".join(str(a.get("value", a.get("description")))
                                    for a in e["params"]["args"]))
        return out

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


class Chromium:
    """Headless Chromium with a fresh profile and a DevTools port; stopped by its pid."""

    def __init__(self, profile: Path, log: Path) -> None:
        exe = chromium_path()
        assert exe is not None, "chromium is not installed"
        self.port = free_port()
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}",
             "about:blank"], stdout=self.log, stderr=subprocess.STDOUT)

    def page(self, timeout: float = 60) -> Page:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "chromium exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",
                                            timeout=5) as res:
                    targets = json.loads(res.read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    page = Page(pages[0]["webSocketDebuggerUrl"])
                    page.send("Runtime.enable")
                    page.send("Page.enable")
                    return page
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("chromium's DevTools endpoint did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
