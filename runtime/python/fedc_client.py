"""fedc's Python edge client: a bundle's model + a local .npz → local training rounds for a server.

Standalone (numpy, wasmtime via fedc_runtime, and the standard library's urllib) so it ships
inside client bundles beside fedc_runtime.py. The same steps as runtime/js/fedc-protocol.js:
a task's weights, seed and epochs give bit-identical weights in both (docs/protocol.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fedc_runtime import Model, RuntimeDataError, Shuffle, _conform

FRAME_TYPE = "application/x-fedc-frame"
_HEADER = struct.Struct("<4sBBBBII")
_KINDS = {"task": 1, "update": 2, "model": 3}
Event = Callable[[dict[str, Any]], None]


class ClientError(Exception):
    """The server refused a request or cannot be reached; `status` is the HTTP status (or 0)."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


# --- frames ---------------------------------------------------------------------------------------

def encode_frame(kind: str, meta: dict[str, Any], values: np.ndarray | None = None) -> bytes:
    body = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    vals = np.zeros(0, "<f4") if values is None else np.ascontiguousarray(values, "<f4").ravel()
    pad = b"\0" * (-len(body) % 4)
    return _HEADER.pack(b"FEDC", 1, _KINDS[kind], 1, 0, len(body), vals.size) + body + pad + \
        vals.tobytes()


