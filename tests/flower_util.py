"""Test helpers for Flower: a SuperLink and SuperNodes as child processes on 127.0.0.1, `flwr run`.

Every process is started here with its own session and a log file, and stopped by its PID
(SIGTERM, then SIGKILL). FLWR_HOME points into the test's tmp folder, runtime dependency
installation (uv sync), update checks and telemetry are off, and Ray keeps to the loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.serve_util import free_port

BIN = Path(sys.executable).parent


def flower_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
            # Ray's node address: the loopback instead of the machine's outward interface
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Proc:
    """One long-running child process, stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.log_path = args, log
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        if not self.log.closed:
            self.log.close()


class SuperLink(Proc):
    """flower-superlink on 127.0.0.1 (insecure), registered as connection `name` in FLWR_HOME."""

    def __init__(self, home: Path, *, simulation: bool, name: str = "fedc-test") -> None:
        self.port, self.home, self.name = free_port(), home, name
        args = [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                "--port", str(self.port), "--disable-runtime-dependency-installation"]
        super().__init__(args + (["--simulation"] if simulation else []), flower_env(home),
                         home / "superlink.log")
        with open(home / "config.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[superlink.{name}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"flower-superlink exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"flower-superlink did not start:\n{self.output()}")


def supernode(home: Path, link: SuperLink, node_config: str, log_name: str) -> Proc:
    """flower-supernode connected to `link`, its own runtime API on a free loopback port."""
    args = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link.port}",
            "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config]
    return Proc(args, flower_env(home), home / log_name)


def flwr_run(app: Path, home: Path, link: SuperLink, config: dict[str, object],
             federation: str | None = None, timeout: float = 240) -> str:
    """`flwr run APP CONNECTION --stream -c ...`; returns its output (asserts it succeeded)."""
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
    args = [str(BIN / "flwr"), "run", str(app), link.name, "--stream", "-c", overrides]
    if federation:
        args += ["--federation-config", federation]
    out = subprocess.run(args, env=flower_env(home), capture_output=True, text=True,
                         timeout=timeout)
    text = out.stdout + out.stderr
    (home / "flwr-run.log").write_text(text)
    # flwr run exits 0 even when the ServerApp raised: look for Flower's error report too
    assert out.returncode == 0 and "ServerApp raised an exception" not in text, \
        f"flwr run failed ({out.returncode}):\n{text}"
    return text


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
