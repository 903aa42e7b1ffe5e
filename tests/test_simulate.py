"""Federated simulation (fedc/fl/simulate.py): reproducibility, faults, attacks, evaluation."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fedc.data import load_dataset
from fedc.diagnostics import UsageError
from fedc.fl.clients import balance
from fedc.fl.faults import byzantine_clients, client_speeds, parse_attack, select_clients
from fedc.fl.simulate import SimConfig, Simulation, config_from, simulate, split_local
from fedc.runtime import Model

BASE = SimConfig(clients=20, rounds=3, clients_per_round=10, partition="dirichlet:0.5", seed=3)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=3)


def run(art, data, **changes):
    return simulate(art.wasm, art.manifest, data, dataclasses.replace(BASE, **changes))


def initial_weights(art, seed):
    model = Model(art.wasm, art.manifest)
    model.init_weights(seed)
    return model.get_weights()


def test_same_seed_gives_bit_identical_final_weights(digits_mlp, digits):
    a, b = run(digits_mlp, digits), run(digits_mlp, digits)
    assert a.weights.tobytes() == b.weights.tobytes()
    assert [r.test_loss for r in a.rounds] == [r.test_loss for r in b.rounds]
    c = run(digits_mlp, digits, seed=4)
    assert not np.array_equal(a.weights, c.weights)


def test_two_workers_give_the_same_bits_as_one(digits_mlp, digits):
    one = run(digits_mlp, digits, rounds=2)
    two = run(digits_mlp, digits, rounds=2, workers=2)
    assert one.weights.tobytes() == two.weights.tobytes()
    assert [r.updates for r in one.rounds] == [r.updates for r in two.rounds]


def test_no_more_workers_are_started_than_a_round_has_clients(digits_mlp, digits):
    # --workers 1000 started 999 processes, each instantiating the module, to train 2 clients
    config = dataclasses.replace(BASE, clients_per_round=2, rounds=1, workers=3)
    sim = Simulation(digits_mlp.wasm, digits_mlp.manifest, digits, config)
    pool = len(sim.runner.pool)
    result = sim.run()  # stops the workers
    assert pool == 1 and result.warnings == ["workers: a round trains at most 2 clients, so 2 "
                                             "of the 3 workers are used"]
    assert result.weights.tobytes() == run(digits_mlp, digits, clients_per_round=2,
                                           rounds=1).weights.tobytes()


def test_a_round_trains_then_evaluates_the_aggregate(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=5)
    assert all(len(r.selected) == 10 == len(r.updates) and r.aggregated for r in res.rounds)
    assert res.rounds[-1].test_accuracy > res.rounds[0].test_accuracy
    # the recorded metrics are those of the returned global model
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    model.set_weights(res.weights)
    metrics = model.evaluate(digits.x_test, digits.y_test)
    assert metrics["accuracy"] == res.final.test_accuracy and metrics["loss"] == res.final.test_loss


def test_clients_per_round_fraction_samples_that_share(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=2, clients_per_round=0.25)
    assert [len(r.selected) for r in res.rounds] == [5, 5]
    assert res.rounds[0].selected != res.rounds[1].selected


def test_dropped_clients_send_nothing(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=6, dropout=0.5)
    dropped = [k for r in res.rounds for k in r.dropped]
    assert 10 < len(dropped) < 50  # ~30 of 60 expected
    for r in res.rounds:
        assert sorted(r.updates + r.dropped) == r.selected and not set(r.updates) & set(r.dropped)
    again = run(digits_mlp, digits, rounds=6, dropout=0.5)
    assert [r.dropped for r in again.rounds] == [r.dropped for r in res.rounds]
    assert again.weights.tobytes() == res.weights.tobytes()


def test_stragglers_are_the_clients_slower_than_the_deadline(digits_mlp, digits):
    cfg = dataclasses.replace(BASE, rounds=3, deadline=0.1, speed_median=500.0, local_epochs=2)
    sim = Simulation(digits_mlp.wasm, digits_mlp.manifest, digits, cfg)
    res = sim.run()
    late_total = 0
    for r in res.rounds:
        seconds = {k: 2 * sim.sizes[k] / sim.speeds[k] for k in r.selected}
        assert r.stragglers == [k for k in r.selected if seconds[k] > 0.1]
        assert r.updates == [k for k in r.selected if seconds[k] <= 0.1]
        assert r.simulated_seconds == (0.1 if r.stragglers else max(seconds.values()))
        late_total += len(r.stragglers)
    assert late_total > 0


def test_when_every_update_is_late_the_global_model_stays(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=2, deadline=1e-6)
    assert all(not r.aggregated and r.updates == [] for r in res.rounds)
    assert res.weights.tobytes() == initial_weights(digits_mlp, BASE.seed).tobytes()
    assert "no client update arrived" in res.rounds[0].note


def test_krum_skips_a_round_that_lost_too_many_clients_but_rejects_a_bad_setting(digits_mlp,
                                                                                  digits):
    res = run(digits_mlp, digits, rounds=6, clients_per_round=10, strategy="krum",
              strategy_options={"f": 2}, dropout=0.3, seed=5)
    assert any(not r.aggregated and "needs at least 2f+3" in r.note for r in res.rounds)
    assert any(r.aggregated for r in res.rounds)
    with pytest.raises(UsageError, match="krum with f=2 needs n > 2f \\+ 2 = 6 client updates "
                                         "per round, but a round has at most n = 5"):
        run(digits_mlp, digits, rounds=1, clients_per_round=5, strategy="krum",
            strategy_options={"f": 2})


def test_byzantine_scale_forges_global_plus_factor_times_the_honest_step(digits_mlp, digits):
    honest = run(digits_mlp, digits, rounds=1, clients_per_round=20, clients=20)
    forged = run(digits_mlp, digits, rounds=1, clients_per_round=20, clients=20, byzantine=20,
                 attack="scale:-1")
    g = initial_weights(digits_mlp, BASE.seed).astype(np.float64)
    # every client forged g − (w_k − g), so the weighted mean is g − (honest mean − g)
    np.testing.assert_allclose(forged.weights, 2 * g - honest.weights, atol=1e-6)
    assert forged.rounds[0].byzantine == list(range(20))
    same = run(digits_mlp, digits, rounds=1, byzantine=20, attack="scale:1")
    assert same.weights.tobytes() == run(digits_mlp, digits, rounds=1).weights.tobytes()


def test_byzantine_clients_are_fixed_by_the_seed():
    assert byzantine_clients(10, 2, 0) == byzantine_clients(10, 2, 0)
    assert len(byzantine_clients(10, 2, 0)) == 2 and byzantine_clients(10, 0, 0) == frozenset()
    assert byzantine_clients(100, 5, 0) != byzantine_clients(100, 5, 1)


BYZANTINE = dict(clients=10, clients_per_round=10, rounds=20, local_epochs=3, partition="iid",
                 byzantine=2, seed=0)  # 2 of 10 clients send global − 10·(honest − global)


def test_two_byzantine_clients_collapse_fedavg(digits_mlp, digits):
    mean = run(digits_mlp, digits, strategy="fedavg", **BYZANTINE)
    assert all(len(r.byzantine) == 2 for r in mean.rounds)
    assert mean.final.test_accuracy < 0.5


@pytest.mark.parametrize("strategy,options", [
    ("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 2})])
def test_robust_strategies_survive_two_byzantine_clients(digits_mlp, digits, strategy, options):
    robust = run(digits_mlp, digits, strategy=strategy, strategy_options=options, **BYZANTINE)
    assert all(len(r.byzantine) == 2 for r in robust.rounds)
    assert robust.final.test_accuracy >= 0.90


def test_a_huge_attack_diverges_and_stops_with_null_losses(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=5, byzantine=20, clients_per_round=20,
              attack="scale:1e38")
    assert res.diverged and len(res.rounds) < 5  # stopped early
    assert "diverged" in res.final.note
    assert all("diverged" not in r.note for r in res.rounds[:-1])
    assert res.summary()["final_test_loss"] is None


def test_federated_eval_scores_every_clients_local_split(digits_mlp, digits):
    res = run(digits_mlp, digits, rounds=3, federated_eval=True, local_epochs=3)
    last = res.final
    assert last.federated_accuracy is not None and last.federated_loss is not None
    assert 0 <= last.federated_accuracy_min <= last.federated_accuracy <= 1
    assert last.federated_accuracy > res.rounds[0].federated_accuracy - 0.2
    assert res.rounds[0].federated_loss != res.rounds[0].test_loss


def test_local_split_is_disjoint_and_keeps_a_training_row():
    parts = [np.arange(0, 10), np.arange(10, 11), np.arange(11, 16)]
    train, test = split_local(parts, 0.2, seed=0)
    for whole, tr, te in zip(parts, train, test, strict=True):
        assert sorted(np.concatenate([tr, te])) == list(whole) and len(tr) >= 1
    assert [len(t) for t in test] == [2, 0, 1]


def test_config_from_the_federated_block_and_overrides(digits_mlp):
    fed = digits_mlp.manifest["federated"]
    cfg = config_from(fed)
    assert (cfg.rounds, cfg.clients_per_round, cfg.local_epochs, cfg.batch_size, cfg.strategy) \
        == (30, 10, 1, 32, "fedavg")
    assert cfg.clients == 10
    assert config_from(fed, clients_per_round=15).clients == 15
    assert config_from(fed, clients_per_round=0.5).per_round == 5
    assert config_from(fed, clients=4).per_round == 4  # the block's 10, capped at the clients
    assert config_from(fed, clients=4, clients_per_round=6).per_round == 6  # explicit: an error
    cfg = config_from(fed, rounds=4, clients=50, strategy="fedprox", lr=None)
    assert (cfg.rounds, cfg.clients, cfg.lr) == (4, 50, None)
    assert cfg.strategy_options == {"mu": 0.01}  # the block's proximal_mu is 0: the default
    assert config_from({**fed, "proximal_mu": 0.2}, strategy="fedprox").strategy_options == \
        {"mu": 0.2}
    cfg = config_from(fed, strategy="fedprox", strategy_options={"proximal_mu": 0.1})
    assert cfg.strategy_options == {"proximal_mu": 0.1}


@pytest.mark.parametrize("changes,message", [
    ({"clients_per_round": 30}, "clients per round (30) is more than the number of clients (20)"),
    ({"clients_per_round": 1.5}, "a fraction in (0, 1]"),
    ({"dropout": -0.1}, "dropout must be in [0, 1)"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"deadline": 0.0}, "deadline must be a finite number > 0"),
    ({"byzantine": 21}, "byzantine clients must be in 0..20"),
    ({"lr": -1.0}, "learning rate must be a finite number > 0"),
    ({"lr": float("inf")}, "learning rate must be a finite number > 0, got inf"),
    ({"partition": "zipf:2"}, "unknown partition scheme 'zipf:2'"),
    ({"attack": "flip"}, "unknown attack 'flip'"),
    ({"speed_sigma": -1.0}, "sigma ≥ 0"),
    # both reached the run's JSON as Infinity, which is not JSON
    ({"deadline": float("inf")}, "deadline must be a finite number > 0 seconds, got inf"),
    ({"speed_median": float("inf")}, "client speeds need a finite median > 0"),
    ({"seed": 2**32}, "the seed must be an integer in 0..4294967295, got 4294967296"),
    ({"seed": -1}, "the seed must be an integer in 0..4294967295, got -1"),
    ({"strategy": "krum", "strategy_options": {"f": 5}},
     "krum with f=5 needs n > 2f + 2 = 12 client updates per round, but a round has at most "
     "n = 10 (the clients sampled per round)"),
    ({"strategy": "multikrum", "strategy_options": {"m": 11}},
     "multikrum: m=11 is more than the 10 client updates a round has at most"),
])
def test_bad_settings_are_usage_errors(changes, message):
    with pytest.raises(UsageError) as info:
        dataclasses.replace(BASE, **changes).validate()
    assert message in info.value.message


def test_a_batch_larger_than_the_module_is_a_usage_error(digits_mlp, digits):
    with pytest.raises(UsageError, match="exceeds the module's max batch 256"):
        Simulation(digits_mlp.wasm, digits_mlp.manifest, digits,
                   dataclasses.replace(BASE, batch_size=512))


@pytest.mark.parametrize("median, sigma", [(1000.0, 1e300), (1e-300, 20.0)])
def test_client_speeds_beyond_a_double_are_a_usage_error_before_training(digits_mlp, digits,
                                                                        median, sigma):
    # speeds of Inf or 0 (a ZeroDivisionError in round 1) or times of Inf (Infinity in the JSON)
    with pytest.raises(UsageError, match=re.escape(f"client speeds with median {median:g} and "
                                                   f"sigma {sigma:g} are beyond a double's")):
        Simulation(digits_mlp.wasm, digits_mlp.manifest, digits,
                   dataclasses.replace(BASE, speed_median=median, speed_sigma=sigma))


def test_unknown_strategy_option_is_a_usage_error(digits_mlp, digits):
    with pytest.raises(UsageError, match="krum: unknown option 'g'"):
        Simulation(digits_mlp.wasm, digits_mlp.manifest, digits,
                   dataclasses.replace(BASE, strategy="krum", strategy_options={"g": 1}))


def test_attack_parsing():
    attack = parse_attack("scale:-10")
    assert attack.factor == -10 and str(attack) == "scale:-10"
    g, h = np.array([1.0, 2.0], np.float32), np.array([2.0, 0.0], np.float32)
    np.testing.assert_array_equal(attack.forge(g, h), [-9.0, 22.0])
    for bad in ("scale", "scale:x", "scale:inf", "noise:1"):
        with pytest.raises(UsageError):
            parse_attack(bad)


def test_selection_and_speeds_are_seeded():
    chosen, dropped = select_clients(20, 10, seed=1, rnd=3, dropout=0.3)
    assert (chosen, dropped) == select_clients(20, 10, seed=1, rnd=3, dropout=0.3)
    assert chosen == sorted(set(chosen)) and len(chosen) == 10 and set(dropped) <= set(chosen)
    assert select_clients(20, 10, seed=1, rnd=3, dropout=0.0)[0] == chosen  # dropout draws last
    speeds = client_speeds(1000, seed=0, median=200.0, sigma=0.5)
    assert abs(np.median(speeds) / 200.0 - 1) < 0.1 and (speeds > 0).all()
    assert np.array_equal(client_speeds(5, 0, 1.0, 0.0), np.ones(5))


def test_balance_splits_by_samples_and_keeps_every_client_once():
    sizes = [100, 10, 10, 10, 50, 40, 5]
    groups = balance([0, 1, 2, 3, 4, 5, 6], sizes, 2)
    assert sorted(k for g in groups for k in g) == list(range(7))
    loads = [sum(sizes[k] for k in g) for g in groups]
    assert abs(loads[0] - loads[1]) <= 10 and all(g == sorted(g) for g in groups)


@pytest.fixture(scope="module")
def digits_prox(digits_mlp_source):
    from fedc.pipeline import Options, compile_source
    return compile_source(digits_mlp_source, "d.fed", Options(proximal_mu=0.5))


def test_compile_option_proximal_mu_adds_or_removes_the_fedprox_anchor(digits_mlp_source,
                                                                        digits_prox):
    from fedc.pipeline import Options, compile_source

    assert digits_prox.manifest["anchor_region"]["count"] == 9610
    assert digits_prox.manifest["optimizer"]["hparams"]["proximal_mu"] == 0.5
    plain = compile_source(digits_mlp_source.replace("= fedavg", "= fedprox"), "d.fed",
                           Options(proximal_mu=0.0))
    assert plain.manifest["anchor_region"] is None
    with pytest.raises(UsageError, match="proximal_mu must be a number ≥ 0"):
        compile_source(digits_mlp_source, "d.fed", Options(proximal_mu=-1.0))


def test_fedprox_pulls_client_models_towards_the_global_model(digits_prox, digits):
    from fedc.fl.clients import ClientSettings, Trainer

    parts = [np.arange(0, 200)]
    g = initial_weights(digits_prox, 0)
    steps = {}
    for mu in (0.0, 0.5, 5.0):
        model = Model(digits_prox.wasm, digits_prox.manifest)
        trainer = Trainer(model, digits.x_train, digits.y_train, parts,
                          ClientSettings(3, 32, 0, proximal_mu=mu))
        w, _ = trainer.train(g, 1, 0)
        assert np.array_equal(model.anchor, g)  # anchored at this round's global model
        steps[mu] = float(np.linalg.norm(w - g))
    assert steps[5.0] < steps[0.5] < steps[0.0]


def test_fedprox_simulation_differs_from_fedavg_and_mu_0_is_fedavg(digits_prox, digits_mlp,
                                                                   digits):
    def on(art, **changes):
        return simulate(art.wasm, art.manifest, digits,
                        dataclasses.replace(BASE, rounds=2, **changes))

    fedavg = on(digits_mlp)
    prox = on(digits_prox, strategy="fedprox", strategy_options={"mu": 0.5})
    assert not prox.warnings and not np.array_equal(prox.weights, fedavg.weights)
    # a FedProx module simulating another strategy switches the term off (μ = 0 at run time)
    assert on(digits_prox).weights.tobytes() == fedavg.weights.tobytes()
    # FedProx on a module without the term says so, and trains as FedAvg
    plain = on(digits_mlp, strategy="fedprox", strategy_options={"mu": 0.5})
    assert "compiled without the proximal term" in plain.warnings[0]
    assert plain.weights.tobytes() == fedavg.weights.tobytes()


def test_the_native_target_trains_clients_to_the_same_bits(digits_mlp, digits_prox, digits):
    """Simulation(native_ir=…): clients train in the module compiled for this CPU, here and in
    worker processes (each JIT-compiles it), with the Wasm run's results bit for bit."""
    from fedc.native import NativeModel, native_ir

    config = dataclasses.replace(BASE, rounds=2)
    sim = Simulation(digits_mlp.wasm, digits_mlp.manifest, digits, config,
                     native_ir(digits_mlp))
    assert isinstance(sim.model, NativeModel) and isinstance(sim.runner.local.model, NativeModel)
    sim.runner.close()
    wasm = simulate(digits_mlp.wasm, digits_mlp.manifest, digits, config)
    native = simulate(digits_mlp.wasm, digits_mlp.manifest, digits, config,
                      native_ir=native_ir(digits_mlp))
    two = simulate(digits_mlp.wasm, digits_mlp.manifest, digits,
                   dataclasses.replace(config, workers=2), native_ir=native_ir(digits_mlp))
    assert wasm.target == "wasm" and native.target == two.target == "native"
    assert native.summary()["target"] == "native"
    for other in (native, two):
        assert other.weights.tobytes() == wasm.weights.tobytes()
        assert [r.test_loss for r in other.rounds] == [r.test_loss for r in wasm.rounds]
    # FedProx's anchor, written into the native build's memory, pulls the same way
    prox = dataclasses.replace(config, strategy="fedprox", strategy_options={"mu": 0.5})
    a = simulate(digits_prox.wasm, digits_prox.manifest, digits, prox)
    b = simulate(digits_prox.wasm, digits_prox.manifest, digits, prox,
                 native_ir=native_ir(digits_prox))
    assert a.weights.tobytes() == b.weights.tobytes()
    assert not np.array_equal(a.weights, wasm.weights)
