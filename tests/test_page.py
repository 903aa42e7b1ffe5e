"""The bundle's browser page (index.html + fedc-page.js) in headless Chromium against a real
`fedc serve`: what a user sees for a bad token, server URL or data file, and at the end."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .cdp import Chromium, Page, chromium_path
from .serve_util import Server, issue_tokens

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

STATE = ("JSON.stringify({phase: fedcPage.phase, error: fedcPage.error,"
         " accepted: fedcPage.accepted,"
         " shown: document.getElementById('state').textContent,"
         " button: document.getElementById('join').disabled,"
         " log: document.getElementById('log').textContent})")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, digits_mlp) -> Path:
    from fedc.harness.bundle import demo_partitions, write_bundle

    out = tmp_path_factory.mktemp("page") / "bundle"
    write_bundle(digits_mlp.wasm, digits_mlp.manifest, out,
                 demo_partitions("digits", 2, 0, digits_mlp.manifest))
    return out


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[Chromium]:
    tmp = tmp_path_factory.mktemp("chromium")
    browser = Chromium(tmp / "profile", tmp / "chromium.log")
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def page(chromium) -> Iterator[Page]:
    page = chromium.page()
    try:
        yield page
    finally:
        page.close()


def _serve(bundle: Path, state: Path, *flags: str) -> tuple[Server, list[str]]:
    tokens = issue_tokens(bundle, state, 2)
    return Server(bundle, state, "--min-clients", "1", "--clients-per-round", "1",
                  *flags).start(), tokens


def _url(server: Server, /, **params: str) -> str:
    return f"{server.url}/?{urllib.parse.urlencode({**params, 'autostart': '1'})}"


def _run(page: Page, url: str, timeout: float = 10,
         until: Callable[[dict[str, Any]], bool] = lambda s: bool(s["error"])) -> dict[str, Any]:
    """Open url and poll the page's state until `until` holds (or the timeout)."""
    page.send("Page.navigate", {"url": url})
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = json.loads(page.evaluate(f"window.fedcPage ? {STATE} : 'null'") or "null") or {}
        if state and until(state):
            break
        time.sleep(0.2)
    state["errors"] = page.errors()
    return state


@pytest.mark.parametrize(("params", "message"), [
    ({"token": "fedc1.…"}, 'the token contains "…", which no fedc token has'),
    ({"server": "localhost:{port}"}, 'the server URL "localhost:{port}" is not an http:// or'),
])
def test_a_token_or_server_url_that_cannot_be_sent_is_an_error_at_once(
        bundle, tmp_path, page, params, message):
    # fetch refuses both before sending, with the TypeError of a server that is down: the page
    # said "loading the model" for the two minutes it retried, then "cannot reach"
    server, tokens = _serve(bundle, tmp_path / "s.db")
    try:
        params = {"token": tokens[0], "data": "data/client-0.npz", **params}
        params = {k: v.format(port=server.port) for k, v in params.items()}
        started = time.monotonic()
        state = _run(page, _url(server, **params))
        assert time.monotonic() - started < 8, state
        assert state["error"].startswith(message.format(port=server.port)), state
        assert state["shown"] == f"error: {state['error']}" and not state["button"]
        assert "retry" not in state["log"] and state["errors"] == []
        assert server.status()["connected"] == []
    finally:
        server.stop()


