"""The generated Flower app on Flower's engines: simulation (`flwr run` against a local SuperLink
in simulation mode) and, with the edge bridge, a deployment of separate SuperNode processes.

Every SuperLink and SuperNode is started here on 127.0.0.1 with FLWR_HOME in a tmp folder and
stopped by its PID (tests/flower_util.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedc.cli import main  # noqa: E402
from tests.flower_util import (  # noqa: E402
    Pki,
    Proc,
    SuperLink,
    flower_env,
    flwr_run,
    gone,
    supernode,
)
from tests.serve_util import free_port, issue_tokens  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NODES, ROUNDS, SEED = 4, 3, 0
# Flower averages in float32 in reply order, fedc in float64 in client order: after 3 rounds the
# global models differ by < 1e-7 here (measured 4.5e-8); the bound leaves room for other BLAS
PARITY_ATOL = 1e-6


@pytest.fixture(scope="module")
def flower_app(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flower") / "app"
    assert main(["compile", str(ROOT / "examples/digits_mlp.fed"), "--target", "flower",
                 "-o", str(out), "--data", "digits", "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def simulation(flower_app, tmp_path_factory) -> dict:
    """One `flwr run` in Flower's simulation engine: NODES supernodes, ROUNDS rounds."""
    home = tmp_path_factory.mktemp("flwr-home")
    results = home / "results"
    link = SuperLink(home, simulation=True)
    try:
        log = flwr_run(flower_app, home, link, {
            "num-server-rounds": ROUNDS, "min-nodes": NODES, "seed": SEED,
            "out-dir": str(results)}, federation=f"num-supernodes={NODES}")
    finally:
        link.stop()
    assert not link.alive(), "the SuperLink is still running"
    history = json.loads((results / "history.json").read_text())
    return {"history": history, "weights": np.load(results / "weights.npy"), "log": log}


@pytest.fixture(scope="module")
def fedc_run(digits_mlp):
    from fedc.data import load_dataset
    from fedc.fl.simulate import config_from, simulate

    config = config_from(digits_mlp.manifest["federated"], clients=NODES, rounds=ROUNDS,
                         clients_per_round=NODES, seed=SEED)
    data = load_dataset("digits", seed=SEED, test_fraction=config.test_fraction,
                        task=digits_mlp.manifest["task"])
    return simulate(digits_mlp.wasm, digits_mlp.manifest, data, config)


def test_flower_simulation_learns_as_fedc_simulate_does(simulation, fedc_run):
    central = simulation["history"]["central"]
    accuracy = [central[str(r)]["accuracy"] for r in range(ROUNDS + 1)]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.75, accuracy  # from chance to learned
    assert all(b >= a for a, b in zip(accuracy[:-1], accuracy[1:], strict=True)), accuracy
    # the same test split and model: the same accuracy each round, up to one test example
    ours = [r.test_accuracy for r in fedc_run.rounds]
    assert np.allclose(accuracy[1:], ours, atol=1 / 360), (accuracy, ours)
    assert f"Sampled {NODES} nodes (out of {NODES})" in simulation["log"]


def test_flower_and_fedc_simulate_reach_the_same_global_model(simulation, fedc_run,
                                                              digits_mlp):
    from fedc.runtime import Model

    start = Model(digits_mlp.wasm, digits_mlp.manifest)
    start.init_weights(SEED)
    flower, ours = simulation["weights"], fedc_run.weights
    assert flower.shape == ours.shape
    assert np.abs(ours - start.get_weights()).max() > 100 * PARITY_ATOL  # the rounds moved it
    np.testing.assert_allclose(flower, ours, rtol=0, atol=PARITY_ATOL)


# --- deployment: a SuperLink, a SuperNode, and fedc serve as a bridge SuperNode ------------------

