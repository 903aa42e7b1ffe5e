"""The bundle's browser page (index.html + fedc-page.js) in headless Chromium against a real
`fedc serve`: what a user sees for a bad token, server URL or data file, and at the end."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
