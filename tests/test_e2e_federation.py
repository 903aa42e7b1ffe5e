"""End to end: `fedc serve` with three Python, two Node and one headless-Chromium client, each
on its own partition of digits, runs five rounds; the global model goes from chance to ≥ 0.85."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cdp import Chromium, chromium_path
from .serve_util import Server, issue_tokens

pytestmark = [
    pytest.mark.slow, pytest.mark.node, pytest.mark.browser,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

ROUNDS = 5
PYTHON, NODE = 3, 2
CLIENTS = PYTHON + NODE + 1


def _browser_round_trip(chromium: Chromium, url: str, timeout: float) -> dict:
    """Open the page, let it join and train, and return its state once it is done."""
    page = chromium.page()
    try:
        page.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        state: dict = {}
        while time.monotonic() < deadline:
            state = page.evaluate("window.fedcPage ? JSON.stringify({phase: fedcPage.phase, "
                                  "error: fedcPage.error, accepted: fedcPage.accepted, "
                                  "round: document.getElementById('round').textContent, "
                                  "shown: document.getElementById('global-accuracy')"
                                  ".textContent}) : '{}'")
            state = json.loads(state)
            if state.get("phase") == "done" or state.get("error"):
                break
            time.sleep(0.25)
        # the final status fetch updates the page just after "done"
        time.sleep(0.5)
        state["shown"] = page.evaluate("document.getElementById('global-accuracy').textContent")
        state["errors"] = page.errors()
        return state
    finally:
        page.close()


def test_python_node_and_browser_clients_federate_to_085(tmp_path, digits_mlp):
    from fedc.harness.bundle import demo_partitions, write_bundle

    bundle = tmp_path / "bundle"
    write_bundle(digits_mlp.wasm, digits_mlp.manifest, bundle,
                 demo_partitions("digits", CLIENTS, 0, digits_mlp.manifest))
    state = tmp_path / "state.db"
    tokens = issue_tokens(bundle, state, CLIENTS)
    server = Server(bundle, state, "--rounds", str(ROUNDS), "--min-clients", str(CLIENTS),
                    "--clients-per-round", str(CLIENTS), "--local-epochs", "2",
                    "--eval-data", "digits", "--round-timeout", "120").start()
    chromium = Chromium(tmp_path / "profile", tmp_path / "chromium.log")
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        data = lambda i: str(bundle / "data" / f"client-{i}.npz")  # noqa: E731
        common = ["--server", server.url, "--json"]
        for i in range(PYTHON):
            procs.append(("python", subprocess.Popen(
                [sys.executable, str(bundle / "client.py"), *common, "--token", tokens[i],
                 "--data", data(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for i in range(PYTHON, PYTHON + NODE):
            procs.append(("node", subprocess.Popen(
                ["node", str(bundle / "fedc-client.js"), *common, "--token", tokens[i],
                 "--data", data(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        page = _browser_round_trip(
            chromium, f"{server.url}/?token={tokens[-1]}&data=data/client-{CLIENTS - 1}.npz"
                      "&autostart=1", timeout=300)
        outputs = [(kind, *p.communicate(timeout=120), p.returncode) for kind, p in procs]
        status = server.status()
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
        chromium.stop()
        server.stop()

    assert page["phase"] == "done" and page["accepted"] == ROUNDS, page
    assert page["round"] == str(ROUNDS) and float(page["shown"]) >= 0.85, page
    assert page["errors"] == [], page["errors"]
    for kind, out, err, code in outputs:
        assert code == 0, f"{kind} client failed: {err}"
        events = [json.loads(line) for line in out.splitlines()]
        accepted = [e["round"] for e in events if e["event"] == "accepted"]
        assert accepted == list(range(1, ROUNDS + 1)), (kind, events)
    assert status["status"] == "done" and status["model_version"] == ROUNDS
    assert status["accepted"] == ROUNDS * CLIENTS and status["rejected"] == 0
    assert all(c == {"accepted": ROUNDS, "rejected": 0, "revoked": False,
                     "connected": True} for c in status["clients"].values()), status["clients"]
    accuracy = [m["accuracy"] for m in status["models"]]
    assert accuracy[0] < 0.2 and accuracy[-1] >= 0.85, accuracy
    rounds = status["rounds_history"]
    seconds = [r["closed"] - r["opened"] for r in rounds]
    print(f"\naccuracy by model version: {[round(a, 4) for a in accuracy]}"
          f"\nround seconds: {[round(s, 3) for s in seconds]}; update {status['update_bytes']} B")
    Path(tmp_path / "measured.json").write_text(json.dumps({"accuracy": accuracy,
                                                            "round_seconds": seconds}))
