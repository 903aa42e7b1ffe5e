"""The Flower bridge's server side: upstream models open edge rounds, closed rounds come back as
the edge clients' weighted mean with Σ examples (in process; the deployment test runs it live)."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.serve.auth import issue
from fedc.serve.flower_bridge import BridgeCoordinator, bridge_routes
from fedc.serve.protocol import decode, encode
from fedc.serve.rounds import ServeConfig
from fedc.serve.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bridge(tmp_path, digits_mlp):
    store = Store(tmp_path / "state.db")
    tokens = [issue(set()) for _ in range(2)]
    store.add_clients(tokens, 0.0)
    n = digits_mlp.manifest["params_region"]["count"]
    config = ServeConfig(rounds=5, clients_per_round=2, min_clients=2, local_epochs=1,
                         batch_size=32, strategy="fedadam")  # the bridge always pre-averages
    coord = BridgeCoordinator(store, digits_mlp.manifest, config,
                              lambda: np.zeros(n, np.float32), clock=Clock())
    yield coord, tokens, n
    store.close()


def _join(coord, token) -> str:
    return coord.authenticate(f"Bearer {token.token}")


def _submit(coord, client: str, rnd: int, version: int, weights, n: int, loss: float) -> None:
    body = encode("update", {"round": rnd, "model_version": version, "num_examples": n,
                             "train_loss": loss}, weights)
    assert coord.submit(client, body)["status"] == "accepted"


def test_an_upstream_model_opens_an_edge_round_and_returns_the_weighted_mean(bridge):
    coord, tokens, n = bridge
    ids = [_join(coord, t) for t in tokens]
    upstream = np.full(n, 0.5, np.float32)
    rnd = coord.start_upstream(upstream, local_epochs=3, batch_size=16)
    assert coord.open is not None and coord.open.round == rnd
    meta = decode(coord.task(ids[0]))
    assert meta.meta["status"] == "train" and meta.meta["local_epochs"] == 3
    assert meta.meta["batch_size"] == 16 and np.array_equal(meta.values, upstream)
    version = meta.meta["model_version"]
    a, b = upstream + 1, upstream - 2
    _submit(coord, ids[0], rnd, version, a, 30, 1.0)
    assert coord.wait_result(rnd, 0) is None  # one of two: still open
    _submit(coord, ids[1], rnd, version, b, 10, 3.0)
    res = coord.wait_result(rnd, 0)
    assert res is not None and res.num_examples == 40 and res.clients == 2
    np.testing.assert_allclose(res.weights, (30 * a + 10 * b) / 40, rtol=0, atol=1e-6)
    assert res.train_loss == pytest.approx(1.5)
    assert coord.open is None  # no new edge round until Flower sends the next model


def test_no_edge_round_opens_without_an_upstream_model_or_before_clients_connect(bridge):
    coord, tokens, n = bridge
    ids = [_join(coord, t) for t in tokens[:1]]
    coord.tick()
    assert coord.open is None
    rnd = coord.start_upstream(np.ones(n, np.float32), 1, 32)
    assert coord.open is None  # one client connected, two needed
    ids.append(_join(coord, tokens[1]))  # the second client's request opens it
    assert coord.open is not None and coord.open.round == rnd
    assert decode(coord.task(ids[1])).meta["status"] == "train"


def test_a_new_upstream_model_supersedes_an_unfinished_edge_round(bridge):
    coord, tokens, n = bridge
    for t in tokens:
        _join(coord, t)
    first = coord.start_upstream(np.ones(n, np.float32), 1, 32)
    second = coord.start_upstream(np.full(n, 2.0, np.float32), 1, 32)
    assert second == first + 1
    old = coord.wait_result(first, 0)
    assert old is not None and old.weights is None
    assert np.array_equal(coord.weights, np.full(n, 2.0, np.float32))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette's TestClient over httpx
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_bridge_endpoints_need_the_bridge_token_and_carry_frames(bridge):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    coord, tokens, n = bridge
    ids = [_join(coord, t) for t in tokens]
    app = Starlette(routes=bridge_routes(coord, "s3cret"))
    http = TestClient(app)
    model = encode("model", {"flower_round": 1, "local_epochs": 1, "batch_size": 8},
                   np.zeros(n, np.float32))
    assert http.post("/api/v1/bridge/round", content=model).status_code == 401
    assert http.post("/api/v1/bridge/round", content=model,
                     headers={"Authorization": f"Bearer {tokens[0].token}"}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    short = encode("model", {"local_epochs": 1, "batch_size": 8}, np.zeros(3, np.float32))
    assert http.post("/api/v1/bridge/round", content=short, headers=auth).status_code == 422
    rnd = http.post("/api/v1/bridge/round", content=model, headers=auth).json()["round"]
    assert http.get(f"/api/v1/bridge/round/{rnd}?wait=0", headers=auth).status_code == 202
    version = coord.open.model_version
    for i, client in enumerate(ids):
        _submit(coord, client, rnd, version, np.full(n, i, np.float32), 5, 0.5)
    res = http.get(f"/api/v1/bridge/round/{rnd}?wait=1", headers=auth)
    frame = decode(res.content)
    assert res.status_code == 200 and frame.kind == "update"
    assert frame.meta["num_examples"] == 10 and frame.meta["clients"] == 2
    np.testing.assert_allclose(frame.values, 0.5, rtol=0, atol=1e-7)


def test_huge_edge_losses_still_give_a_result_frame(bridge):
    # Σ loss·n / Σ n overflowed to Infinity (finite losses near 1e308, 10⁹ examples): encoding
    # the result frame's metadata raised ValueError (JSON has no Infinity), a 500 for Flower
    coord, tokens, n = bridge
    ids = [_join(coord, t) for t in tokens]
    rnd = coord.start_upstream(np.zeros(n, np.float32), 1, 32)
    for client in ids:
        _submit(coord, client, rnd, coord.open.model_version, np.zeros(n, np.float32), 10**9,
                1e308)
    res = coord.wait_result(rnd, 0)
    assert res is not None and res.train_loss == pytest.approx(1e308)
    encode("update", {"train_loss": res.train_loss}, res.weights)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette's TestClient over httpx
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_result_request_with_a_wait_that_is_not_a_number_is_refused(bridge):
    # ?wait=nan passed the clamp (max and min keep a NaN) and Condition.wait_for(timeout=nan)
    # blocked its worker thread for ever
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    coord = bridge[0]
    http = TestClient(Starlette(routes=bridge_routes(coord, "s3cret")))
    auth = {"Authorization": "Bearer s3cret"}
    for wait in ("nan", "NaN", "x"):
        res = http.get(f"/api/v1/bridge/round/1?wait={wait}", headers=auth)
        assert res.status_code == 400 and res.json()["error"] == "bad_request", wait
