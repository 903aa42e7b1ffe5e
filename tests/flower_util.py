"""Test helpers for Flower: a SuperLink and SuperNodes as child processes on 127.0.0.1, `flwr run`.

Every process is started here with its own session and a log file, and stopped by its PID
(SIGTERM, then SIGKILL), after it the processes it started (found by walking /proc from its
PID). FLWR_HOME points into the test's tmp folder, runtime dependency installation (uv sync),
update checks and telemetry are off, and Ray keeps to the loopback. `Pki` makes a CA, a server
certificate for 127.0.0.1 and SuperNode keys, as the deployment guide (docs/flower.md) does.
"""

from __future__ import annotations

import datetime
import ipaddress
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


def descendants(pid: int) -> list[int]:
    """The PIDs of every process below `pid` (children first found first)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


class Proc:
    """One long-running child process, stopped by its PID (then whatever it left running)."""

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
        below = descendants(self.proc.pid) if self.alive() else []
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        for pid in below:  # e.g. a ServerApp still running when its SuperLink stopped
            if not gone(pid):
                _terminate(pid)
        if not self.log.closed:
            self.log.close()


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie left to an init that does not reap counts too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


class Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, and SuperNode key pairs."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedc test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).add_extension(san, False)
                .sign(ca_key, hashes.SHA256()))
        self.ca, self.cert = folder / "ca.crt", folder / "server.pem"
        self.key = folder / "server.key"
        self.ca.write_bytes(_pem(ca))
        self.cert.write_bytes(_pem(cert))
        self.key.write_bytes(_private(key, openssh=False))

    def node_key(self, name: str) -> tuple[Path, Path]:
        """A SuperNode's (private, public) key files: ECDSA P-384 in OpenSSH format."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1())
        private, public = self.folder / name, self.folder / f"{name}.pub"
        private.write_bytes(_private(key, openssh=True))
        private.chmod(0o600)
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH))
        return private, public


def _pem(cert: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _private(key: object, openssh: bool) -> bytes:
    from cryptography.hazmat.primitives import serialization
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt,  # type: ignore[attr-defined, no-any-return]
                             serialization.NoEncryption())


class SuperLink(Proc):
    """flower-superlink on 127.0.0.1, registered as connection `name` in FLWR_HOME; insecure,
    or with TLS from `pki` and (with `auth`) only registered SuperNodes admitted."""

    def __init__(self, home: Path, *, simulation: bool, name: str = "fedc-test",
                 pki: Pki | None = None, auth: bool = False) -> None:
        self.port, self.home, self.name, self.pki = free_port(), home, name, pki
        args = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if pki is None:
            args.append("--insecure")
        else:
            args += ["--ssl-ca-certfile", str(pki.ca), "--ssl-certfile", str(pki.cert),
                     "--ssl-keyfile", str(pki.key)]
        args += ["--simulation"] if simulation else []
        args += ["--enable-supernode-auth"] if auth else []
        super().__init__(args, flower_env(home), home / "superlink.log")
        security = 'insecure = true' if pki is None else f'root-certificates = "{pki.ca}"'
        with open(home / "config.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[superlink.{name}]\naddress = "127.0.0.1:{self.port}"\n{security}\n')
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        scheme = "http" if self.pki is None else "https"
        context = None
        if self.pki is not None:
            import ssl
            context = ssl.create_default_context(cafile=str(self.pki.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"flower-superlink exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health",
                                            timeout=2, context=context):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"flower-superlink did not start:\n{self.output()}")

    def register(self, public_key: Path) -> None:
        """`flwr supernode register KEY.pub CONNECTION`: admit that SuperNode."""
        out = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public_key),
                              self.name], env=flower_env(self.home), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "registered" in out.stdout, out.stdout + out.stderr


def supernode(home: Path, link: SuperLink, node_config: str, log_name: str,
              key: Path | None = None, extra: tuple[str, ...] = ()) -> Proc:
    """flower-supernode connected to `link`, its own runtime API on a free loopback port."""
    args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{link.port}",
            "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config,
            *extra]
    args += ["--insecure"] if link.pki is None else ["--root-certificates", str(link.pki.ca)]
    args += ["--auth-supernode-private-key", str(key)] if key else []
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
