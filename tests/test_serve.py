"""`fedc serve` as a real process: malformed requests are refused and change nothing; rounds
resume after SIGKILL with the same accepted updates; tokens, TLS, status and CLI errors."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from fedc.serve.auth import issue, parse_bearer, verify
from fedc.serve.protocol import ProtocolError, decode, encode

from .serve_util import (
    TRAIN_TASK,
    Server,
    fake_server,
    fedc,
    issue_tokens,
    load_client_module,
    not_http_server,
    request,
    task_frame,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, digits_mlp) -> Path:
    from fedc.harness.bundle import demo_partitions, write_bundle
    out = tmp_path_factory.mktemp("bundle")
    write_bundle(digits_mlp.wasm, digits_mlp.manifest, out,
                 demo_partitions("digits", 3, 0, digits_mlp.manifest))
    return out


@pytest.fixture(scope="module")
def client_mod(bundle):
    return load_client_module(bundle)


def _data(bundle: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(bundle / "data" / f"client-{i}.npz") as z:
        return z["x"], z["y"]


# --- units: frames and tokens ---------------------------------------------------------------------

def test_frame_round_trips_between_server_and_python_client(client_mod):
    w = np.linspace(-1, 1, 37, dtype=np.float32)
    meta, values = client_mod.decode_frame(encode("task", {"round": 3}, w))
    assert meta == {"round": 3} and values.tobytes() == w.tobytes()
    frame = decode(client_mod.encode_frame("update", {"round": 1, "x": "é"}, w))
    assert frame.kind == "update" and frame.meta["x"] == "é"
    assert frame.values.tobytes() == w.tobytes()


@pytest.mark.parametrize("data, code", [
    (b"", "truncated"), (b"FEDC", "truncated"), (b"NOPE" + bytes(12), "bad_magic"),
    (encode("update", {}, np.ones(4))[:-1], "truncated"),
    (encode("update", {}, np.ones(4)) + b"\0", "trailing_bytes"),
    (struct.pack("<4sBBBBII", b"FEDC", 9, 2, 1, 0, 0, 0), "bad_version"),
    (struct.pack("<4sBBBBII", b"FEDC", 1, 7, 1, 0, 0, 0), "bad_kind"),
    (struct.pack("<4sBBBBII", b"FEDC", 1, 2, 2, 0, 0, 0), "bad_dtype"),
    (struct.pack("<4sBBBBII", b"FEDC", 1, 2, 1, 0, 4, 0) + b"[1] ", "bad_meta"),
    (struct.pack("<4sBBBBII", b"FEDC", 1, 2, 1, 0, 3, 0) + b"NaN\0", "bad_meta"),
    (struct.pack("<4sBBBBII", b"FEDC", 1, 2, 1, 0, 4000, 0) + b"[" * 4000, "bad_meta"),
])
def test_decode_refuses_malformed_frames(data, code):
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code == code and info.value.status in (400, 422)


def test_tokens_verify_only_their_own_secret():
    t = issue(set())
    client_id, secret = parse_bearer(f"Bearer {t.token}")
    assert client_id == t.client_id and verify(secret, t.secret_hash)
    assert not verify(secret + "x", t.secret_hash) and not verify(secret, None)
    for bad in (None, "", "Basic abc", "Bearer x.y", f"Bearer fedc2.{client_id}.{secret}"):
        assert parse_bearer(bad) is None


# --- the table of malformed requests --------------------------------------------------------------

def _update(meta: dict, values: np.ndarray) -> bytes:
    return encode("update", meta, values)


@pytest.fixture(scope="module")
def live(bundle, tmp_path_factory, client_mod):
    """A server in round 2 (round 1 closed), three clients, two sampled per round."""
    state = tmp_path_factory.mktemp("state") / "state.db"
    tokens = issue_tokens(bundle, state, 3)
    server = Server(bundle, state, "--rounds", "5", "--min-clients", "2",
                    "--clients-per-round", "2", "--max-update-norm", "50",
                    "--client-timeout", "600").start()
    model = client_mod.Model.load(bundle)
    clients = [client_mod.Client(server.url, t, model, retry_for=5) for t in tokens]
    for c in clients:
        c.join()
    status = server.status()
    sampled = status["open_round"]["sampled"]
    by_id = {c.client_id: c for c in clients}
    for cid in sampled:
        assert by_id[cid].step(*_data(bundle, 0))["event"] == "accepted"
    status = server.status()
    assert status["round"] == 2 and status["status"] == "open"
    yield server, by_id, status["open_round"]["sampled"], tokens
    server.stop()


def _snapshot(server: Server, token: str) -> tuple[bytes, dict]:
    code, model = request(server.url + "/api/v1/model", token=token)
    assert code == 200
    s = server.status()
    return model, {k: s[k] for k in ("round", "model_version", "status", "accepted")} | {
        "open": s.get("open_round", {}).get("submitted")}


def _cases(client_id: str, token: str, weights: np.ndarray, n: int):
    good = {"round": 2, "model_version": 1, "num_examples": 100}
    nan, inf, far = weights.copy(), weights.copy(), weights + 10.0
    nan[5], inf[7] = np.nan, -np.inf
    wrong_token = token.rsplit(".", 1)[0] + ".AAAA"
    frame = _update(good, weights)
    return [  # (name, token, body, status, code)
        ("no token", None, frame, 401, "unauthorized"),
        ("wrong token", wrong_token, frame, 401, "unauthorized"),
        ("closed round", token, _update({**good, "round": 1, "model_version": 0}, weights),
         409, "round_closed"),
        ("future round", token, _update({**good, "round": 3}, weights), 409, "round_closed"),
        ("stale model", token, _update({**good, "model_version": 0}, weights), 409,
         "stale_model"),
        ("wrong length", token, _update(good, weights[:-1]), 422, "wrong_length"),
        ("NaN", token, _update(good, nan), 422, "not_finite"),
        ("Inf", token, _update(good, inf), 422, "not_finite"),
        ("huge norm", token, _update(good, far), 422, "norm_too_large"),
        ("zero examples", token, _update({**good, "num_examples": 0}, weights), 422, "bad_meta"),
        ("loss beyond a double", token, _update({**good, "train_loss": 10**400}, weights), 400,
         "bad_meta"),
        ("accuracy beyond a double", token, _update({**good, "eval": {"accuracy": 10**400}},
                                                    weights), 400, "bad_meta"),
        ("accuracy above 1", token, _update({**good, "eval": {"accuracy": 1.5}}, weights), 422,
         "bad_meta"),
        ("negative accuracy", token, _update({**good, "eval": {"accuracy": -0.1}}, weights),
         422, "bad_meta"),
        ("missing round", token, _update({"model_version": 1, "num_examples": 3}, weights),
         400, "bad_meta"),
        ("truncated body", token, frame[:len(frame) // 2], 400, "truncated"),
        ("garbage bytes", token, bytes(range(256)) * 8, 400, "bad_magic"),
        ("a task frame", token, encode("task", good, weights), 400, "bad_kind"),
        ("float64 dtype", token, frame[:6] + b"\x02" + frame[7:], 422, "bad_dtype"),
        ("oversized body", token, frame + bytes(4 * n + 64 * 1024), 413, "too_large"),
    ]


def test_malformed_updates_get_4xx_and_change_nothing(live):
    server, by_id, sampled, tokens = live
    client = by_id[sampled[0]]
    token = client.token
    before_model, before_state = _snapshot(server, token)
    weights = np.frombuffer(before_model[-4 * client.model.num_params:], "<f4").copy()
    rejected = server.status()["rejected"]
    for name, tok, body, status, code in _cases(client.client_id, token, weights, weights.size):
        got, reply = request(server.url + "/api/v1/update", "POST", body, tok,
                             {"Content-Type": "application/x-fedc-frame"})
        assert (got, json.loads(reply)["error"]) == (status, code), name
        assert json.loads(reply)["reason"], name
        assert _snapshot(server, token) == (before_model, before_state), name
    status = server.status()
    assert status["rejected"] == rejected + len(_cases("", token, weights, weights.size))
    assert status["rejected_by_reason"]["not_finite"] == 2


def test_unsampled_client_is_refused_and_duplicates_are_idempotent(live, bundle):
    server, by_id, sampled, _ = live
    outsider = next(c for cid, c in by_id.items() if cid not in sampled)
    insider = by_id[sampled[0]]
    task, weights = insider.task()
    assert task["status"] == "train" and task["round"] == 2
    assert outsider.task()[0]["status"] == "wait"
    meta = {"round": 2, "model_version": 1, "num_examples": 10}
    code, reply = request(server.url + "/api/v1/update", "POST", _update(meta, weights),
                          outsider.token)
    assert (code, json.loads(reply)["error"]) == (403, "not_sampled")
    body = _update(meta, weights + 0.001)
    first = request(server.url + "/api/v1/update", "POST", body, insider.token)
    again = request(server.url + "/api/v1/update", "POST", body, insider.token)
    assert first[0] == again[0] == 200 and json.loads(again[1])["duplicate"] is True
    other = request(server.url + "/api/v1/update", "POST", _update(meta, weights), insider.token)
    assert (other[0], json.loads(other[1])["error"]) == (409, "already_submitted")
    assert server.status()["open_round"]["submitted"] == [insider.client_id]


def _stored_rejections(server: Server) -> int:
    state = Path(server.args[server.args.index("--state") + 1])
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0])


def test_unauthenticated_requests_cannot_read_tasks_or_models(live):
    """They are refused and counted, but not written: requests without a valid token must not
    grow the state file (or take the lock through a disk sync each)."""
    server = live[0]
    stored, before = _stored_rejections(server), server.status()
    for path in ("/api/v1/task", "/api/v1/model"):
        code, body = request(server.url + path)
        assert code == 401 and json.loads(body)["error"] == "unauthorized"
    code, _ = request(server.url + "/api/v1/join", "POST", b"", "fedc1.cnope.secret")
    assert code == 401
    after = server.status()
    assert after["rejected"] == before["rejected"] + 3
    assert after["rejected_by_reason"]["unauthorized"] == \
        before["rejected_by_reason"].get("unauthorized", 0) + 3
    assert after["rejected_anonymous"]["unauthorized"] >= 3
    assert _stored_rejections(server) == stored


def test_unknown_api_paths_and_methods_get_json_refusals(live):
    server = live[0]
    for method, path, status, code in [("GET", "/api/v1/nope", 404, "not_found"),
                                       ("GET", "/api/v2/task", 404, "not_found"),
                                       ("PUT", "/api/v1/update", 405, "method_not_allowed"),
                                       ("POST", "/api/v1/task", 405, "method_not_allowed")]:
        got, body = request(server.url + path, method)
        reply = json.loads(body)
        assert (got, reply["error"]) == (status, code) and path in reply["reason"], path
    assert request(server.url + "/no-such-file.txt") == (404, b"Not Found")


# --- deadlines, durability ------------------------------------------------------------------------

def test_straggler_update_after_the_deadline_is_refused(bundle, tmp_path, client_mod):
    state = tmp_path / "s.db"
    tokens = issue_tokens(bundle, state, 2)
    with Server(bundle, state, "--rounds", "3", "--min-clients", "2", "--min-updates", "1",
                "--clients-per-round", "2", "--round-timeout", "1.5") as server:
        model = client_mod.Model.load(bundle)
        fast, slow = (client_mod.Client(server.url, t, model, retry_for=5) for t in tokens)
        fast.join()
        slow.join()
        task, weights = slow.task()
        assert task["status"] == "train" and task["round"] == 1
        assert fast.step(*_data(bundle, 0))["event"] == "accepted"
        time.sleep(2.0)  # the deadline passes: round 1 closes with the one update it has
        assert server.status()["round"] == 2
        with pytest.raises(client_mod.ClientError) as info:
            slow.send(task, weights, 10, 0.0, {})
        assert info.value.status == 409 and info.value.code == "round_closed"
        assert slow.step(*_data(bundle, 1))["event"] in ("accepted", "wait")


def _drive(server: Server, clients: list, bundle: Path, rounds: int, kill: tuple[int, int]
           ) -> None:
    """Each round every client checks in, then in order takes its task and sends its update;
    in round kill[0], after kill[1] updates, the server is SIGKILLed and started again."""
    for r in range(1, rounds + 1):
        for c in clients:  # a round opens once all are connected
            c.join()
        for i, c in enumerate(clients):
            if (r, i) == kill:
                server.kill()
                server.start()
                assert server.status()["open_round"]["submitted"] == sorted(
                    x.client_id for x in clients[:i])
            event = c.step(*_data(bundle, i))
            assert event["event"] == "accepted" and event["round"] == r, event


def test_sigkill_mid_round_resumes_with_the_same_accepted_updates(bundle, tmp_path, client_mod):
    base = tmp_path / "base.db"
    tokens = issue_tokens(bundle, base, 3)
    flags = ("--rounds", "3", "--min-clients", "3", "--clients-per-round", "3",
             "--seed", "7")
    runs = {}
    for name, kill in (("uninterrupted", (0, 0)), ("killed", (2, 2))):
        state = tmp_path / f"{name}.db"
        shutil.copy(base, state)
        server = Server(bundle, state, *flags).start()
        try:
            model = client_mod.Model.load(bundle)
            clients = [client_mod.Client(server.url, t, model, retry_for=30) for t in tokens]
            clients.sort(key=lambda c: c.token.split(".")[1])  # by client id
            _drive(server, clients, bundle, 3, kill)
            status = server.status(log=True)
        finally:
            server.stop()
        assert status["status"] == "done"
        runs[name] = status
    a, b = runs["uninterrupted"], runs["killed"]
    assert a["accepted_log"] == b["accepted_log"] and len(a["accepted_log"]) == 9
    assert [m["sha256"] for m in a["models"]] == [m["sha256"] for m in b["models"]]
    assert b["accepted"] == 9 and b["rejected"] == 0
    assert "resumed round 2 with 2 accepted update(s)" in (tmp_path / "killed.log").read_text()


# --- TLS, status and the command line -------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_server_is_reachable_with_its_certificate(bundle, tmp_path, client_mod):
    import ssl
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    state = tmp_path / "s.db"
    token = issue_tokens(bundle, state, 1)[0]
    server = Server(bundle, state, "--certfile", str(cert), "--keyfile", str(key),
                    scheme="https")
    server.start(context=ssl.create_default_context(cafile=str(cert)))
    try:
        model = client_mod.Model.load(bundle)
        info = client_mod.Client(server.url, token, model, cafile=str(cert)).join()
        assert info["model"] == "DigitsMLP"
        with pytest.raises(client_mod.ClientError, match="CERTIFICATE_VERIFY_FAILED"):
            client_mod.Client(server.url, token, model, retry_for=0).join()
        out = fedc("status", server.url, "--cafile", str(cert), "--json")  # fedc status too
        assert out.returncode == 0 and json.loads(out.stdout)["model"] == "DigitsMLP", out.stderr
        out = fedc("status", server.url)
        assert out.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in out.stderr
        out = fedc("status", server.url, "--cafile", str(key.with_name("none.pem")))
        assert out.returncode == 2 and "cannot use" in out.stderr
    finally:
        server.stop()


def test_status_command_shows_round_clients_counts_and_accuracy(live):
    server = live[0]
    out = fedc("status", server.url)
    assert out.returncode == 0, out.stderr
    assert "round 2/5" in out.stdout and "3 connected of 3 registered" in out.stdout
    assert "latest accuracy: 0." in out.stdout or "latest accuracy: n/a" in out.stdout
    data = json.loads(fedc("status", server.url, "--json").stdout)
    assert data["ok"] and data["round"] == 2


def test_server_serves_the_bundle_to_browsers(live):
    server = live[0]
    code, page = request(server.url + "/")
    assert code == 200 and b"fedc-page.js" in page
    with __import__("urllib.request").request.urlopen(server.url + "/model.wasm") as res:
        assert res.headers["Content-Type"] == "application/wasm"
    code, _ = request(server.url + "/../state.db")
    assert code == 404


@pytest.mark.parametrize("args, code, message", [
    (["status", "http://127.0.0.1:9"], 1, "cannot reach http://127.0.0.1:9"),
    (["status", "127.0.0.1:8080"], 2, "expected an http:// or https:// URL"),
    (["status", "http://127.0.0.1:abc"], 2, "not a valid URL: 'http://127.0.0.1:abc'"),
    (["status", "http://127.0.0.1:99999"], 2, "Port out of range"),
    (["serve", "no/such.fed"], 2, "no such file or bundle: no/such.fed"),
    (["serve", "examples", "--certfile", "x.pem"], 2, "give both --certfile and --keyfile"),
    (["serve", "examples", "--certfile", "README.md", "--keyfile", "README.md"], 2,
     "cannot use README.md and README.md for TLS"),
    (["serve", "examples", "--state", "/no/such/dir/s.db", "--issue-tokens", "1"], 1,
     "not a usable fedc state database"),
    (["serve", "examples", "--seed", "-1"], 2,
     "argument --seed: expected an integer in 0..4294967295"),
    (["serve", "examples", "--seed", str(2**32), "--eval-data", "digits"], 2,
     "argument --seed: expected an integer in 0..4294967295"),
    (["serve", "examples", "--exit-when-done", "--flower-superlink", "127.0.0.1:9"], 2,
     "--exit-when-done: with --flower-superlink the Flower federation decides when it ends"),
    (["serve", "examples", "--round-timeout", "inf"], 2,
     "argument --round-timeout: expected a finite number of seconds, got 'inf'"),
])
def test_cli_errors_are_one_line_without_traceback(args, code, message):
    out = fedc(*args)
    assert out.returncode == code and message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("bridge", [[], ["--flower-superlink", "127.0.0.1:9"]])
def test_a_missing_eval_data_file_is_a_usage_error_naming_the_flag(tmp_path, bridge):
    # it was a DataError (exit 1) found after compiling the model, like a file that does not fit
    state, missing = tmp_path / "s.db", tmp_path / "nosuch.npz"
    out = fedc("serve", "examples/digits_mlp.fed", "--eval-data", str(missing), "--port", "0",
               "--state", str(state), *bridge)
    assert out.returncode == 2 and f"--eval-data: no such data file: {missing}" in out.stderr
    assert "Traceback" not in out.stderr and not state.exists()


def test_a_krum_federation_that_no_round_can_aggregate_is_refused_before_serving(
        tmp_path, digits_mlp_source):
    # Krum needs n > 2f + 2 updates (f = 0 under serve): with 2 clients a round, the first
    # aggregation failed inside a client's request
    fed = tmp_path / "k.fed"
    fed.write_text(digits_mlp_source.replace("strategy = fedavg", "strategy = krum"))
    state = tmp_path / "s.db"
    out = fedc("serve", str(fed), "--clients-per-round", "2", "--min-clients", "2",
               "--port", "0", "--state", str(state))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "krum with f=0 needs n > 2f + 2 = 2 client updates per round, but a round has at " \
           "most n = 2 (the clients sampled per round)" in out.stderr
    assert not state.exists()


@pytest.mark.parametrize("flags, note", [
    (["--clients-per-round", "3", "--min-clients", "2"],
     "(--min-clients 2: a round may close with that few updates)"),
    (["--clients-per-round", "4", "--min-clients", "3", "--min-updates", "2"],
     "(--min-clients 3 and --min-updates 2: a round may close with that few updates)"),
])
def test_a_krum_federation_whose_rounds_may_close_with_too_few_updates_is_refused(
        tmp_path, digits_mlp_source, flags, note):
    # Krum (f = 0) needs 3 updates: with 2 clients connected a round opened, both sent, and
    # the aggregation failed inside the second one's request (a 500 for an accepted update),
    # then again on every tick of the round clock, the round never closing
    fed = tmp_path / "k.fed"
    fed.write_text(digits_mlp_source.replace("strategy = fedavg", "strategy = krum"))
    state = tmp_path / "s.db"
    out = fedc("serve", str(fed), *flags, "--port", "0", "--state", str(state))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "krum with f=0 needs n > 2f + 2 = 2 client updates per round" in out.stderr
    assert note in out.stderr and not state.exists()


def test_strategy_options_reach_the_servers_strategy(tmp_path, digits_mlp_source):
    fed = tmp_path / "k.fed"
    fed.write_text(digits_mlp_source.replace("strategy = fedavg", "strategy = krum"))
    flags = ("--min-clients", "2", "--port", "0", "--state", str(tmp_path / "s.db"))
    # f=1 needs more than 4 updates a round: refused at 4, where f=0 (the default) is served
    out = fedc("serve", str(fed), "--clients-per-round", "4", "--strategy-opt", "f=1", *flags)
    assert out.returncode == 2 and "krum with f=1 needs n > 2f + 2 = 4" in out.stderr
    out = fedc("serve", str(fed), "--strategy-opt", "g=1", *flags)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "'g'" in out.stderr
    out = fedc("serve", str(fed), "--strategy-opt", "f=1", "--flower-superlink", "127.0.0.1:9",
               *flags)
    assert out.returncode == 2 and "--strategy-opt: with --flower-superlink" in out.stderr
    with Server(fed, tmp_path / "t.db", "--clients-per-round", "5", "--strategy-opt", "f=1",
                "--min-clients", "5") as server:
        status = server.status()
    assert status["strategy"] == "krum" and status["strategy_options"]["f"] == 1


def test_status_of_a_port_that_does_not_speak_http_is_a_clear_error():
    with not_http_server() as url:
        out = fedc("status", url)
    assert out.returncode == 1 and f"{url} did not answer in HTTP" in out.stderr
    assert "Traceback" not in out.stderr


def test_python_client_refuses_bad_server_urls_ca_files_and_non_http_ports(client_mod, bundle,
                                                                         tmp_path):
    model = client_mod.Model.load(bundle)
    for url in ("http://127.0.0.1:abc", "http://127.0.0.1:99999", "127.0.0.1:8080"):
        with pytest.raises(client_mod.ClientError, match="the server URL"):
            client_mod.Client(url, "t", model)
    with pytest.raises(client_mod.ClientError, match="no.pem as a CA certificate: No such"):
        client_mod.Client("https://127.0.0.1:9", "t", model, cafile=str(tmp_path / "no.pem"))
    with not_http_server() as url, pytest.raises(client_mod.ClientError,
                                                 match="not an HTTP answer"):
        client_mod.Client(url, "t", model, retry_for=0).join()
    # a character no HTTP header takes: urllib's UnicodeEncodeError read as 'not a fedc server'
    for token, shown in (("fedc1.…", "…"), ("fedc1.a b.c", " ")):
        with pytest.raises(client_mod.ClientError, match=f'the token contains "{shown}", which '
                                                         "no fedc token has"):
            client_mod.Client("http://127.0.0.1:9", token, model)


@pytest.mark.parametrize("value", ["nan", "-1", "abc"])
def test_python_client_retry_for_must_be_a_number_of_seconds(client_mod, bundle, value, capsys):
    # nan compared false with the time spent: a server that is down was retried for ever
    with pytest.raises(SystemExit) as info:
        client_mod.main(bundle, ["--server", "http://127.0.0.1:9", "--token", "t", "--data",
                                 "d.npz", "--retry-for", value])
    assert info.value.code == 2
    assert f"--retry-for: expected a number of seconds ≥ 0, got '{value}'" in \
        capsys.readouterr().err


def test_python_client_refuses_data_that_does_not_fit_before_joining(client_mod, bundle,
                                                                     tmp_path, capsys):
    cases = {"empty": (np.zeros((0, 64)), np.zeros(0)), "text": (np.zeros((4, 64)), np.array(
        list("abcd"))), "label": (np.zeros((4, 64)), np.full(4, 50)),
        "features": (np.zeros((4, 30)), np.zeros(4)),
        "fraction": (np.zeros((4, 64)), np.full(4, 2.5)),  # a cast made these class 2
        "wraps": (np.zeros((4, 64)), np.full(4, 2**32 + 3))}  # and these class 3
    for name, (x, y) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=x, y=y)
        code = client_mod.main(bundle, ["--server", "http://127.0.0.1:9", "--token", "t",
                                        "--data", str(path), "--retry-for", "0"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"error: {path}: "), (name, err)


@pytest.mark.parametrize("task, update, message", [
    (task_frame(b"{not json"), None, "a damaged frame (its metadata is not JSON)"),
    (task_frame(b"\xff\xfe\"\0"), None, "a damaged frame (its metadata is not JSON)"),
    (task_frame([1, 2]), None, "a damaged frame (its metadata is not a JSON object)"),
    (task_frame({}), None, "a task with status None (expected 'train', 'wait' or 'done')"),
    (task_frame({**TRAIN_TASK, "seed": "x"}), None, "training task has seed 'x', not an integer"),
    (task_frame({**TRAIN_TASK, "local_epochs": 0}), None, "has local_epochs 0, not an integer ≥ 1"),
    (task_frame({"status": "train"}), None, "has seed None"),
    (task_frame(TRAIN_TASK, count=5), None, "has 5 weights, but this bundle's model has 9610"),
    (task_frame(TRAIN_TASK, fill=float("nan")), None, "training task has NaN or Inf weights"),
    (task_frame({"status": "wait", "retry_after": "soon"}, 0), None,
     "wait with retry_after 'soon', not a number of seconds ≥ 0"),
    (task_frame({"status": "wait", "retry_after": -5}, 0), None, "retry_after -5"),
    (task_frame(TRAIN_TASK), (200, b"<html>"), "answered the update with b'<html>', not a fedc"),
    (task_frame(TRAIN_TASK), (200, b"[1]"), "answered the update with b'[1]', not a fedc reply"),
    (task_frame(TRAIN_TASK), (500, b"[1, 2]"), "HTTP 500 Internal Server Error"),
], ids=["not-json", "not-utf8", "list", "no-status", "seed-x", "epochs-0", "no-seed", "count",
         "nan", "wait-soon", "wait-negative", "reply-html", "reply-list", "error-list"])
def test_python_client_refuses_a_server_that_sends_what_the_protocol_does_not(
        client_mod, bundle, task, update, message):
    # each of these was a traceback: JSONDecodeError, UnicodeDecodeError, TypeError, KeyError,
    # ValueError (int('x'), float('soon'), a negative sleep), AttributeError ([1, 2].get)
    model = client_mod.Model.load(bundle)
    x, y = _data(bundle, 0)
    with fake_server(task, update or (200, b"{}"), model.manifest["wasm"]["sha256"]) as url:
        client = client_mod.Client(url, "t", model, retry_for=0)
        client.join()
        with pytest.raises(client_mod.ClientError, match=re.escape(message)):
            client.step(x, y)


def test_state_file_of_another_model_is_refused(bundle, tmp_path, digits_mlp_source):
    from fedc.harness.bundle import write_bundle
    from fedc.pipeline import compile_source
    other = tmp_path / "other"
    art = compile_source(digits_mlp_source.replace("dense(x, 128)", "dense(x, 32)"), "o.fed")
    write_bundle(art.wasm, art.manifest, other)
    state = tmp_path / "s.db"
    issue_tokens(bundle, state, 1)
    first = Server(bundle, state).start()
    first.stop()
    out = fedc("serve", str(other), "--state", str(state), "--port", "0")
    assert out.returncode == 1 and "holds the state of another model" in out.stderr
    assert "Traceback" not in out.stderr


def test_serving_a_fed_file_compiles_and_serves_its_bundle(tmp_path):
    source = Path(__file__).resolve().parent.parent / "examples" / "digits_mlp.fed"
    with Server(source, tmp_path / "s.db", "--rounds", "2") as server:
        code, page = request(server.url + "/")
        assert code == 200 and b"<title>DigitsMLP" in page
        assert server.status()["rounds"] == 2


def test_a_state_file_that_is_not_sqlite_is_a_clear_error(bundle, tmp_path):
    state = tmp_path / "junk.db"
    state.write_bytes(b"this is not a database" * 100)
    out = fedc("serve", str(bundle), "--state", str(state), "--port", "0")
    assert out.returncode == 1 and "not a usable fedc state database" in out.stderr
    assert "Traceback" not in out.stderr


# --- token management -----------------------------------------------------------------------------

def _token_cmd(bundle: Path, state: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return fedc("serve", str(bundle), "--state", str(state), *flags)


def test_a_revoked_token_is_refused_from_its_next_request_and_keeps_what_it_sent(
        bundle, tmp_path, client_mod):
    """Revoked by another process while the server runs: the next request is a 401 naming the
    revocation, the client leaves the connected set, its accepted update stays in the round."""
    state = tmp_path / "s.db"
    tokens = issue_tokens(bundle, state, 3)
    with Server(bundle, state, "--rounds", "3", "--min-clients", "3",
                "--clients-per-round", "3", "--client-timeout", "600") as server:
        model = client_mod.Model.load(bundle)
        clients = [client_mod.Client(server.url, t, model, retry_for=5) for t in tokens]
        for c in clients:
            c.join()
        gone, *rest = clients
        assert gone.step(*_data(bundle, 0))["event"] == "accepted"
        out = _token_cmd(bundle, state, "--revoke-token", gone.client_id, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["revoked"] == [gone.client_id]
        for path in ("/api/v1/task", "/api/v1/model"):
            code, body = request(server.url + path, token=tokens[0])
            reply = json.loads(body)
            assert code == 401 and reply["error"] == "unauthorized", reply
            assert f"the token of client {gone.client_id} was revoked" in reply["reason"]
        status = server.status()
        assert gone.client_id not in status["connected"]
        assert status["clients"][gone.client_id]["revoked"] is True
        assert status["clients"][rest[0].client_id]["revoked"] is False
        assert status["open_round"]["submitted"] == [gone.client_id]
        for i, c in enumerate(rest, 1):  # the others finish the round, with its update in it
            assert c.step(*_data(bundle, i))["event"] == "accepted"
        status = server.status()
        assert status["round"] == 2 and status["clients"][gone.client_id]["accepted"] == 1
        # round 2 needs three connected clients; the revoked one no longer counts
        for c in rest:
            c.join()
        assert server.status()["status"] != "open"
        shown = fedc("status", server.url).stdout
        assert "clients: 2 connected of 2 registered (1 revoked)" in shown, shown


def test_list_and_revoke_tokens_on_the_command_line(bundle, tmp_path):
    state = tmp_path / "s.db"
    issue_tokens(bundle, state, 2)
    listed = json.loads(_token_cmd(bundle, state, "--list-tokens", "--json").stdout)["clients"]
    ids = [c["client_id"] for c in listed]
    assert len(ids) == 2 and all(c["revoked"] is None and c["accepted"] == 0 for c in listed)
    # all or none: one unknown id revokes nothing, with a hint at the close one
    out = _token_cmd(bundle, state, "--revoke-token", ids[0], "--revoke-token", ids[1] + "x")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--revoke-token '{ids[1]}x': no such client" in out.stderr
    assert f"did you mean '{ids[1]}'?" in out.stderr
    out = _token_cmd(bundle, state, "--revoke-token", ids[0])
    assert out.returncode == 0 and f"revoked 1 token(s) in {state}: {ids[0]}" in out.stderr
    again = json.loads(_token_cmd(bundle, state, "--revoke-token", ids[0], "--json").stdout)
    assert again["revoked"] == [] and again["already_revoked"] == [ids[0]]
    out = _token_cmd(bundle, state, "--list-tokens")
    assert out.returncode == 0
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert rows.keys() == set(ids) and rows[ids[1]][-1] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", " ".join(rows[ids[0]][-2:]))


@pytest.mark.parametrize("flags", [["--list-tokens"], ["--revoke-token", "c00000000"]])
def test_token_commands_never_create_a_state_file(bundle, tmp_path, flags):
    state = tmp_path / "nope.db"
    out = _token_cmd(bundle, state, *flags)
    assert out.returncode == 2 and f"--state {state}: no such state file" in out.stderr
    assert not state.exists() and "Traceback" not in out.stderr


def test_token_commands_are_exclusive(bundle, tmp_path):
    out = _token_cmd(bundle, tmp_path / "s.db", "--issue-tokens", "1", "--list-tokens")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


def test_a_state_file_from_before_revocation_is_upgraded_in_place(bundle, tmp_path):
    state = tmp_path / "old.db"
    with sqlite3.connect(state) as db:  # the clients table of fedc-serve-state/1 before revocation
        db.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL, "
                   "created REAL NOT NULL, accepted INTEGER NOT NULL DEFAULT 0, "
                   "rejected INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO clients VALUES ('c0000abcd', x'00', 0, 4, 1)")
    out = _token_cmd(bundle, state, "--list-tokens", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["clients"] == [
        {"client_id": "c0000abcd", "created": 0, "accepted": 4, "rejected": 1, "revoked": None}]
    assert _token_cmd(bundle, state, "--revoke-token", "c0000abcd").returncode == 0


def test_export_model_writes_a_loadable_model_with_the_servers_global_weights(live, bundle,
                                                                               tmp_path,
                                                                               client_mod):
    """From the state file of a running server: the latest version is what GET /model sends,
    bit for bit, and loads like `fedc train --save`'s folder; an older version on request."""
    server, _, _, tokens = live
    state = Path(server.args[server.args.index("--state") + 1])
    out = _token_cmd(bundle, state, "--export-model", str(tmp_path / "m"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model_version"] == 1 and info["round"] == 1
    assert sorted(info["files"]) == ["manifest.json", "model.wasm", "weights.npy"]
    code, body = request(server.url + "/api/v1/model", token=tokens[0])
    frame = decode(body)
    assert frame.meta["model_version"] == 1
    weights = np.load(tmp_path / "m" / "weights.npy")
    assert weights.dtype == np.float32 and np.array_equal(weights, frame.values)
    model = client_mod.Model.load(tmp_path / "m")
    model.set_weights(weights)
    x, y = _data(bundle, 0)
    assert 0.0 <= model.evaluate(x, y)["accuracy"] <= 1.0
    first = json.loads(_token_cmd(bundle, state, "--export-model", str(tmp_path / "v0"),
                                  "--model-version", "0", "--json").stdout)
    assert first["model_version"] == 0 and first["round"] == 0
    assert not np.array_equal(np.load(tmp_path / "v0" / "weights.npy"), weights)


@pytest.mark.parametrize("flags, code, message", [
    (["--model-version", "7"], 2, "--model-version 7: {state} holds versions 0..0"),
    ([], 1, "holds the state of another model"),
])
def test_export_model_refuses_a_missing_version_or_another_models_state(
        bundle, tmp_path, digits_mlp_source, flags, code, message):
    state = tmp_path / "s.db"
    issue_tokens(bundle, state, 1)
    Server(bundle, state).start().stop()  # writes version 0
    target = bundle
    if code == 1:
        from fedc.harness.bundle import write_bundle
        from fedc.pipeline import compile_source
        target = tmp_path / "other"
        art = compile_source(digits_mlp_source.replace("dense(x, 128)", "dense(x, 32)"), "o.fed")
        write_bundle(art.wasm, art.manifest, target)
    out = _token_cmd(target, state, "--export-model", str(tmp_path / "out"), *flags)
    assert out.returncode == code and message.format(state=state) in out.stderr, out.stderr
    assert not (tmp_path / "out").exists() and "Traceback" not in out.stderr


def test_model_version_needs_export_model(bundle, tmp_path):
    out = _token_cmd(bundle, tmp_path / "s.db", "--model-version", "1")
    assert out.returncode == 2 and "--model-version goes with --export-model" in out.stderr


def test_exit_when_done_stops_once_every_connected_client_was_told(bundle, tmp_path,
                                                                   client_mod):
    """Both clients hear "done" and the server exits 0; a third that joined but never asks
    again only holds it up until the client timeout."""
    state = tmp_path / "s.db"
    tokens = issue_tokens(bundle, state, 3)
    server = Server(bundle, state, "--rounds", "1", "--min-clients", "2",
                    "--clients-per-round", "2", "--client-timeout", "4", "--exit-when-done",
                    "--json").start()
    try:
        model = client_mod.Model.load(bundle)
        a, b, idle = (client_mod.Client(server.url, t, model, retry_for=5) for t in tokens)
        for c in (a, b, idle):
            c.join()
        sampled = server.status()["open_round"]["sampled"]
        by_id = {c.client_id: c for c in (a, b, idle)}
        for i, cid in enumerate(sampled):
            assert by_id[cid].step(*_data(bundle, i))["event"] == "accepted"
        told = time.monotonic()
        for c in by_id.values():
            if c.client_id != sampled[0]:  # one connected client never hears "done"
                assert c.task()[0]["status"] == "done"
        assert server.proc is not None
        code = server.proc.wait(timeout=30)
        waited = time.monotonic() - told
    finally:
        server.stop()
    assert code == 0, server.output()
    assert 2.0 < waited < 20, waited  # held up by the silent one until its client timeout
    assert "finished its 1 rounds" in server.output()


def test_a_second_server_on_the_same_state_file_is_refused(bundle, tmp_path):
    """Two coordinators on one state file would both open and number rounds; the second is
    refused while the first runs, and the file serves again once it has stopped."""
    state = tmp_path / "s.db"
    with Server(bundle, state) as first:
        out = fedc("serve", str(bundle), "--state", str(state), "--port", "0")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert f"{state} is in use by another running fedc serve" in out.stderr
        assert first.status()["round"] == 1
    with Server(bundle, state) as again:  # the lock went with the process
        assert again.status()["round"] == 1


def test_a_state_path_in_a_missing_folder_creates_nothing(bundle, tmp_path):
    out = fedc("serve", str(bundle), "--state", str(tmp_path / "no" / "s.db"), "--port", "0")
    assert out.returncode == 1 and f"no such folder {tmp_path / 'no'}" in out.stderr
    assert not (tmp_path / "no").exists()


# --- odd values and sequences from clients -------------------------------------------------------

def _joined(bundle: Path, state: Path, n: int, *flags: str) -> tuple[Server, dict[str, str]]:
    """A started server with n clients that have joined; {client id: token}."""
    tokens = issue_tokens(bundle, state, n)
    server = Server(bundle, state, *flags).start()
    for t in tokens:
        assert request(server.url + "/api/v1/join", "POST", b"", t)[0] == 200
    return server, {t.split(".")[1]: t for t in tokens}


def _send(server: Server, token: str, meta: dict, weights: np.ndarray) -> tuple[int, dict]:
    code, body = request(server.url + "/api/v1/update", "POST", encode("update", meta, weights),
                         token)
    return code, json.loads(body)


def test_huge_client_losses_do_not_break_status(bundle, tmp_path):
    # Σ loss·n overflowed to Infinity (1e308 × 10⁹ examples): the round's train_loss was stored
    # as Infinity and every GET /api/v1/status after it was a 500 (JSON has no Infinity)
    server, by_id = _joined(bundle, tmp_path / "s.db", 2, "--rounds", "2", "--min-clients", "2",
                            "--clients-per-round", "2")
    try:
        code, body = request(server.url + "/api/v1/task", token=next(iter(by_id.values())))
        weights = decode(body).values
        meta = {"round": 1, "model_version": 0, "num_examples": 10**9, "train_loss": 1e308,
                "eval": {"loss": 1.7e308, "accuracy": 1.0}}
        for token in by_id.values():
            assert _send(server, token, meta, weights)[0] == 200
        status = server.status()
        assert status["round"] == 2
        assert status["rounds_history"][0]["train_loss"] == pytest.approx(1e308)
        out = fedc("status", server.url, "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["round"] == 2, out.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_a_global_model_whose_loss_is_not_finite_is_stored_without_it(digits_mlp, tmp_path):
    from fedc.serve.rounds import Coordinator, ServeConfig
    from fedc.serve.store import Store

    config = ServeConfig(rounds=1, clients_per_round=1, min_clients=1, local_epochs=1,
                         batch_size=8)
    coord = Coordinator(Store(tmp_path / "s.db"), digits_mlp.manifest, config,
                        lambda: np.zeros(9610, np.float32),
                        lambda w: {"loss": float("inf"), "accuracy": 0.1})
    status = coord.status()
    assert status["latest"]["loss"] is None and status["latest"]["accuracy"] == 0.1
    json.dumps(status, allow_nan=False)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _coordinator(digits_mlp, tmp_path: Path, n: int, **config):
    """A Coordinator on a fresh state file with n issued tokens and a clock the test moves."""
    from fedc.serve.rounds import Coordinator, ServeConfig
    from fedc.serve.store import Store

    store = Store(tmp_path / "s.db")
    tokens = [issue(set()) for _ in range(n)]
    store.add_clients(tokens, 0.0)
    clock = _Clock()
    settings = {"rounds": 3, "clients_per_round": n, "min_clients": n, "local_epochs": 1,
                "batch_size": 8, **config}
    coord = Coordinator(store, digits_mlp.manifest, ServeConfig(**settings),
                        lambda: np.zeros(9610, np.float32), clock=clock)
    return coord, clock, {t.client_id: f"Bearer {t.token}" for t in tokens}


def test_a_resampled_round_still_needs_its_quorum_of_updates(digits_mlp, tmp_path):
    # three sampled, one update by the deadline and the other two gone quiet: the resample
    # shrank the sample to the one client that had sent, and the next deadline closed the round
    # with 1 update though --min-clients 3 (the default --min-updates) asked for 3
    coord, clock, auth = _coordinator(digits_mlp, tmp_path, 3, round_timeout=10,
                                      client_timeout=5)
    ids = [coord.authenticate(a) for a in auth.values()]
    assert coord.open is not None and len(coord.open.sampled) == 3
    meta = {"round": 1, "model_version": 0, "num_examples": 10}
    coord.submit(ids[0], encode("update", meta, np.zeros(9610, np.float32)))
    for _ in range(3):  # deadline after deadline with the two others silent
        clock.now += 11
        coord.authenticate(auth[ids[0]])
        coord.tick()
        assert coord.round == 1 and coord.open is not None
        assert set(coord.open.sampled) == set(ids)
    for cid in ids[1:]:  # the stragglers come back and finish the round
        coord.authenticate(auth[cid])
        coord.submit(cid, encode("update", {**meta, "num_examples": 5},
                                 np.zeros(9610, np.float32)))
    assert coord.round == 2 and coord.store.round_history()[0]["outcome"] == "aggregated"


def test_a_diverged_aggregate_stops_the_federation_and_keeps_the_last_finite_model(
        tmp_path, digits_mlp_source):
    # FedAvgM with server_lr 1e45 turns a 0.01 step into Inf weights: the aggregation raised
    # inside the request of the update that closed the round (a 500 after storing it), then on
    # every tick of the round clock, and the round stayed open for ever
    fed = tmp_path / "m.fed"
    fed.write_text(digits_mlp_source.replace("strategy = fedavg", "strategy = fedavgm"))
    from fedc.harness.bundle import write_bundle
    from fedc.pipeline import compile_source
    art = compile_source(fed.read_text(), str(fed))
    bundle = tmp_path / "b"
    write_bundle(art.wasm, art.manifest, bundle)
    state = tmp_path / "s.db"
    server, by_id = _joined(bundle, state, 2, "--rounds", "3", "--min-clients", "2",
                            "--strategy-opt", "server_lr=1e45")
    try:
        token = next(iter(by_id.values()))
        model = request(server.url + "/api/v1/model", token=token)[1]
        weights = decode(model).values
        meta = {"round": 1, "model_version": 0, "num_examples": 10}
        for t in by_id.values():
            assert _send(server, t, meta, weights + 0.01)[0] == 200
        server.kill()  # and the stop survives a restart
        server.start()
        status = server.status()
        assert status["status"] == "diverged" and status["model_version"] == 0
        assert status["rounds_history"][0]["outcome"] == "diverged"
        code, body = request(server.url + "/api/v1/task", token=token)
        assert decode(body).meta["status"] == "done"
        code, reply = _send(server, token, {**meta, "round": 2}, weights)
        assert (code, reply["error"]) == (409, "finished")
        assert "stopped in round 1: its aggregate had NaN or Inf weights" in reply["reason"]
        assert request(server.url + "/api/v1/model", token=token)[1] == model
        assert "diverged, round 1/3" in fedc("status", server.url).stdout
    finally:
        server.stop()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("flags", [["--list-tokens"], ["--issue-tokens", "1"],
                                   ["--export-model", "out"], ["--port", "0"]])
def test_an_sqlite_file_that_is_not_a_fedc_state_is_left_untouched(bundle, tmp_path, flags):
    # --list-tokens (a read) and the others created fedc's six tables in any SQLite database
    # given as --state, and serve made it a federation's state
    state = tmp_path / "app.db"
    with sqlite3.connect(state) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    out = fedc("serve", str(bundle), "--state", str(state), *flags)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{state}: not a fedc state database (an SQLite file with other tables: users)" \
        in out.stderr
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    assert not (tmp_path / "app.db.lock").exists()  # serve's lock went with the refusal


@pytest.mark.parametrize("flags", [["--list-tokens"], ["--revoke-token", "c1"],
                                   ["--export-model", "out"], ["--issue-tokens", "1"],
                                   ["--port", "0"]])
def test_a_state_path_that_is_a_folder_is_named_as_one(bundle, tmp_path, flags):
    # the token and export commands said "no such state file" of a folder that exists, the
    # others sqlite3's "unable to open database file"
    state = tmp_path / "s.db"
    state.mkdir()
    out = fedc("serve", str(bundle), "--state", str(state), *flags)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{state} is a folder, not a fedc state file" in out.stderr, out.stderr


def test_sigterm_stops_the_server_with_its_final_status(bundle, tmp_path):
    # uvicorn re-raises SIGTERM after its graceful shutdown: the process died with it (exit
    # 143) before printing the final status, so `fedc serve --json` printed nothing
    import signal
    server = Server(bundle, tmp_path / "s.db", "--json")
    server.start()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=30)
    server.stop()
    assert code == 0, server.output()
    final = json.loads(server.output().splitlines()[-1])
    assert final["ok"] is True and final["status"] == "waiting"


def test_a_revoked_sampled_client_gives_its_place_to_a_connected_one(bundle, tmp_path,
                                                                     client_mod):
    """The lost device never asks again: its place in the open round goes to a connected
    client outside it at the next tick, and the round closes without waiting for its
    deadline."""
    state = tmp_path / "s.db"
    tokens = issue_tokens(bundle, state, 3)
    with Server(bundle, state, "--rounds", "2", "--min-clients", "2", "--clients-per-round",
                "2", "--round-timeout", "600", "--client-timeout", "600") as server:
        model = client_mod.Model.load(bundle)
        clients = [client_mod.Client(server.url, t, model, retry_for=5) for t in tokens]
        for c in clients:
            c.join()
        sampled = server.status()["open_round"]["sampled"]
        by_id = {c.client_id: c for c in clients}
        (spare,) = set(by_id) - set(sampled)
        lost = sampled[0]
        assert _token_cmd(bundle, state, "--revoke-token", lost).returncode == 0
        deadline = time.monotonic() + 10
        while lost in server.status()["open_round"]["sampled"]:
            assert time.monotonic() < deadline, server.status()["open_round"]
            time.sleep(0.1)
        assert sorted(server.status()["open_round"]["sampled"]) == sorted([sampled[1], spare])
        for i, cid in enumerate((sampled[1], spare)):
            assert by_id[cid].step(*_data(bundle, i))["event"] == "accepted"
        status = server.status()
        assert status["round"] == 2 and status["rounds_history"][0]["outcome"] == "aggregated"


def test_port_0_serves_on_the_free_port_the_banner_names(bundle, tmp_path):
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "fedc", "serve", str(bundle), "--state",
                             str(tmp_path / "s.db"), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = next(line for line in proc.stderr if line.startswith("fedc: serving"))
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert found is not None and int(found[1]) != 0, banner
        port = int(found[1])
        deadline = time.monotonic() + 30
        while True:
            try:
                code, body = request(f"http://127.0.0.1:{port}/api/v1/status")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert code == 200 and json.loads(body)["round"] == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_fails_to_start_leaves_no_lock_or_state_file(bundle, tmp_path):
    state = tmp_path / "s.db"
    out = fedc("serve", str(bundle), "--state", str(state), "--certfile", "x.pem")
    assert out.returncode == 2 and "give both --certfile and --keyfile" in out.stderr
    assert list(tmp_path.iterdir()) == []
