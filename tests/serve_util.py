"""Test helpers for `fedc serve`: a real server process, tokens, bundles, raw HTTP requests,
and a fake server for the clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fedc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedc", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def issue_tokens(bundle: Path, state: Path, n: int) -> list[str]:
    out = fedc("serve", str(bundle), "--state", str(state), "--issue-tokens", str(n), "--json")
    assert out.returncode == 0, out.stderr
    return [t["token"] for t in json.loads(out.stdout)["tokens"]]


class Server:
    """`fedc serve` as a child process on 127.0.0.1 (stopped by its pid)."""

    def __init__(self, bundle: Path, state: Path, *flags: str, port: int | None = None,
                 log: Path | None = None, scheme: str = "http") -> None:
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "fedc", "serve", str(bundle), "--state", str(state),
                     "--port", str(self.port), *flags]
        self.log_path = log or state.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60, context: Any = None) -> Server:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.status(context=context)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, log: bool = False, context: Any = None) -> dict[str, Any]:
        url = self.url + "/api/v1/status" + ("?log=1" if log else "")
        with urllib.request.urlopen(url, timeout=10, context=context) as res:
            return json.loads(res.read())  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "log") and not self.log.closed:
            self.log.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request(url: str, method: str = "GET", body: bytes | None = None,
            token: str | None = None, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
    """(status, body) of one HTTP request; 4xx/5xx are returned, not raised."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, body, h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def load_client_module(bundle: Path) -> Any:
    """The bundle's fedc_client module (it imports fedc_runtime from the bundle folder)."""
    import importlib.util
    if "fedc_runtime" not in sys.modules:
        import fedc.runtime  # noqa: F401  (registers fedc_runtime, the same file the bundle has)
    spec = importlib.util.spec_from_file_location("fedc_client", bundle / "fedc_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fedc_client", module)
    spec.loader.exec_module(module)
    return module


@contextmanager
def not_http_server() -> Iterator[str]:
    """A URL whose port answers every connection with an SSH banner instead of HTTP."""
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)

        def answer() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()


@contextmanager
def fake_server(task: bytes, update: tuple[int, bytes], sha256: str) -> Iterator[str]:
    """A server that joins anyone, then answers every task request and update with these."""
    import http.server

    class Fake(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.endswith("/join"):
                self._reply(200, json.dumps({"client_id": "c", "manifest_sha256": sha256})
                            .encode())
            else:
                self._reply(*update)

        def do_GET(self) -> None:  # noqa: N802
            self._reply(200, task)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


TRAIN_TASK = {"status": "train", "round": 1, "model_version": 1, "seed": 3, "local_epochs": 1,
              "batch_size": 8}


def task_frame(meta: Any, count: int = 9610, fill: float = 0.0) -> bytes:
    """A task frame with this metadata (bytes: as they are) and `count` weights of `fill`."""
    import numpy as np

    body = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return struct.pack("<4sBBBBII", b"FEDC", 1, 1, 1, 0, len(body), count) + body + \
        b"\0" * (-len(body) % 4) + np.full(count, fill, "<f4").tobytes()
