"""fedc's Flower glue: Flower Messages + the compiled model → a ClientApp that trains and evaluates
in Wasm, and a ServerApp that runs Flower's own strategy (Flower 1.42 Message API).

Copied verbatim into every app that `fedc compile --target flower` writes, beside fedc_runtime.py,
manifest.json and model_wasm.py; it needs flwr, numpy and wasmtime. fedc itself is needed only
where a named dataset is loaded: by nodes whose data source is ``partition-id`` and by the
server's central evaluation.

A node's data source comes from its node config, so one app runs in simulation and deployment:

- ``data-path="/data/mine.npz"``: arrays ``x``, ``y`` (training) and optionally ``x_test``,
  ``y_test`` (evaluation; without them the node evaluates on its training data);
- ``partition-id=K num-partitions=N`` (what the simulation engine sets): partition K of the run
  config's ``dataset``, cut exactly as `fedc simulate` cuts it (same loader, seed and scheme);
- ``fedc-serve="http://host:port" fedc-serve-token-file="/path"``: a bridge node: the round is
  handed to a `fedc serve` federation of edge clients, whose pre-aggregated model comes back with
  the sum of their example counts (hierarchical FL; see docs/flower.md).

A client trains as `fedc simulate`'s clients do: global weights in, optimizer state zeroed,
``local-epochs`` shuffled passes ordered by ``default_rng([seed, 2, round, client])``.
"""

from __future__ import annotations

import base64
import inspect
import json
import math
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower_strategies

from . import model_wasm
from .fedc_runtime import Model, RuntimeDataError, _conform

HERE = Path(__file__).resolve().parent
TRAIN_STREAM = 2  # fedc.fl.faults.TRAIN: the second word of every client's shuffle seed

# fedc's strategy names → Flower's classes; the run config's strategy-<keyword> entries are the
# class's keywords in Flower's spelling with dashes, e.g. strategy-server-momentum = 0.9
STRATEGIES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM", "fedadam": "FedAdam",
              "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad", "median": "FedMedian",
              "trimmed_mean": "FedTrimmedAvg", "krum": "Krum", "multikrum": "MultiKrum"}


class AppError(Exception):
    """A setting or a data file this app cannot work with (the message says which)."""


# --- the model ------------------------------------------------------------------------------------

_CACHE: dict[Any, Any] = {}


_RECOMPILE = "compile the app again (fedc compile --target flower)"


def manifest() -> dict[str, Any]:
    if "manifest" not in _CACHE:
        path = HERE / "manifest.json"
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # a JSONDecodeError or UnicodeDecodeError too
            raise AppError(f"the app's {path.name} cannot be read ({exc}): {_RECOMPILE}") \
                from None
        if not isinstance(found, dict):
            raise AppError(f"the app's {path.name} is not a fedc manifest: {_RECOMPILE}")
        _CACHE["manifest"] = found
    return _CACHE["manifest"]  # type: ignore[no-any-return]


def model() -> Model:
    """This process's Wasm instance (compiled once; ClientApp calls reuse it)."""
    if "model" not in _CACHE:
        try:
            wasm = base64.b64decode(model_wasm.WASM_BASE64, validate=True)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise AppError(f"the app's model_wasm.py does not hold the module in base64 ({exc}): "
                           f"{_RECOMPILE}") from None
        try:
            _CACHE["model"] = Model(wasm, manifest())
        except RuntimeDataError as exc:  # e.g. a manifest.json from another model
            raise AppError(f"the app's model_wasm.py and manifest.json do not fit together "
                           f"({exc}): {_RECOMPILE}") from None
    return _CACHE["model"]  # type: ignore[no-any-return]


def to_record(weights: np.ndarray) -> ArrayRecord:
    """A flat weight vector (manifest order) → one named Array per parameter tensor."""
    out, start = {}, 0
    for p in manifest()["params"]:
        size = int(np.prod(p["shape"], dtype=np.int64))
        out[p["name"]] = Array(np.ascontiguousarray(weights[start:start + size], np.float32)
                               .reshape(p["shape"]))
        start += size
    return ArrayRecord(out)