def _digits(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(bundle / "data" / "client-0.npz") as npz:
        return npz["x"], npz["y"]


def _with(a: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    a = a.astype(np.float32 if np.isnan(value) else a.dtype)
    a[index] = value
    return a


@pytest.mark.parametrize(("arrays", "message"), [
    (lambda x, y: {"x": x[:0], "y": y[:0]}, "'x' and 'y' have no rows"),
    (lambda x, y: {"x": x, "y": _with(y, (7,), 10)}, "class label 10 is outside 0..9"),
    (lambda x, y: {"x": _with(x, (5, 3), np.nan), "y": y}, "input x contains NaN or Inf"),
    (lambda x, y: {"x": x[:, :63], "y": y}, "'x' expects rows of shape [64] but got [63]"),
    (lambda x, y: {"x": x, "y": np.eye(10, dtype=np.int32)[y]},
     "'y' expects rows of shape [] but got [10]"),
    (lambda x, y: {"x": np.float32(1), "y": y}, "'x' has shape [] but 'y' has [719]"),
])
def test_data_that_does_not_fit_the_model_is_refused_before_joining(
        bundle, tmp_path, page, arrays, message):
    # the page joined, was sampled, and found out when training (an empty file was trained,
    # sent, and refused by the server: "num_examples must be in 1..1000000000, got 0")
    x, y = _digits(bundle)
    name = f"bad-{tmp_path.name}.npz"
    np.savez(bundle / name, **arrays(x, y))
    server, tokens = _serve(bundle, tmp_path / "s.db", "--rounds", "100")
    try:
        state = _run(page, _url(server, token=tokens[0], data=name))
        status = server.status()
    finally:
        server.stop()
    assert state["error"] == message, state
    assert "joined" not in state["log"] and not state["button"] and state["errors"] == []
    assert status["connected"] == [] and status["round"] == 1


def test_a_diverged_federation_is_not_shown_as_done(tmp_path, page, digits_mlp_source):
    # FedAvgM with server_lr 1e45 makes round 1's aggregate Inf: the tasks then say "done", as
    # after the last round, and the page said "done" as if the federation had finished
    from fedc.harness.bundle import demo_partitions, write_bundle
    from fedc.pipeline import compile_source

    art = compile_source(digits_mlp_source.replace("strategy = fedavg", "strategy = fedavgm"),
                         "m.fed")
    bundle = tmp_path / "bundle"
    write_bundle(art.wasm, art.manifest, bundle, demo_partitions("digits", 1, 0, art.manifest))
    server, tokens = _serve(bundle, tmp_path / "s.db", "--rounds", "5",
                            "--strategy-opt", "server_lr=1e45")
    try:
        state = _run(page, _url(server, token=tokens[0], data="data/client-0.npz"),
                     until=lambda s: "diverged" in s["shown"] or bool(s["error"]))
        assert server.status()["status"] == "diverged"
    finally:
        server.stop()
    assert state["shown"].startswith("stopped: the federation diverged in round 1 "), state
    assert state["accepted"] == 1 and state["error"] is None and state["errors"] == []


def test_a_finished_federation_says_done_in_a_live_region_and_no_request_carries_the_data(
        bundle, tmp_path, page):
    # the state is announced to screen readers (it had no aria-live: a blind user heard
    # nothing of joining, errors or the end); only update frames leave the page
    page.send("Network.enable")
    server, tokens = _serve(bundle, tmp_path / "s.db", "--rounds", "2")
    try:
        state = _run(page, _url(server, token=tokens[0], data="data/client-0.npz"),
                     until=lambda s: s["phase"] == "done" or bool(s["error"]))
    finally:
        server.stop()
    assert state["phase"] == "done" and state["accepted"] == 2 and state["errors"] == [], state
    live = page.evaluate("(() => { const e = document.getElementById('state');"
                         " return [e.getAttribute('role'), e.getAttribute('aria-live')]; })()")
    assert live == ["status", "polite"]
    sent = [e["params"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]
    origin = server.url + "/"
    assert all(s["request"]["url"].startswith(origin) for s in sent), sent  # no CDN either
    posts = [s["request"] for s in sent if s["request"]["method"] == "POST"]
    assert [p["url"][len(origin):] for p in posts] == ["api/v1/join"] + ["api/v1/update"] * 2
    assert not posts[0].get("hasPostData")
    updates = posts[1:]
    assert all(p["headers"].get("Content-Type") == "application/x-fedc-frame" for p in updates)
    # the token left the address bar (and the history) once read; the data URL stayed
    shown = urllib.parse.parse_qs(urllib.parse.urlparse(page.evaluate("location.href")).query)
    assert "token" not in shown and shown["data"] == ["data/client-0.npz"], shown
    assert page.evaluate("document.getElementById('token').value") == tokens[0]
    assert all(tokens[0] not in s["request"]["headers"].get("Referer", "") for s in sent)


@pytest.mark.parametrize(("data", "message"), [
    ("http://[bad", 'the data URL "http://[bad" is not a valid URL'),
    ("http://127.0.0.1:9/x.npz", "cannot fetch http://127.0.0.1:9/x.npz: "),
    ("data/missing.npz", "cannot fetch data/missing.npz: HTTP 404"),
    ("index.html", "not a .npz file (expected arrays saved with numpy.savez)"),
])
def test_an_autostart_data_url_that_gives_no_npz_is_an_error_naming_it(
        bundle, tmp_path, page, data, message):
    # the first two said only "TypeError: Failed to construct 'URL': Invalid URL" and
    # "TypeError: Failed to fetch"
    server, tokens = _serve(bundle, tmp_path / "s.db")
    try:
        state = _run(page, _url(server, token=tokens[0], data=data))
    finally:
        server.stop()
    assert state["error"].startswith(message), state
    assert "joined" not in state["log"] and not state["button"] and state["errors"] == []


def test_a_round_the_server_closed_before_the_update_says_skipped(bundle, tmp_path, page):
    """Another client's update closes round 1 at its deadline while the page still trains,
    and round 2 cannot open (both clients were silent past the client timeout): the page's
    update is refused (409), and the page said "training" until a next round came."""
    from .serve_util import load_client_module
    server, tokens = _serve(bundle, tmp_path / "s.db", "--rounds", "2", "--min-clients", "2",
                            "--clients-per-round", "2", "--min-updates", "1",
                            "--round-timeout", "2", "--client-timeout", "1.5",
                            "--local-epochs", "3000")
    try:
        client_mod = load_client_module(bundle)
        fast = client_mod.Client(server.url, tokens[1], client_mod.Model.load(bundle),
                                 retry_for=5)
        fast.join()
        page.send("Page.navigate", {"url": _url(server, token=tokens[0],
                                                data="data/client-0.npz")})
        deadline = time.monotonic() + 20
        while server.status().get("open_round") is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        task, weights = fast.task()
        assert task["status"] == "train" and task["round"] == 1
        fast.send(task, weights, 10, 0.0, {})
        state = _poll(page, lambda s: s["phase"].startswith("skipped") or bool(s["error"]))
    finally:
        server.stop()
    assert state["phase"].startswith("skipped round 1 (") and state["error"] is None, state
    assert state["phase"].endswith("); waiting for the next round"), state


def test_an_unreachable_server_shows_until_it_answers_again(bundle, tmp_path, page):
    """The page said "joined as …" while it retried a server that was down (the retries only
    in its log); now it says so, and goes back to what it showed once the server answers."""
    server, tokens = _serve(bundle, tmp_path / "s.db", "--min-clients", "2",
                            "--clients-per-round", "2")  # no round opens: the page waits
    try:
        joined = _run(page, _url(server, token=tokens[0], data="data/client-0.npz"),
                      until=lambda s: s["phase"].startswith("joined as"))
        assert joined["phase"].startswith("joined as"), joined
        server.kill()
        down = _poll(page, lambda s: s["phase"].startswith("cannot reach the server ("))
        assert down["phase"].endswith("); retrying") and down["error"] is None, down
        server.start()
        back = _poll(page, lambda s: not s["phase"].startswith("cannot reach"))
        assert back["phase"] == joined["phase"] and back["error"] is None, back
        assert "reconnected" in back["log"] and page.errors() == []
    finally:
        server.stop()


def _poll(page: Page, until: Callable[[dict[str, Any]], bool],
          timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = json.loads(page.evaluate(STATE))
        if until(state):
            break
        time.sleep(0.2)
    return state