def _wait_for(url: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.alive(), proc.output()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer:\n{proc.output()}")


@pytest.fixture(scope="module")
def edge_bundle(tmp_path_factory) -> Path:
    """The fedc serve bundle with digits cut into 3 partitions (as the Flower app cuts them)."""
    out = tmp_path_factory.mktemp("edge") / "bundle"
    assert main(["bundle", str(ROOT / "examples/digits_mlp.fed"), "-o", str(out),
                 "--demo-data", "digits", "--demo-clients", "3", "--json"]) == 0
    return out


def _edge_server(bundle: Path, state: Path, link: SuperLink, key: Path, home: Path,
                 log: Path) -> tuple[Proc, str]:
    """`fedc serve --flower-superlink` over TLS with a registered node key; (process, URL)."""
    assert link.pki is not None
    port = free_port()
    bridge = Proc([sys.executable, "-m", "fedc", "serve", str(bundle), "--state", str(state),
                   "--port", str(port), "--min-clients", "2",
                   "--flower-superlink", f"127.0.0.1:{link.port}",
                   "--flower-root-certificates", str(link.pki.ca),
                   "--flower-auth-key", str(key)], flower_env(home), log)
    url = f"http://127.0.0.1:{port}"
    _wait_for(url + "/api/v1/status", bridge)
    return bridge, url


def test_deployment_with_a_supernode_and_a_fedc_serve_bridge(flower_app, edge_bundle, tmp_path):
    """TLS and node authentication as in docs/flower.md: SuperNode A trains partition 0; fedc
    serve is the second SuperNode, its two Python edge clients hold partitions 1 and 2; an
    unregistered SuperNode is refused."""
    home, results, state = tmp_path / "flwr-home", tmp_path / "results", tmp_path / "edge.db"
    pki = Pki(tmp_path / "pki")
    (key_a, pub_a), (key_b, pub_b) = pki.node_key("node-a"), pki.node_key("bridge")
    rogue_key, _ = pki.node_key("rogue")
    tokens = issue_tokens(edge_bundle, state, 2)
    procs: list[Proc] = []
    try:
        link = SuperLink(home, simulation=False, pki=pki, auth=True)
        procs.append(link)
        link.register(pub_a)
        link.register(pub_b)
        procs.append(supernode(home, link, "partition-id=0 num-partitions=3", "node-a.log",
                               key=key_a))
        rogue = supernode(home, link, "partition-id=1 num-partitions=3", "rogue.log",
                          key=rogue_key, extra=("--max-retries", "1"))
        procs.append(rogue)
        bridge, url = _edge_server(edge_bundle, state, link, key_b, home, tmp_path / "bridge.log")
        procs.append(bridge)
        for i, token in enumerate(tokens, start=1):  # partitions 1 and 2 stay on the edge
            procs.append(Proc([sys.executable, str(edge_bundle / "client.py"), "--server", url,
                               "--token", token, "--data",
                               str(edge_bundle / f"data/client-{i}.npz"), "--json"],
                              flower_env(home), tmp_path / f"edge-{i}.log"))
        log = flwr_run(flower_app, home, link, {"num-server-rounds": ROUNDS, "min-nodes": 2,
                                                "seed": SEED, "out-dir": str(results)})
        with urllib.request.urlopen(url + "/api/v1/status", timeout=10) as res:
            status = json.loads(res.read())
        rogue_exit = rogue.proc.wait(timeout=60)
    finally:
        for p in reversed(procs):
            p.stop()
    child = int(re.search(r"flower-supernode pid (\d+)", bridge.output()).group(1))
    assert all(not p.alive() for p in procs) and gone(child), "a Flower process is still running"

    assert rogue_exit != 0 and "Failed to activate SuperNode" in rogue.output()
    assert log.count("Sampled 2 nodes (out of 2)") == ROUNDS, log
    assert log.count("Received 2 results and 0 failures") == ROUNDS, log
    edge_rounds = [r for r in status["rounds_history"] if r["outcome"] == "aggregated"]
    assert len(edge_rounds) == ROUNDS and all(len(r["sampled"]) == 2 for r in edge_rounds)
    assert all(c["accepted"] == ROUNDS for c in status["clients"].values())
    central = json.loads((results / "history.json").read_text())["central"]
    accuracy = [central[str(r)]["accuracy"] for r in range(ROUNDS + 1)]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.75, accuracy
