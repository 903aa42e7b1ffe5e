"""Flower parity: fedc and Flower 1.42 strategies give the same global model from the same replies.

Flower aggregates per array (a model's list of layers) and fedc over one flat vector, so each
round's replies are built as a two-layer model for Flower and flattened for fedc. Flower's
Message-API strategies are driven offline: replies are hand-built Messages (with explicit
Metadata, since no SuperLink assigns one) and, where Flower's ``configure_train`` would record the
current global model, that attribute is set directly.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.server.strategy.aggregate import aggregate as legacy_aggregate  # noqa: E402
from flwr.serverapp import strategy as fl  # noqa: E402
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords  # noqa: E402

from fedc.fl.strategies import ClientUpdate, make_strategy  # noqa: E402

SHAPES = [(3, 4), (4,)]  # a dense layer's kernel and bias
ATOL = 1e-6


@pytest.fixture(autouse=True)
def quiet_flower():
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def layers(flat: np.ndarray) -> list[np.ndarray]:
    out, start = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(flat[start:start + size].reshape(shape).astype(np.float32))
        start += size
    return out


def make_round(rng: np.random.Generator, global_flat: np.ndarray, clients: int = 7,
               outlier: bool = False) -> list[ClientUpdate]:
    drift = rng.normal(size=global_flat.size).astype(np.float32)
    updates = []
    for i in range(clients):
        w = global_flat + 0.5 * drift + 0.3 * rng.normal(size=global_flat.size)
        updates.append(ClientUpdate(w.astype(np.float32), int(rng.integers(5, 200)), f"c{i}"))
    if outlier:  # a Byzantine client far from the rest, so robust rules have something to drop
        updates[-1] = ClientUpdate(-10 * updates[0].weights, 50, "bad")
    return updates


def reply(update: ClientUpdate, node: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord(layers(update.weights)),
                          "metrics": MetricRecord({"num-examples": update.num_examples})})
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id=f"i{node}", group_id="1", created_at=time.time(),
                    ttl=3600.0, message_type="train")
    return Message(content=content, metadata=meta)


def flatten(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.reshape(-1) for a in record.to_numpy_ndarrays()])


def run_rounds(fedc_name: str, fedc_options: dict, flower, rounds: int = 3,
               outlier: bool = False) -> None:
    """Feed both the same replies for several rounds; require the same global model each round."""
    rng = np.random.default_rng(7)
    ours = make_strategy(fedc_name, **fedc_options)
    w = rng.normal(size=sum(int(np.prod(s)) for s in SHAPES)).astype(np.float32)
    if isinstance(flower, fl.FedAvgM):
        flower.current_arrays = ArrayRecord(layers(w))  # configure_train sets it once
    for server_round in range(1, rounds + 1):
        updates = make_round(rng, w, outlier=outlier)
        if hasattr(flower, "m_t"):  # FedOpt's configure_train records the arrays it sends
            flower.current_arrays = {k: a.numpy() for k, a in ArrayRecord(layers(w)).items()}
        theirs, _ = flower.aggregate_train(
            server_round, [reply(u, i + 1) for i, u in enumerate(updates)])
        mine = ours.aggregate(w, updates)
        np.testing.assert_allclose(mine, flatten(theirs), atol=ATOL, rtol=0,
                                   err_msg=f"{fedc_name} round {server_round}")
        w = mine


def test_fedavg_matches_flowers_weighted_average_functions():
    updates = make_round(np.random.default_rng(0), np.zeros(16, np.float32))
    mine = make_strategy("fedavg").aggregate(np.zeros(16, np.float32), updates)
    records = [reply(u, i).content for i, u in enumerate(updates)]
    np.testing.assert_allclose(mine, flatten(aggregate_arrayrecords(records, "num-examples")),
                               atol=ATOL, rtol=0)
    legacy = legacy_aggregate([(layers(u.weights), u.num_examples) for u in updates])
    np.testing.assert_allclose(mine, np.concatenate([a.reshape(-1) for a in legacy]),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("fedc_name,fedc_options,flower_factory", [
    ("fedavg", {}, lambda: fl.FedAvg()),
    ("fedprox", {"mu": 0.1}, lambda: fl.FedProx(proximal_mu=0.1)),
    ("fedavgm", {"momentum": 0.9}, lambda: fl.FedAvgM(server_momentum=0.9)),
    ("fedavgm", {"momentum": 0.5, "server_lr": 0.7},
     lambda: fl.FedAvgM(server_momentum=0.5, server_learning_rate=0.7)),
    ("fedadam", {}, lambda: fl.FedAdam()),
    ("fedyogi", {}, lambda: fl.FedYogi()),
    ("fedadagrad", {}, lambda: fl.FedAdagrad()),
    ("fedadam", {"eta": 0.05, "beta1": 0.5, "beta2": 0.9, "tau": 1e-2},
     lambda: fl.FedAdam(eta=0.05, beta_1=0.5, beta_2=0.9, tau=1e-2)),
])
def test_averaging_and_server_optimisers_match_flower_over_rounds(fedc_name, fedc_options,
                                                                   flower_factory):
    run_rounds(fedc_name, fedc_options, flower_factory())


@pytest.mark.parametrize("fedc_name,fedc_options,flower_factory", [
    ("median", {}, lambda: fl.FedMedian()),
    ("trimmed_mean", {"beta": 0.2}, lambda: fl.FedTrimmedAvg(beta=0.2)),
    ("trimmed_mean", {"beta": 0.3}, lambda: fl.FedTrimmedAvg(beta=0.3)),
    ("krum", {"f": 2}, lambda: fl.Krum(num_malicious_nodes=2)),
    ("multikrum", {"f": 1, "m": 3},
     lambda: fl.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)),
])
def test_robust_rules_match_flower_with_an_outlier(fedc_name, fedc_options, flower_factory):
    run_rounds(fedc_name, fedc_options, flower_factory(), outlier=True)


def test_flower_defaults_are_fedcs_defaults():
    pairs = [("fedadam", fl.FedAdam()), ("fedyogi", fl.FedYogi()), ("fedadagrad", fl.FedAdagrad())]
    for name, theirs in pairs:
        ours = make_strategy(name).options()
        assert (ours["eta"], ours["eta_l"], ours["tau"], ours["beta1"]) == \
            (theirs.eta, theirs.eta_l, theirs.tau, theirs.beta_1), name
        if name != "fedadagrad":
            assert ours["beta2"] == theirs.beta_2, name
    assert make_strategy("trimmed_mean").options()["beta"] == fl.FedTrimmedAvg().beta