def decode_frame(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    if len(data) < _HEADER.size or data[:4] != b"FEDC":
        raise ClientError("the server sent something that is not a fedc frame")
    _, _, _, dtype, _, meta_len, count = _HEADER.unpack_from(data)
    start = _HEADER.size + meta_len + (-meta_len % 4)
    if dtype != 1 or len(data) != start + 4 * count:
        raise ClientError("the server sent a damaged frame")
    try:
        meta = json.loads(data[_HEADER.size:_HEADER.size + meta_len])
    except ValueError:  # UnicodeDecodeError too
        raise ClientError("the server sent a damaged frame (its metadata is not JSON)") from None
    if not isinstance(meta, dict):
        raise ClientError("the server sent a damaged frame (its metadata is not a JSON object)")
    return meta, np.frombuffer(data, "<f4", count, start).astype(np.float32)


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**53


def check_task(meta: dict[str, Any], values: np.ndarray, num_params: int) -> dict[str, Any]:
    """A task frame's metadata as docs/protocol.md states it, or a ClientError naming the field
    (a server that sends anything else would make local_train fail with a traceback)."""
    status = meta.get("status")
    if status == "wait":
        retry = meta.get("retry_after", 1.0)
        if isinstance(retry, bool) or not isinstance(retry, int | float) or \
                not 0 <= retry < float("inf"):
            raise ClientError(f"the server's task says wait with retry_after {retry!r}, not a "
                              "number of seconds ≥ 0")
    elif status == "train":
        for key, low in (("seed", 0), ("local_epochs", 1), ("batch_size", 1)):
            if not _is_int(meta.get(key), low):
                raise ClientError(f"the server's training task has {key} {meta.get(key)!r}, "
                                  f"not an integer ≥ {low}")
        missing = [k for k in ("round", "model_version") if k not in meta]
        if missing:
            raise ClientError(f"the server's training task has no {' or '.join(missing)}")
        if values.size != num_params:
            raise ClientError(f"the server's training task has {values.size} weights, but this "
                              f"bundle's model has {num_params}")
        if not np.isfinite(values).all():
            raise ClientError("the server's training task has NaN or Inf weights")
    elif status != "done":
        raise ClientError(f"the server sent a task with status {status!r} (expected 'train', "
                          "'wait' or 'done')")
    return meta


# --- data and local training ----------------------------------------------------------------------

def load_data(path: str | Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Arrays x and y of a .npz file as the model's dtypes (float32 rows, int32 or float32 y)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise RuntimeDataError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise RuntimeDataError(f"{path}: a data file needs arrays 'x' and 'y'; it has: "
                               f"{', '.join(sorted(arrays)) or 'none'}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 0 or len(x) != len(y):
        raise RuntimeDataError(f"{path}: 'x' has {x.shape} but 'y' has {y.shape}")
    if len(x) == 0:
        raise RuntimeDataError(f"{path}: 'x' and 'y' have no rows")
    for name, arr in (("x", x), ("y", y)):
        if arr.dtype.kind not in "biuf":
            raise RuntimeDataError(f"{path}: {name!r} must hold numbers, not {arr.dtype}")
    x = x.reshape(len(x), -1).astype(np.float32)  # float64 → float32 rounds as JS does
    target = manifest["targets"][0]
    if target["dtype"] != "i32":
        return x, y.astype(np.float32)
    try:  # the runtime's own check: a cast would truncate 2.5 to 2 and wrap 2**32 + 3 to 3
        return x, _conform(y, target, "target")
    except RuntimeDataError as exc:
        raise RuntimeDataError(f"{path}: {exc}") from None


def local_train(model: Model, weights: np.ndarray, x: np.ndarray, y: np.ndarray,
                task: dict[str, Any]) -> tuple[np.ndarray, float, dict[str, float]]:
    """Evaluate the global weights on the local data, then train with the task's seed stream."""
    model.set_weights(weights)  # a FedProx anchor, if any, moves with them
    model.reset_optimizer()
    evaluation = model.evaluate(x, y)
    seed = int(task["seed"])
    stream = Shuffle(seed)
    model.dropout_seed, model.dropout_step = seed & 0xFFFFFFFF, 0  # this task's dropout masks
    loss = float("nan")
    for _ in range(int(task["local_epochs"])):
        loss = model.train_epoch(x, y, int(task["batch_size"]), stream)
    return model.get_weights(), loss, evaluation


# --- the protocol client --------------------------------------------------------------------------

class Client:
    """Talks to one server for one model; retries while the server is unreachable."""

    def __init__(self, server: str, token: str, model: Model, *, retry_for: float = 120.0,
                 cafile: str | None = None, on_event: Event | None = None) -> None:
        self.server = _base_url(server)
        self.token, self.model, self.retry_for = _check_token(token), model, retry_for
        try:
            self.context = ssl.create_default_context(cafile=cafile) if cafile else None
        except OSError as exc:  # ssl.SSLError too: a file that is not a PEM certificate
            raise ClientError(f"cannot use {cafile} as a CA certificate: "
                              f"{exc.strerror or exc}") from None
        self.on_event: Event = on_event or (lambda e: None)
        self.client_id: str | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = FRAME_TYPE
        started, wait, retried = time.monotonic(), 0.25, False
        while True:
            req = urllib.request.Request(self.server + path, body, headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=60, context=self.context) as res:
                    answer = bytes(res.read())
                if retried:  # the server answers again (the JS client says the same)
                    self.on_event({"event": "reconnected"})
                return answer
            except urllib.error.HTTPError as err:
                if retried:
                    self.on_event({"event": "reconnected"})
                raise _refusal(err) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError,
                    http.client.HTTPException) as exc:  # HTTPException: e.g. a cut-off reply
                reason = f"not an HTTP answer ({type(exc).__name__})" if isinstance(
                    exc, http.client.HTTPException) else getattr(exc, "reason", exc)
                if time.monotonic() - started > self.retry_for:
                    raise ClientError(f"cannot reach {self.server}: {reason}") from None
                self.on_event({"event": "retry", "reason": str(reason)})
                retried = True
                time.sleep(wait)
                wait = min(wait * 2, 4.0)

    def join(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = json.loads(self._request("POST", "/api/v1/join", b""))
        except ValueError:
            info = {}
        if not isinstance(info, dict) or "client_id" not in info:
            raise ClientError(f"{self.server} is not a fedc server (its join reply is not "
                              "a fedc join object)")
        if info.get("manifest_sha256") != self.model.manifest["wasm"]["sha256"]:
            raise ClientError(f"this bundle's model ({self.model.manifest['model']}) is not the "
                              f"server's ({info.get('model')})")
        self.client_id = info["client_id"]
        self.on_event({"event": "joined", **info})
        return info

    def task(self) -> tuple[dict[str, Any], np.ndarray]:
        meta, values = decode_frame(self._request("GET", "/api/v1/task"))
        return check_task(meta, values, self.model.num_params), values

    def send(self, task: dict[str, Any], weights: np.ndarray, rows: int, train_loss: float,
             evaluation: dict[str, float]) -> dict[str, Any]:
        meta = {"round": task["round"], "model_version": task["model_version"],
                "num_examples": rows, "train_loss": train_loss, "eval": evaluation}
        body = self._request("POST", "/api/v1/update", encode_frame("update", meta, weights))
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ClientError(f"{self.server} answered the update with {body[:40]!r}, not a "
                              "fedc reply (a JSON object)")
        return reply

    def step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """One poll: train and send if there is a task; returns the event it produced."""
        task, weights = self.task()
        if task["status"] != "train":
            return {"event": task["status"], **task}
        started = time.perf_counter()
        new, loss, evaluation = local_train(self.model, weights, x, y, task)
        seconds = time.perf_counter() - started
        try:
            reply = self.send(task, new, len(y), loss, evaluation)
        except ClientError as err:
            if err.status not in (403, 409):  # late or superseded: the next round is ours
                raise
            return {"event": "skipped", "round": task["round"], "reason": str(err)}
        return {"event": "accepted", "round": task["round"], "train_loss": loss,
                "local_loss": evaluation["loss"], "local_accuracy": evaluation.get("accuracy"),
                "train_seconds": seconds, "duplicate": reply.get("duplicate", False)}

    def run(self, x: np.ndarray, y: np.ndarray) -> dict[str, int]:
        """Take part until the server says the federation is done."""
        self.join()
        summary = {"rounds": 0, "accepted": 0, "skipped": 0}
        while True:
            event = self.step(x, y)
            if event["event"] == "wait":
                time.sleep(float(event.get("retry_after", 1.0)))
                continue
            if event["event"] == "done":
                self.on_event({"event": "done", **summary})
                return summary
            summary["rounds"] += 1
            summary["accepted" if event["event"] == "accepted" else "skipped"] += 1
            self.on_event(event)


def _check_token(token: str) -> str:
    """A token holds printable ASCII only, as fedc-client.js's checkToken requires: another
    character cannot go into an HTTP header (a pasted "…" made urllib raise UnicodeEncodeError,
    which the join reported as 'not a fedc server')."""
    bad = next((c for c in token if not "\x21" <= c <= "\x7e"), None)
    if bad is not None:
        raise ClientError(f"the token contains {json.dumps(bad, ensure_ascii=False)}, which no "
                          "fedc token has (a token is fedc1.<id>.<secret>, as fedc serve "
                          "--issue-tokens printed it)")
    return token


def _base_url(server: str) -> str:
    """The server's URL without a trailing slash; a typo in it is an error, not a retry."""
    try:
        parts = urllib.parse.urlsplit(server)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ClientError(f"the server URL {server!r} is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"the server URL {server!r} is not an http:// or https:// URL")
    return server.rstrip("/")


def _refusal(err: urllib.error.HTTPError) -> ClientError:
    try:
        body = json.loads(err.read())
    except (ValueError, OSError, http.client.HTTPException):  # not JSON, or cut off
        body = None
    if not isinstance(body, dict):  # e.g. a proxy's page, or [1, 2]
        return ClientError(f"HTTP {err.code} {err.reason}", err.code)
    return ClientError(str(body.get("reason", err)), err.code, str(body.get("error", "")))


def _report(as_json: bool) -> Event:
    def show(e: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(e), flush=True)
        elif e["event"] == "accepted":
            acc = e.get("local_accuracy")
            print(f"round {e['round']}: train loss {e['train_loss']:.4f}, global model on local "
                  f"data: accuracy {'-' if acc is None else f'{acc:.4f}'}", flush=True)
        else:
            print(e["event"] + (f": {e['reason']}" if "reason" in e else ""), flush=True)
    return show


def _seconds(text: str) -> float:
    """--retry-for: a number ≥ 0 (inf: retry for ever); nan compared false and retried for ever."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds ≥ 0, got {text!r}")
    return value


def main(bundle_dir: str | Path, argv: list[str] | None = None) -> int:
    """`python client.py --server URL --token T --data FILE.npz` in a bundle folder."""
    p = argparse.ArgumentParser(prog="client.py", description="Join a fedc federation.")
    p.add_argument("--server", required=True, help="the server's base URL, e.g. http://host:8080")
    p.add_argument("--token", required=True, help="this client's token (fedc1.<id>.<secret>)")
    p.add_argument("--data", required=True, help="a .npz file with arrays x and y")
    p.add_argument("--cafile", help="CA certificate to trust for an https server")
    p.add_argument("--retry-for", type=_seconds, default=120.0,
                   help="seconds to keep retrying while the server is unreachable")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    args = p.parse_args(argv)
    try:
        model = Model.load(bundle_dir)
        x, y = load_data(args.data, model.manifest)
        try:  # data that does not fit the model: say so now, not once sampled for a round
            model.evaluate(x, y)
        except RuntimeDataError as exc:
            raise RuntimeDataError(f"{args.data}: {exc}") from None
        client = Client(args.server, args.token, model, retry_for=args.retry_for,
                        cafile=args.cafile, on_event=_report(args.json))
        client.run(x, y)
    except (ClientError, RuntimeDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
