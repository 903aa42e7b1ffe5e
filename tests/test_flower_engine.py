"""The generated Flower app on Flower's engines: simulation (`flwr run` against a local SuperLink
in simulation mode) and, with the edge bridge, a deployment of separate SuperNode processes.

Every SuperLink and SuperNode is started here on 127.0.0.1 with FLWR_HOME in a tmp folder and
stopped by its PID (tests/flower_util.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedc.cli import main  # noqa: E402
from tests.flower_util import SuperLink, flwr_run  # noqa: E402

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