def from_record(record: ArrayRecord) -> np.ndarray:
    """An ArrayRecord with every parameter tensor by name → the flat float32 vector."""
    parts = []
    for p in manifest()["params"]:
        if p["name"] not in record:
            raise AppError(f"the model's arrays lack parameter {p['name']!r} "
                           f"(got {', '.join(record.keys()) or 'none'})")
        a = np.asarray(record[p["name"]].numpy(), np.float32)
        if list(a.shape) != list(p["shape"]):
            raise AppError(f"parameter {p['name']!r} has shape {list(a.shape)}, "
                           f"the model's is {p['shape']}")
        parts.append(a.reshape(-1))
    return np.concatenate(parts)


# --- a node's data --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeData:
    client: int  # the client number in shuffle seeds (the partition id when there is one)
    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def _cast(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    target = manifest()["targets"][0]["dtype"]
    return (np.ascontiguousarray(x, np.float32),
            np.ascontiguousarray(y, np.int32 if target == "i32" else np.float32))


def _from_file(path: str, client: int) -> NodeData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise AppError(f"data-path {path}: cannot read it as a .npz file ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise AppError(f"data-path {path}: needs arrays 'x' and 'y' "
                       f"(has {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, lacking = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise AppError(f"data-path {path}: has {given!r} but not {lacking!r} (give both to "
                       "evaluate on them, or neither to evaluate on 'x' and 'y')")
    x, y = _checked(path, arrays, "x", "y")
    xe, ye = _checked(path, arrays, "x_test", "y_test") if "x_test" in arrays else (x, y)
    return NodeData(client, x, y, xe, ye)


def _checked(path: str, arrays: Mapping[str, np.ndarray], xk: str,
             yk: str) -> tuple[np.ndarray, np.ndarray]:
    """A node file's examples and labels through the runtime's own checks: a cast to the
    module's dtypes cut 2.5 to class 2, wrapped 2**32 + 3 to 3 and read NaN as -2**31."""
    x, y = arrays[xk], arrays[yk]
    if len(manifest()["inputs"]) != 1:
        raise AppError(f"data-path {path}: the model has {len(manifest()['inputs'])} inputs; a "
                       "node's .npz file provides one ('x')")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise AppError(f"data-path {path}: {xk!r} has shape {list(x.shape)} but {yk!r} has "
                       f"{list(y.shape)} (one label per example)")
    if not len(x):
        raise AppError(f"data-path {path}: {xk!r} and {yk!r} have no rows")
    for name, arr in ((xk, x), (yk, y)):
        if arr.dtype.kind not in "biuf":
            raise AppError(f"data-path {path}: {name!r} must hold numbers, not {arr.dtype}")
    try:
        xs = _conform(x.astype(np.float32) if x.dtype.kind == "b" else x,
                      manifest()["inputs"][0], "input")
        return xs, model()._target(y, len(xs))  # also the class labels' range
    except RuntimeDataError as exc:
        raise AppError(f"data-path {path}: {exc} (arrays {xk!r}, {yk!r})") from None


def _from_partition(run: Mapping[str, Any], pid: int, parts: int) -> NodeData:
    """Partition `pid` of `parts` of the run's dataset, as `fedc simulate` cuts it."""
    data = load_dataset(run)
    try:
        from fedc.fl.partition import partition
    except ImportError:
        raise AppError("a node with a partition-id needs fedc installed "
                       "(pip install fedc), or give it data-path=FILE.npz") from None
    if not 0 <= pid < parts:
        raise AppError(f"partition-id {pid} is outside 0..{parts - 1} (num-partitions {parts})")
    idx = partition(data.y_train, parts, str(run.get("partition", "iid")), int(run["seed"]))[pid]
    test = np.array_split(np.arange(len(data.y_test)), parts)[pid]
    x, y = _cast(data.x_train[idx], data.y_train[idx])
    xe, ye = _cast(data.x_test[test], data.y_test[test])
    return NodeData(pid, x, y, xe, ye)


def load_dataset(run: Mapping[str, Any]) -> Any:
    """The run config's dataset through fedc's loaders (train/test split by seed)."""
    spec = str(run.get("dataset", ""))
    if not spec:
        raise AppError("the run config names no dataset: set dataset (flwr run . -c "
                       "'dataset=\"digits\"') or give each node data-path=FILE.npz")
    try:
        from fedc.data import load_dataset as fedc_load
        from fedc.train import check_fits
    except ImportError:
        raise AppError(f"loading dataset {spec!r} needs fedc installed (pip install fedc)") \
            from None
    key = ("dataset", spec, int(run["seed"]), float(run["test-fraction"]))
    if key not in _CACHE:
        data = fedc_load(spec, seed=key[2], test_fraction=key[3], task=manifest()["task"])
        check_fits(manifest(), data)
        _CACHE[key] = data
    return _CACHE[key]


def _node_integer(node: Mapping[str, Any], key: str) -> int:
    """A node config count: 1.7 was cut to partition 1 and "a" was a ValueError."""
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise AppError(f"node config {key} must be an integer, got {value!r}")
    return value


def node_data(context: Context) -> NodeData:
    node, run = context.node_config, context.run_config
    key = ("node", tuple(sorted(node.items())), tuple(sorted(run.items())))
    if key not in _CACHE:
        if ("partition-id" in node) != ("num-partitions" in node) and "data-path" not in node:
            given, lacking = (("partition-id", "num-partitions") if "partition-id" in node
                              else ("num-partitions", "partition-id"))
            raise AppError(f"this node's config has {given} but not {lacking} (start it with "
                           "--node-config 'partition-id=K num-partitions=N')")
        client = _node_integer(node, "partition-id") if "partition-id" in node else \
            _node_integer(node, "client-id") if "client-id" in node else context.node_id % 2**31
        if "data-path" in node:
            _CACHE[key] = _from_file(str(node["data-path"]), client)
        elif "partition-id" in node:
            _CACHE[key] = _from_partition(run, client, _node_integer(node, "num-partitions"))
        else:
            raise AppError("this node has no data source: start it with --node-config "
                           "'data-path=\"FILE.npz\"' or 'partition-id=K num-partitions=N' "
                           "(or 'fedc-serve=\"URL\"' for a fedc serve bridge)")
    return _CACHE[key]  # type: ignore[no-any-return]


# --- the ClientApp --------------------------------------------------------------------------------

def train_local(msg: Message, context: Context) -> Message:
    """One round of local training in Wasm; replies the new model and its example count."""
    m, data = model(), node_data(context)
    config, run = msg.content["config"], context.run_config
    weights = from_record(msg.content["arrays"])
    # run-time hyper-parameters: this round's values, else the module's (the instance is reused)
    opt = m.manifest["optimizer"]
    lr = float(run.get("lr", 0.0))  # 0: the module's own
    # FedProx sends its mu each round; under any other strategy the term is off, as in fedc
    # simulate's clients (the compiled mu applied: -c 'strategy="fedavg"' still trained FedProx)
    given = {"lr": lr if lr > 0 else None, "proximal_mu": config.get("proximal-mu", 0.0)}
    for name, value in given.items():
        if name in opt["hparams_order"]:
            m.set_hparam(name, float(opt["hparams"][name] if value is None else value))
    m.set_weights(weights)  # also sets FedProx's anchor when the module has one
    m.reset_optimizer()
    rnd = int(config["server-round"])
    rng = np.random.default_rng([int(config["seed"]), TRAIN_STREAM, rnd, data.client])
    losses = [m.train_epoch(data.x, data.y, int(config["batch-size"]), rng)
              for _ in range(int(config["local-epochs"]))]
    trained = m.get_weights()
    if not np.isfinite(trained).all():  # an error reply: Flower leaves it out of the aggregate
        raise AppError(f"training diverged on this node (round {rnd}): its weights hold NaN or "
                       "Inf, which would poison the global model (lower lr or the module's)")
    metrics = MetricRecord({"num-examples": len(data.y), "train-loss": float(np.mean(losses))})
    content = RecordDict({"arrays": to_record(trained), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """The received model's loss (and accuracy) on this node's evaluation data."""
    m, data = model(), node_data(context)
    m.write_weights(from_record(msg.content["arrays"]))
    result = m.evaluate(data.x_eval, data.y_eval)
    metrics = {"num-examples": len(data.y_eval), "eval-loss": float(result["loss"])}
    if "accuracy" in result:
        metrics["eval-acc"] = float(result["accuracy"])
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if "fedc-serve" in context.node_config:
            return train_bridge(msg, context)
        return train_local(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if "fedc-serve" in context.node_config:  # Flower counts this as a failed evaluation
            raise AppError("a fedc serve bridge node does not evaluate: its data stays on the "
                           "edge clients (use central evaluation, or fedc serve --eval-data)")
        return evaluate_local(msg, context)

    return app


# --- the bridge node: a round handed to `fedc serve` ----------------------------------------------

_HEADER = struct.Struct("<4sBBBBII")  # docs/protocol.md: magic, version, kind, dtype, -, meta, n
_KINDS = {"task": 1, "update": 2, "model": 3}


def encode_frame(kind: str, meta: dict[str, Any], values: np.ndarray) -> bytes:
    body = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    vals = np.ascontiguousarray(values, "<f4").ravel()
    return (_HEADER.pack(b"FEDC", 1, _KINDS[kind], 1, 0, len(body), vals.size) + body
            + b"\0" * (-len(body) % 4) + vals.tobytes())


def decode_frame(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    if len(data) < _HEADER.size or data[:4] != b"FEDC":
        raise AppError("fedc serve answered with something that is not a fedc frame")
    _, _, _, _, _, meta_len, count = _HEADER.unpack_from(data)
    start = _HEADER.size + meta_len + (-meta_len % 4)
    if len(data) != start + 4 * count:
        raise AppError("fedc serve answered with a damaged frame")
    meta = json.loads(data[_HEADER.size:_HEADER.size + meta_len])
    return meta, np.frombuffer(data, "<f4", count, start).astype(np.float32)


def _http(method: str, url: str, token: str, body: bytes | None = None,
          retry_for: float = 15.0) -> tuple[int, bytes]:
    """(status, body) of a request to fedc serve; retries while it cannot be reached."""
    req = urllib.request.Request(url, body, {"Authorization": f"Bearer {token}",
                                             "Content-Type": "application/x-fedc-frame"},
                                 method=method)
    deadline = time.monotonic() + retry_for
    while True:
        try:
            with urllib.request.urlopen(req, timeout=60.0) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as err:
            raise AppError(f"fedc serve refused {method} {url}: HTTP {err.code} "
                           f"{err.read()[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AppError(f"cannot reach fedc serve at {url}: "
                               f"{getattr(exc, 'reason', exc)}") from None
            time.sleep(0.5)


def train_bridge(msg: Message, context: Context) -> Message:
    """Hand the round to `fedc serve`'s edge clients; reply their weighted mean and Σ examples."""
    node, config = context.node_config, msg.content["config"]
    url = str(node["fedc-serve"]).rstrip("/")
    token = Path(str(node.get("fedc-serve-token-file", ""))).read_text().strip() \
        if "fedc-serve-token-file" in node else str(node.get("fedc-serve-token", ""))
    timeout = float(context.run_config.get("round-timeout", 600.0))
    meta = {"flower_round": int(config["server-round"]),
            "local_epochs": int(config["local-epochs"]),
            "batch_size": int(config["batch-size"]), "timeout": timeout}
    body = encode_frame("model", meta, from_record(msg.content["arrays"]))
    _, answer = _http("POST", f"{url}/api/v1/bridge/round", token, body)
    edge_round = int(json.loads(answer)["round"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, answer = _http("GET", f"{url}/api/v1/bridge/round/{edge_round}?wait=10", token)
        if status == 200:
            out, weights = decode_frame(answer)
            # the same keys as a local node's reply: Flower refuses to aggregate mixed records
            loss = out.get("train_loss")
            metrics = {"num-examples": int(out["num_examples"]),
                       "train-loss": float("nan") if loss is None else float(loss)}
            content = RecordDict({"arrays": to_record(weights), "metrics": MetricRecord(metrics)})
            return Message(content=content, reply_to=msg)
    raise AppError(f"fedc serve's round {edge_round} did not close within {timeout:g} s")


# --- the ServerApp --------------------------------------------------------------------------------

MAX_SEED = 2**32 - 1  # fedc's seeds (data splits, partitions, shuffles) are 32-bit


def _integer(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, int | float) and not isinstance(v, bool)
                      and math.isfinite(v) and ok(v))


# run config key → (what it must be, its test); batch-size's bound is the module's max_batch
RUN_CONFIG: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "num-server-rounds": ("an integer ≥ 1", _integer(1)),
    "min-nodes": ("an integer ≥ 1", _integer(1)),
    "fraction-train": ("a number in (0, 1]", _number(lambda v: 0 < v <= 1)),
    "fraction-evaluate": ("a number in [0, 1]", _number(lambda v: 0 <= v <= 1)),
    "local-epochs": ("an integer ≥ 1", _integer(1)),
    "batch-size": ("an integer in 1..{max_batch} (the module's batch buffers)", _integer(1)),
    "strategy": ("a string", lambda v: isinstance(v, str)),
    "seed": (f"an integer in 0..{MAX_SEED}", _integer(0, MAX_SEED)),
    "lr": ("a finite number ≥ 0 (0: the optimizer's own)", _number(lambda v: v >= 0)),
    "dataset": ("a string", lambda v: isinstance(v, str)),
    "partition": ("a string", lambda v: isinstance(v, str)),
    "test-fraction": ("a number between 0 and 1", _number(lambda v: 0 < v < 1)),
    "central-eval": ("true or false", lambda v: isinstance(v, bool)),
    "round-timeout": ("a finite number of seconds > 0", _number(lambda v: v > 0)),
    "out-dir": ("a string", lambda v: isinstance(v, str)),
}


# Flower keyword → (what it must be, its test): fedc's strategies' ranges. Flower checks only
# FedTrimmedAvg's beta: FedAdam's beta-1 = 1 made the global model NaN, MultiKrum's
# num-nodes-to-select = 0 failed in the first aggregation, a negative mu pushed nodes away
STRATEGY_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "proximal_mu": ("a finite number ≥ 0", _number(lambda v: v >= 0)),
    "server_learning_rate": ("a finite number > 0", _number(lambda v: v > 0)),
    "server_momentum": ("a number in [0, 1)", _number(lambda v: 0 <= v < 1)),
    "eta": ("a finite number > 0", _number(lambda v: v > 0)),
    "eta_l": ("a finite number > 0", _number(lambda v: v > 0)),
    "beta_1": ("a number in [0, 1)", _number(lambda v: 0 <= v < 1)),
    "beta_2": ("a number in [0, 1)", _number(lambda v: 0 <= v < 1)),
    "tau": ("a finite number > 0", _number(lambda v: v > 0)),
    "beta": ("a number in [0, 0.5)", _number(lambda v: 0 <= v < 0.5)),
    "num_malicious_nodes": ("an integer ≥ 0", _integer(0)),
    "num_nodes_to_select": ("an integer ≥ 1", _integer(1)),
}


def check_run_config(run: Mapping[str, Any]) -> None:
    """AppError naming the first run config value the app cannot work with, before any round:
    Flower checks only the keys, so local-epochs=0 trained nothing (a NaN loss), fraction-train=2
    waited forever for nodes, round-timeout=0 aggregated no replies, and seed=1.5 was cut to 1."""
    max_batch = int(manifest()["max_batch"])
    for key, (what, ok) in RUN_CONFIG.items():
        if key not in run:
            raise AppError(f"the run config has no {key} (pyproject.toml's [tool.flwr.app.config] "
                           "lost it: compile the app again)")
        value = run[key]
        if not ok(value) or (key == "batch-size" and value > max_batch):
            raise AppError(f"run config {key} must be {what.format(max_batch=max_batch)}, "
                           f"got {value!r}")

def make_strategy(run: Mapping[str, Any]) -> Any:
    """Flower's strategy object for the run config's fedc strategy name and options."""
    name = str(run["strategy"])
    if name not in STRATEGIES:
        raise AppError(f"unknown strategy {name!r} (expected one of {', '.join(STRATEGIES)})")
    cls = getattr(flower_strategies, STRATEGIES[name])
    options = {k[len("strategy-"):].replace("-", "_"): v for k, v in run.items()
               if k.startswith("strategy-")}
    valid = set(inspect.signature(cls).parameters)
    compiled = str(manifest()["federated"]["strategy"])
    if name != compiled and compiled in STRATEGIES:
        # Flower cannot drop a run config key, so the compiled strategy's options are still
        # there (fedavgm's server-momentum made -c 'strategy="fedavg"' an error): leave out
        # those the chosen class does not take
        theirs = inspect.signature(getattr(flower_strategies, STRATEGIES[compiled])).parameters
        options = {k: v for k, v in options.items() if k in valid or k not in theirs}
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        raise AppError(f"{cls.__name__} has no option(s) {', '.join(unknown)} "
                       f"(run config strategy-<option>)")
    for option, value in options.items():
        what, ok = STRATEGY_OPTIONS.get(option, ("", lambda v: True))
        if not ok(value):
            raise AppError(f"run config strategy-{option.replace('_', '-')} must be {what} "
                           f"({cls.__name__}), got {value!r}")
    nodes = int(run["min-nodes"])
    return cls(fraction_train=float(run["fraction-train"]),
               fraction_evaluate=float(run["fraction-evaluate"]), min_train_nodes=nodes,
               min_evaluate_nodes=nodes, min_available_nodes=nodes, **options)


def central_evaluator(run: Mapping[str, Any]) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Scores each global model on the held-out split of the run's dataset (`fedc simulate`'s)."""
    data, m = load_dataset(run), model()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        m.write_weights(from_record(arrays))
        result = m.evaluate(data.x_test, data.y_test)
        return MetricRecord({k: float(v) for k, v in result.items()})
    return evaluate


def out_dir(run: Mapping[str, Any]) -> Path | None:
    """The run config's out-dir, made before the first round (a folder that cannot be written
    failed after the last, losing the run); AppError unless it is an absolute path."""
    given = str(run.get("out-dir", ""))
    if not given:
        return None
    out = Path(given).expanduser()
    if not out.is_absolute():  # it was taken from the SuperLink's working folder, not the user's
        raise AppError(f"run config out-dir must be an absolute path, got {given!r} (the "
                       "ServerApp does not run in the folder flwr run was started from)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".fedc-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = "it exists and is not a directory" if isinstance(exc, FileExistsError) else \
            exc.strerror or str(exc)
        raise AppError(f"cannot write the run's results to out-dir {out}: {why}") from None
    return out


def save_run(out: Path, result: Any, seconds: float, initial: ArrayRecord) -> None:
    """weights.npy (flat float32, manifest order) and history.json (every round's metrics).
    The global model is `initial` when no round was aggregated (every node failed): Flower's
    result then has no arrays, and saving raised after the run, writing neither file."""
    np.save(out / "weights.npy", from_record(result.arrays if len(result.arrays) else initial))
    parts = {"train": result.train_metrics_clientapp,
             "evaluate": result.evaluate_metrics_clientapp,
             "central": result.evaluate_metrics_serverapp}
    history = {k: {str(r): {name: _finite(value) for name, value in m.items()}
                   for r, m in sorted(v.items())} for k, v in parts.items()}
    (out / "history.json").write_text(json.dumps({**history, "seconds": seconds}, indent=2,
                                                 allow_nan=False))


def _finite(value: Any) -> Any:
    """JSON has no NaN or Inf (json.dumps wrote the tokens, which strict readers refuse): a
    diverged model's loss, or a bridge round without losses, is null, as in fedc simulate."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run_server(grid: Grid, context: Context) -> None:
    run = context.run_config
    check_run_config(run)
    out = out_dir(run)
    m = model()
    m.init_weights(int(run["seed"]))  # fedc simulate's initial global model for the same seed
    train_config = ConfigRecord({"seed": int(run["seed"]),
                                 "local-epochs": int(run["local-epochs"]),
                                 "batch-size": int(run["batch-size"])})
    initial = to_record(m.get_weights())
    start = time.perf_counter()
    result = make_strategy(run).start(
        grid=grid, initial_arrays=initial,
        num_rounds=int(run["num-server-rounds"]), timeout=float(run["round-timeout"]),
        train_config=train_config,
        evaluate_fn=central_evaluator(run) if run.get("central-eval") else None)
    if out is not None:
        save_run(out, result, time.perf_counter() - start, initial)


def server_app() -> ServerApp:
    app = ServerApp()
    app.main()(run_server)
    return app
