"""The Flower bridge: a Flower round's global model → one `fedc serve` round of edge clients →
their weighted mean and summed example count, returned to Flower (hierarchical FL).

`fedc serve BUNDLE --flower-superlink HOST:PORT` runs the usual edge server with a
BridgeCoordinator and starts one `flower-supernode` child whose node config names this server
(``fedc-serve``) and a token file (``fedc-serve-token-file``). When Flower sends that node a
train message, the generated app's ClientApp (runtime/python/fedc_flower.py, ``train_bridge``)
posts the global model here; the coordinator makes it the global model, opens a round with the
connected edge clients (browser, Node, Python), and when the round closes hands back
Σ n_k·w_k / Σ n_k and Σ n_k. Flower then weights this node by Σ n_k, so FedAvg over the
hierarchy equals FedAvg over every edge client. The bridge's own aggregation is always fedavg;
the federation's strategy runs upstream, in Flower's ServerApp.

Endpoints (bridge token, not a client token): ``POST /api/v1/bridge/round`` with a model frame
(meta ``flower_round``, ``local_epochs``, ``batch_size``) → ``{"round": r}``;
``GET /api/v1/bridge/round/{r}?wait=S`` → an update frame (meta ``num_examples``, ``clients``,
``train_loss``) once round r closed, 202 while it is open, 410 if a newer Flower round
superseded it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import UsageError
from .auth import hash_secret
from .protocol import ProtocolError, decode, encode, meta_int
from .rounds import Coordinator, Evaluator, ServeConfig, weighted_metric
from .state import strategy_state
from .store import Store

log = logging.getLogger("fedc.serve.bridge")

UNBOUNDED = 2**31 - 1  # the bridge runs as many rounds as Flower asks for
MAX_WAIT = 30.0  # seconds one result request may block


@dataclass(frozen=True, eq=False)  # holds an array
class EdgeResult:
    """A closed edge round: the weighted mean of its updates (None: superseded) and Σ examples."""

    round: int
    weights: np.ndarray | None
    num_examples: int
    clients: int
    train_loss: float | None


class BridgeCoordinator(Coordinator):
    """A Coordinator whose rounds are opened by upstream (Flower) models, not by its own clock."""

    def __init__(self, store: Store, manifest: dict[str, Any], config: ServeConfig,
                 initial_weights: Callable[[], np.ndarray], evaluate: Evaluator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pending: np.ndarray | None = None  # an upstream model waiting for edge clients
        self.results: dict[int, EdgeResult] = {}
        config = dataclasses.replace(config, rounds=UNBOUNDED, strategy="fedavg",
                                     strategy_options={})
        super().__init__(store, manifest, config, initial_weights, evaluate, clock)
        self.changed = threading.Condition(self.lock)

    def start_upstream(self, weights: np.ndarray, local_epochs: int, batch_size: int) -> int:
        """Make `weights` the global model of the next edge round; returns that round's number."""
        with self.lock:
            if self.open is not None:  # Flower gave up on it and moved on: so do we
                self._supersede()
            self.config = dataclasses.replace(self.config, local_epochs=local_epochs,
                                              batch_size=batch_size)
            self.pending = np.ascontiguousarray(weights, np.float32)
            self._maybe_open()
            log.info("upstream model for edge round %d (%s)", self.round,
                     "open" if self.open is not None else "waiting for clients")
            return self.round

    def wait_result(self, edge_round: int, timeout: float) -> EdgeResult | None:
        """The round's result once it closed (waiting up to `timeout` s), else None."""
        with self.changed:
            self.changed.wait_for(lambda: edge_round in self.results, timeout)
            return self.results.get(edge_round)

    # --- hooks into the coordinator (called with the lock held) ----------------------------
    def _maybe_open(self) -> None:
        if self.pending is None or self.open is not None:
            return
        if len(self._connected()) < self.config.min_clients:
            return
        self._adopt(self.pending)
        super()._maybe_open()
        if self.open is not None:
            self.pending = None

    def _adopt(self, weights: np.ndarray) -> None:
        """Store the upstream model as the next global model version."""
        version = self.version + 1
        with self.store.transaction():
            sha = hashlib.sha256(np.ascontiguousarray(weights, "<f4").tobytes()).hexdigest()
            self.store.add_model(version, self.round - 1, weights, sha, self.clock(), {},
                                 strategy_state(self.strategy))
            self.store.set_meta("version", version)
        self.version, self.weights = version, weights

    def _aggregate(self) -> None:
        r = self.open
        assert r is not None
        stored = self.store.updates(r.round)
        super()._aggregate()
        counts = [u.num_examples for u in stored]
        loss = weighted_metric([u.train_loss for u in stored], np.array(counts, np.float64))
        self.results[r.round] = EdgeResult(r.round, self.weights.copy(), int(sum(counts)),
                                           len(stored), loss)
        self.changed.notify_all()

    def _supersede(self) -> None:
        r = self.open
        assert r is not None
        with self.store.transaction():
            self.store.finish_round(r.round, self.clock(), "superseded", None, None)
            self.store.set_meta("round", r.round + 1)
        log.warning("edge round %d superseded by a new upstream round", r.round)
        self.results[r.round] = EdgeResult(r.round, None, 0, 0, None)
        self.round, self.open = r.round + 1, None
        self.changed.notify_all()


