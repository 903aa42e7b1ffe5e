"""The `fedc serve`, `fedc status` and `fedc bundle` commands: flags → server, status, bundle."""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._lazy import np
from ..diagnostics import UsageError, did_you_mean
from . import ServeError


def add_commands(sub: Any, compile_flags: Callable[[argparse.ArgumentParser], None],
                 positive: Callable[[str], int], positive_float: Callable[[str], float],
                 nonneg: Callable[[str], int], seed: Callable[[str], int],
                 key_value: Callable[[str], tuple[str, str]]) -> None:
    def seconds(text: str) -> float:  # an inf deadline makes every task frame unencodable
        value = positive_float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
        return value

    c = sub.add_parser("bundle", help="compile a .fed file into a client bundle (JS, Python, page)")
    c.add_argument("file")
    c.add_argument("-o", "--out", required=True, help="output folder")
    bundle_flags(c, positive)
    compile_flags(c)
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_bundle)

    c = sub.add_parser("serve", help="run a federation server for a .fed file or a bundle")
    c.add_argument("file", help="a .fed file or a bundle folder")
    c.add_argument("--state", default="fedc-state.db",
                   help="SQLite state file (resumed if present)")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout: the final "
                   "status, or what a state-file command did")
    net = c.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1")
    net.add_argument("--port", type=int, default=8080, help="0: a free port (named at start)")
    net.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile serves HTTPS")
    net.add_argument("--keyfile", help="TLS private key (PEM)")
    state = c.add_argument_group("state-file commands (act on --state and exit; they may run "
                                 "beside a running server)")
    admin = state.add_mutually_exclusive_group()
    admin.add_argument("--issue-tokens", type=positive, metavar="N",
                       help="create N client tokens in the state file and print them")
    admin.add_argument("--list-tokens", action="store_true",
                       help="list the state file's clients (id, counts, revoked)")
    admin.add_argument("--revoke-token", action="append", metavar="CLIENT_ID",
                       help="revoke a client's token (repeatable); a running server refuses it "
                            "from the client's next request")
    admin.add_argument("--export-model", metavar="DIR",
                       help="write the state file's latest global model to DIR (model.wasm, "
                            "manifest.json, weights.npy, as `fedc train --save`)")
    state.add_argument("--model-version", type=nonneg, metavar="V",
                       help="--export-model: global model version V (default: the latest)")
    rounds = c.add_argument_group("rounds")
    rounds.add_argument("--rounds", type=positive, help="default: the federated block's")
    rounds.add_argument("--clients-per-round", type=positive,
                        help="default: the federated block's")
    rounds.add_argument("--local-epochs", type=positive, help="default: the federated block's")
    rounds.add_argument("--strategy-opt", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="an option of the federated block's strategy, "
                        "e.g. f=1 (krum), beta=0.2; not with --flower-superlink, where Flower "
                        "aggregates")
    rounds.add_argument("--min-clients", type=positive, default=2,
                        help="connected clients needed to open a round")
    rounds.add_argument("--min-updates", type=positive,
                        help="updates that let a round close at its deadline (default: "
                             "--min-clients)")
    rounds.add_argument("--round-timeout", type=seconds, default=120.0, help="seconds")
    rounds.add_argument("--client-timeout", type=positive_float, default=30.0,
                        help="seconds without a request after which a client is not sampled")
    rounds.add_argument("--max-update-norm", type=positive_float, default=1e3,
                        help="largest accepted L2 distance of an update from the global model")
    rounds.add_argument("--eval-data", help="dataset whose test split scores each global model")
    rounds.add_argument("--seed", type=seed, default=0,
                        help="initial weights, sampling, task seeds, --eval-data's split")
    rounds.add_argument("--exit-when-done", action="store_true",
                        help="stop once the rounds are done and every connected client has "
                             "been told (at most --client-timeout later)")
    compile_flags(c.add_argument_group("building a .fed file"))
    add_bridge_flags(c)
    c.set_defaults(run=cmd_serve)

    c = sub.add_parser("status", help="show a running server's rounds, clients and accuracy")
    c.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    c.add_argument("--cafile", help="CA certificate to trust for an https server (e.g. the "
                                    "self-signed --certfile it serves)")
    c.add_argument("--json", action="store_true", help="the server's status object")
    c.set_defaults(run=cmd_status)