# --- HTTP -----------------------------------------------------------------------------------------

def bridge_routes(bridge: BridgeCoordinator, token: str) -> list[Any]:
    """Starlette routes for the bridge endpoints, guarded by `token` (compared in constant time)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from .app import _error, _read_body
    from .protocol import CONTENT_TYPE, MAX_META

    expected = hash_secret(token)
    limit = 16 + MAX_META + 4 * bridge.num_params + 1024

    def authorised(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(hash_secret(given.strip()),
                                                                  expected)

    async def start(request: Request) -> Response:
        if not authorised(request):
            return _error(ProtocolError(401, "unauthorized", "a bridge token is required"))
        try:
            weights, epochs, batch = _upstream(await _read_body(request, limit),
                                               bridge.num_params)
        except ProtocolError as err:
            return _error(err)
        rnd = await run_in_threadpool(bridge.start_upstream, weights, epochs, batch)
        return JSONResponse({"round": rnd})

    async def result(request: Request) -> Response:
        if not authorised(request):
            return _error(ProtocolError(401, "unauthorized", "a bridge token is required"))
        try:
            rnd = int(request.path_params["round"])
            wait = float(request.query_params.get("wait", "0"))
            if math.isnan(wait):  # a NaN timeout made Condition.wait_for block for ever
                raise ValueError(wait)
        except ValueError:
            return _error(ProtocolError(400, "bad_request", "round and wait must be numbers"))
        wait = min(max(wait, 0.0), MAX_WAIT)
        res = await run_in_threadpool(bridge.wait_result, rnd, wait)
        if res is None:
            return JSONResponse({"status": "open", "round": rnd}, status_code=202)
        if res.weights is None:
            return _error(ProtocolError(410, "superseded", f"edge round {rnd} was superseded"))
        meta = {"round": rnd, "num_examples": res.num_examples, "clients": res.clients,
                "train_loss": res.train_loss}
        return Response(encode("update", meta, res.weights), media_type=CONTENT_TYPE)

    return [Route("/api/v1/bridge/round", start, methods=["POST"]),
            Route("/api/v1/bridge/round/{round}", result, methods=["GET"])]


def _upstream(body: bytes, num_params: int) -> tuple[np.ndarray, int, int]:
    """(weights, local epochs, batch size) of an upstream model frame, or a ProtocolError."""
    frame = decode(body)
    if frame.kind != "model":
        raise ProtocolError(400, "bad_kind", f"expected a model frame, got {frame.kind}")
    epochs = meta_int(frame.meta, "local_epochs", 1, 10_000)
    batch = meta_int(frame.meta, "batch_size", 1, 1 << 20)
    if frame.values.size != num_params or not np.isfinite(frame.values).all():
        raise ProtocolError(422, "bad_model", f"expected {num_params} finite float32 values, "
                                              f"got {frame.values.size}")
    return frame.values, epochs, batch


# --- `fedc serve --flower-superlink` -------------------------------------------------------------

def supernode_command(args: argparse.Namespace, url: str, token_file: Path) -> list[str]:
    """The flower-supernode command line of the bridge node."""
    cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink",
           args.flower_superlink, "--host", "127.0.0.1", "--port", str(_free_port()),
           "--node-config", f'fedc-serve="{url}" fedc-serve-token-file="{token_file}"']
    if args.flower_insecure:
        cmd.append("--insecure")
    elif args.flower_root_certificates:
        cmd += ["--root-certificates", args.flower_root_certificates]
    if args.flower_auth_key:
        cmd += ["--auth-supernode-private-key", args.flower_auth_key]
    return cmd


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_flags(args: argparse.Namespace) -> None:
    if shutil.which("flower-supernode", path=str(Path(sys.executable).parent)) is None and \
            shutil.which("flower-supernode") is None:
        raise UsageError.at("--flower-superlink needs Flower: pip install \"fedc[flower]\"")
    if args.flower_insecure and (args.flower_root_certificates or args.flower_auth_key):
        raise UsageError.at("--flower-insecure cannot be combined with TLS certificates or "
                            "node authentication (Flower requires TLS for both)")
    for f in (args.flower_root_certificates, args.flower_auth_key):
        if f and not Path(f).is_file():
            raise UsageError.at(f"no such file: {f}")


def serve_bridge(args: argparse.Namespace) -> dict[str, Any]:
    """`fedc serve … --flower-superlink`: the edge server plus its flower-supernode child."""
    from .commands import _check_port, _load_bundle, _tls

    _check_flags(args)
    tls = _tls(args)
    args.port = _check_port(args.host, args.port)
    with tempfile.TemporaryDirectory(prefix="fedc-bridge-") as scratch:  # mode 0700
        bundle_dir, wasm, manifest = _load_bundle(args, Path(scratch))
        return _run_bridge(args, bundle_dir, wasm, manifest, tls, Path(scratch))


def _coordinator(args: argparse.Namespace, wasm: bytes,
                 manifest: dict[str, Any]) -> BridgeCoordinator:
    from ..runtime import Model
    from .commands import _config, _evaluator

    model = Model(wasm, manifest)
    evaluate = _evaluator(args, model.clone()) if args.eval_data else None

    def initial() -> np.ndarray:
        model.init_weights(args.seed)
        return model.get_weights()  # type: ignore[no-any-return]

    config = _config(args, manifest)
    return BridgeCoordinator(Store.for_server(args.state), manifest, config, initial, evaluate)


def _run_bridge(args: argparse.Namespace, bundle_dir: Path, wasm: bytes,
                manifest: dict[str, Any], tls: dict[str, str], scratch: Path) -> dict[str, Any]:
    import uvicorn

    from .app import build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bridge = _coordinator(args, wasm, manifest)
    token = secrets.token_urlsafe(32)
    app = build_app(bridge, bundle_dir if (bundle_dir / "index.html").is_file() else None)
    app.router.routes[0:0] = bridge_routes(bridge, token)  # before the bundle's catch-all mount
    token_file = scratch / "bridge.token"
    token_file.write_text(token)
    os.chmod(token_file, 0o600)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    url = f"{'https' if tls else 'http'}://{host}:{args.port}"
    node = subprocess.Popen(supernode_command(args, url, token_file), start_new_session=True)
    print(f"fedc: bridging {manifest['model']} edge clients at {url}/ into the Flower "
          f"SuperLink {args.flower_superlink} (flower-supernode pid {node.pid}); "
          f"state {args.state}", file=sys.stderr, flush=True)
    # uvicorn re-raises the SIGTERM it shut down for once it restored this handler: an exception
    # rather than the default action, so the `finally` below still stops the child
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                    **tls)  # type: ignore[arg-type]
    finally:
        _stop(node)
    return bridge.status()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(node: subprocess.Popen[bytes]) -> None:
    """Stop the flower-supernode child by its PID (SIGTERM, then SIGKILL after 20 s)."""
    if node.poll() is None:
        node.terminate()
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