def bundle_flags(c: argparse.ArgumentParser, positive: Callable[[str], int]) -> None:
    c.add_argument("--demo-data", help="embed partitions of this dataset's train split "
                                       "(data/client-<i>.npz)")
    c.add_argument("--demo-clients", type=positive, default=3, help="how many partitions")


def _options(args: argparse.Namespace) -> Any:
    from ..pipeline import Options
    return Options(max_batch=args.max_batch, variant=args.features)


def make_bundle(args: argparse.Namespace, out: Path) -> tuple[bytes, dict[str, Any], list[Path]]:
    """Compile args.file and write its bundle to `out`."""
    from ..cli import _read, warn
    from ..harness.bundle import demo_partitions, write_bundle
    from ..pipeline import compile_source

    art = compile_source(_read(args.file), args.file, _options(args))
    warn(args, art.model)
    demo = (demo_partitions(args.demo_data, args.demo_clients, 0, art.manifest)
            if getattr(args, "demo_data", None) else None)
    return art.wasm, art.manifest, write_bundle(art.wasm, art.manifest, out, demo)


def cmd_bundle(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import check_data_file
    check_data_file("--demo-data", args.demo_data)
    out = Path(args.out)
    _, manifest, files = make_bundle(args, out)
    if not args.json:
        print(f"wrote the {manifest['model']} bundle to {out}/: "
              f"{', '.join(str(f.relative_to(out)) for f in files)}", file=sys.stderr)
    return {"out": str(out), "files": [str(f.relative_to(out)) for f in files]}


# --- serve ----------------------------------------------------------------------------------------

def _load_bundle(args: argparse.Namespace, scratch: Path) -> tuple[Path, bytes, dict[str, Any]]:
    """A bundle folder as it is, or a .fed file compiled into a bundle in `scratch`."""
    path = Path(args.file)
    if path.is_dir():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            wasm = (path / manifest["wasm"]["file"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError.at(f"{path} is not a bundle (needs manifest.json and model.wasm: "
                                f"{exc})") from None
        return path, wasm, manifest
    if not path.exists():
        raise UsageError.at(f"no such file or bundle: {path}")
    args.demo_data = None
    wasm, manifest, _ = make_bundle(args, scratch)
    return scratch, wasm, manifest


def _config(args: argparse.Namespace, manifest: dict[str, Any]) -> Any:
    from ..fl.strategies import make_strategy
    from .rounds import ServeConfig
    fed = manifest["federated"]
    options: dict[str, Any] = {"mu": fed.get("proximal_mu", 0.0)} \
        if fed["strategy"] == "fedprox" else {}
    options.update(args.strategy_opt)
    per_round = args.clients_per_round or int(fed["clients_per_round"])
    if args.min_clients > per_round:
        raise UsageError.at(f"--min-clients {args.min_clients} exceeds the clients sampled per "
                            f"round ({per_round}); raise --clients-per-round")
    if args.flower_superlink:  # the edge round is a FedAvg; Flower runs the block's strategy
        if args.strategy_opt:
            raise UsageError.at("--strategy-opt: with --flower-superlink the Flower server "
                                "aggregates (fedc's edge rounds are a plain FedAvg)")
    else:  # a bad option, or e.g. Krum's f that no round's updates can satisfy, fails here
        strategy = make_strategy(fed["strategy"], **options)
        strategy.check_clients(per_round, "the clients sampled per round")
        # a round opens with --min-clients sampled and may close at its deadline with
        # --min-updates of them: the rule must aggregate that few too, or such a round failed
        # inside the last client's request (a 500) and again on every tick of the round clock
        fewest = min(args.min_updates or args.min_clients, args.min_clients)
        flags = f"--min-clients {args.min_clients}" + (
            f" and --min-updates {args.min_updates}" if args.min_updates else "")
        strategy.check_clients(fewest, f"{flags}: a round may close with that few updates")
    return ServeConfig(rounds=args.rounds or int(fed["rounds"]), clients_per_round=per_round,
                       min_clients=args.min_clients, min_updates=args.min_updates,
                       local_epochs=args.local_epochs or int(fed["local_epochs"]),
                       batch_size=int(fed["batch_size"]), strategy=fed["strategy"],
                       strategy_options=options, round_timeout=args.round_timeout,
                       client_timeout=args.client_timeout,
                       max_update_norm=args.max_update_norm, seed=args.seed)


def _evaluator(args: argparse.Namespace, model: Any) -> Callable[[np.ndarray], dict[str, float]]:
    from ..data import load_dataset
    from ..train import check_fits

    data = load_dataset(args.eval_data, seed=args.seed, task=model.manifest["task"])
    check_fits(model.manifest, data)

    def evaluate(weights: np.ndarray) -> dict[str, float]:
        model.set_weights(weights)
        return dict(model.evaluate(data.x_test, data.y_test))
    return evaluate


def _tls(args: argparse.Namespace) -> dict[str, str]:
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError.at("give both --certfile and --keyfile for HTTPS, or neither")
    for f in (args.certfile, args.keyfile):
        if f and not Path(f).is_file():
            raise UsageError.at(f"no such file: {f}")
    if args.certfile:  # load them once here so a bad PEM is a message, not uvicorn's traceback
        import ssl
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.certfile,
                                                                                args.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError.at(f"cannot use {args.certfile} and {args.keyfile} for TLS: "
                                f"{exc}") from None
    return {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile} if args.certfile else {}


def _check_port(host: str, port: int) -> int:
    """The port to listen on: a clear message (not uvicorn's log line) when the address is
    taken, and for port 0 the free port the system picks (so the banner and a bridge's
    supernode get a real address)."""
    if not 0 <= port <= 65535:
        raise UsageError.at(f"--port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
            return int(s.getsockname()[1])
    except OSError as exc:
        raise ServeError.at(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _issue_tokens(args: argparse.Namespace) -> dict[str, Any]:
    from .auth import issue
    from .store import Store

    store = Store(args.state)
    existing = store.client_ids()
    tokens = []
    for _ in range(args.issue_tokens):
        tokens.append(issue(existing))
        existing.add(tokens[-1].client_id)
    store.add_clients(tokens, time.time())
    store.close()
    if not args.json:
        for t in tokens:
            print(t.token)
        print(f"issued {len(tokens)} token(s) in {args.state}; only their hashes are stored",
              file=sys.stderr)
    return {"state": args.state, "tokens": [{"client_id": t.client_id, "token": t.token}
                                            for t in tokens]}


def _existing_store(args: argparse.Namespace) -> Any:
    """The --state file for a token command that reads it: it must exist (never created)."""
    from .store import Store

    if not Path(args.state).exists():
        raise UsageError.at(f"--state {args.state}: no such state file (create it and its "
                            "clients with --issue-tokens N)")
    return Store(args.state)


def _list_tokens(args: argparse.Namespace) -> dict[str, Any]:
    from .store import utc_text

    def _utc(when: float | None) -> str:
        return "-" if when is None else utc_text(when)

    store = _existing_store(args)
    clients = store.clients()
    store.close()
    if not args.json:
        print(f"{'client':<10} {'created (UTC)':<19}  {'accepted':>8} {'rejected':>8}  "
              "revoked (UTC)")
        for c in clients:
            print(f"{c['client_id']:<10} {_utc(c['created']):<19}  {c['accepted']:>8} "
                  f"{c['rejected']:>8}  {_utc(c['revoked'])}")
        print(f"{len(clients)} client(s) in {args.state}; tokens cannot be shown again "
              "(only their hashes are stored)", file=sys.stderr)
    return {"state": args.state, "clients": clients}


def _revoke_tokens(args: argparse.Namespace) -> dict[str, Any]:
    store = _existing_store(args)
    try:
        known = [c["client_id"] for c in store.clients()]
        for cid in args.revoke_token:  # all named clients must exist before any is revoked
            if cid not in known:
                raise UsageError.at(f"--revoke-token {cid!r}: no such client in {args.state}"
                                    f"{did_you_mean(cid, known)} (--list-tokens lists them)")
        revoked = store.revoke(args.revoke_token, time.time())
    finally:
        store.close()
    already = sorted(set(args.revoke_token) - set(revoked))
    if not args.json:
        if revoked:
            print(f"revoked {len(revoked)} token(s) in {args.state}: {', '.join(revoked)}",
                  file=sys.stderr)
        if already:
            print(f"already revoked: {', '.join(already)}", file=sys.stderr)
    return {"state": args.state, "revoked": revoked, "already_revoked": already}


def _export_model(args: argparse.Namespace) -> dict[str, Any]:
    """The bundle's builds and manifest with one stored global model version's weights."""
    from .store import weights_sha256

    store = _existing_store(args)
    try:
        models = {m["version"]: m for m in store.model_metrics()}
        if not models:
            raise UsageError.at(f"--state {args.state}: no global model yet (the server writes "
                                "version 0 when it first starts)")
        version = max(models) if args.model_version is None else args.model_version
        if version not in models:
            raise UsageError.at(f"--model-version {version}: {args.state} holds versions "
                                f"0..{max(models)}")
        with tempfile.TemporaryDirectory(prefix="fedc-bundle-") as scratch:
            bundle_dir, wasm, manifest = _load_bundle(args, Path(scratch))
            store.check_model(manifest)
            weights = store.model(version)
            if weights_sha256(weights) != models[version]["sha256"]:
                raise ServeError.at(f"{args.state}: global model version {version} does not "
                                    "match its stored sha256 (the file is damaged)")
            builds = [(manifest["wasm"]["file"], wasm)] + [
                (b["file"], (bundle_dir / b["file"]).read_bytes())
                for b in (manifest.get("variants") or {}).values()
                if (bundle_dir / b["file"]).is_file()]
    finally:
        store.close()
    out = Path(args.export_model)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in builds:
            (out / name).write_bytes(data)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        np.save(out / "weights.npy", weights)
    except OSError as exc:
        raise UsageError.at(f"--export-model: cannot write {exc.filename or out}: "
                            f"{exc.strerror or exc}") from None
    m = models[version]
    files = [name for name, _ in builds] + ["manifest.json", "weights.npy"]
    if not args.json:
        acc = f", accuracy {m['accuracy']:.4f}" if m["accuracy"] is not None else ""
        print(f"wrote global model version {version} (after round {m['round']}{acc}) of "
              f"{manifest['model']} to {out}/: {', '.join(files)}", file=sys.stderr)
    return {"out": str(out), "files": files, "model_version": version, "round": m["round"],
            "sha256": m["sha256"], "loss": m["loss"], "accuracy": m["accuracy"]}


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    if args.model_version is not None and not args.export_model:
        raise UsageError.at("--model-version goes with --export-model")
    if args.issue_tokens:
        return _issue_tokens(args)
    if args.list_tokens:
        return _list_tokens(args)
    if args.revoke_token:
        return _revoke_tokens(args)
    if args.export_model:
        return _export_model(args)
    from ..data import check_data_file
    check_data_file("--eval-data", args.eval_data)
    if args.flower_superlink and args.exit_when_done:
        raise UsageError.at("--exit-when-done: with --flower-superlink the Flower federation "
                            "decides when it ends (stop the bridge with SIGTERM)")
    if args.flower_superlink:  # one node of a Flower federation (flower_bridge.py)
        from .flower_bridge import serve_bridge
        return serve_bridge(args)
    tls = _tls(args)
    args.port = _check_port(args.host, args.port)
    with tempfile.TemporaryDirectory(prefix="fedc-bundle-") as scratch:
        bundle_dir, wasm, manifest = _load_bundle(args, Path(scratch))
        return _run(args, bundle_dir, wasm, manifest, tls)


def _run(args: argparse.Namespace, bundle_dir: Path, wasm: bytes, manifest: dict[str, Any],
         tls: dict[str, str]) -> dict[str, Any]:
    import uvicorn

    from ..runtime import Model
    from .app import build_app
    from .rounds import Coordinator
    from .store import Store

    config = _config(args, manifest)
    model = Model(wasm, manifest)
    evaluate = _evaluator(args, model.clone()) if args.eval_data else None

    def initial() -> np.ndarray:
        model.init_weights(args.seed)
        return model.get_weights()  # type: ignore[no-any-return]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # one running server per state file: Store.for_server holds its lock
    coord = Coordinator(Store.for_server(args.state), manifest, config, initial, evaluate)
    scheme = "https" if tls else "http"
    print(f"fedc: serving {manifest['model']} ({coord.num_params} parameters, "
          f"{4 * coord.num_params}-byte updates) on {scheme}://{args.host}:{args.port}/ — "
          f"state {args.state}, round {coord.round}/{config.rounds}", file=sys.stderr, flush=True)
    index = bundle_dir if (bundle_dir / "index.html").is_file() else None
    server: uvicorn.Server | None = None

    def stop() -> None:
        assert server is not None
        server.should_exit = True

    app = build_app(coord, index, on_finished=stop if args.exit_when_done else None)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", access_log=False,
                                           **tls))  # type: ignore[arg-type]
    _run_until_stopped(server)
    status = coord.status()
    if coord.done:
        acc = status["latest"]["accuracy"]
        ended = f"finished its {config.rounds} rounds" if coord.diverged is None else \
            f"diverged in round {coord.diverged} (its aggregate had NaN or Inf weights)"
        print(f"fedc: the federation {ended} (global model version {coord.version}"
              f"{f', accuracy {acc:.4f}' if acc is not None else ''}); "
              f"--export-model DIR writes it from {args.state}", file=sys.stderr)
    return status


class _Terminated(Exception):
    pass


def _run_until_stopped(server: Any) -> None:
    """server.run(), returning after a SIGTERM too. uvicorn shuts down gracefully on SIGTERM
    and then raises the signal again, whose default action ended the process (exit 143) before
    the final status was printed, so `--json` printed nothing; here it raises _Terminated."""
    import signal

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        server.run()
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_bridge_flags(c: argparse.ArgumentParser) -> None:
    """`fedc serve`'s flags for fedc/serve/flower_bridge.py (defined here: importing the
    bridge to build the parser would import the server for every fedc command)."""
    g = c.add_argument_group("Flower bridge (this server joins a Flower federation as one node)")
    g.add_argument("--flower-superlink", metavar="HOST:PORT",
                   help="act as a Flower SuperNode of this SuperLink: each Flower round becomes "
                        "one round of this server's clients")
    g.add_argument("--flower-root-certificates", metavar="CA.pem",
                   help="CA certificate of the SuperLink's TLS (default: system CAs)")
    g.add_argument("--flower-insecure", action="store_true",
                   help="connect to the SuperLink without TLS (local tests only)")
    g.add_argument("--flower-auth-key", metavar="KEY",
                   help="this SuperNode's private key (Flower node authentication)")


# --- status ---------------------------------------------------------------------------------------

def fetch_status(url: str, timeout: float = 10.0, cafile: str | None = None) -> dict[str, Any]:
    import http.client  # here, not at the top: every fedc command would import them
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError.at(f"expected an http:// or https:// URL, got {url!r}")
    try:  # a bad port or host is the user's typo, not a server to retry
        parts = urllib.parse.urlsplit(base)
        if not parts.hostname:
            raise ValueError("no host")
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise UsageError.at(f"not a valid URL: {url!r} ({exc})") from None
    try:
        context = ssl.create_default_context(cafile=cafile) if cafile else None
    except OSError as exc:  # ssl.SSLError too: a file that is not a PEM certificate
        raise UsageError.at(f"cannot use {cafile} as a CA certificate: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        with urllib.request.urlopen(base + "/api/v1/status", timeout=timeout,
                                    context=context) as res:
            status: dict[str, Any] = json.loads(res.read())
            return status
    except urllib.error.HTTPError as exc:
        raise ServeError.at(f"{base} answered HTTP {exc.code}: is it a fedc server?") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServeError.at(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    except http.client.HTTPException:  # e.g. BadStatusLine from an SSH or SMTP port
        raise ServeError.at(f"{base} did not answer in HTTP: is it a fedc server?") from None
    except ValueError:
        raise ServeError.at(f"{base} did not answer with a fedc status (not JSON)") from None


def format_status(s: dict[str, Any], url: str) -> str:
    lines = [f"{s['model']} at {url}: {s['status']}, round {min(s['round'], s['rounds'])}"
             f"/{s['rounds']}, global model version {s['model_version']} ({s['strategy']})"]
    if "open_round" in s:
        o = s["open_round"]
        lines.append(f"open round {o['round']}: {len(o['submitted'])}/{len(o['sampled'])} "
                     f"updates, deadline in {o['deadline_in']:.0f} s")
    revoked = sum(bool(c.get("revoked")) for c in s["clients"].values())
    lines.append(f"clients: {len(s['connected'])} connected of {len(s['clients']) - revoked} "
                 f"registered{f' ({revoked} revoked)' if revoked else ''} "
                 f"(a round needs {s['min_clients']})")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["rejected_by_reason"].items()))
    lines.append(f"updates: {s['accepted']} accepted, {s['rejected']} rejected"
                 + (f" ({reasons})" if reasons else ""))
    latest = s["latest"]
    acc = "n/a (serve with --eval-data)" if latest["accuracy"] is None else \
        f"{latest['accuracy']:.4f}, loss {latest['loss']:.4f}"
    lines.append(f"latest accuracy: {acc} (model version {latest['version']})")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    status = fetch_status(args.url, cafile=args.cafile)
    try:
        text = format_status(status, args.url)
    except (KeyError, TypeError, ValueError):
        raise ServeError.at(f"{args.url} did not answer with a fedc status") from None
    if not args.json:
        print(text)
    return status
