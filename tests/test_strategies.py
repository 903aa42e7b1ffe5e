"""Server strategies: hand-computed rounds for each rule, robustness properties, option errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedc.diagnostics import UsageError
from fedc.fl.strategies import REGISTRY, AggregationError, ClientUpdate, make_strategy


def ups(*rows: list[float], counts: list[int] | None = None) -> list[ClientUpdate]:
    counts = counts or [1] * len(rows)
    return [ClientUpdate(np.array(r, np.float32), n, f"c{i}")
            for i, (r, n) in enumerate(zip(rows, counts, strict=True))]


def vec(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


# --- hand-computed rounds ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_weights_clients_by_num_examples(name):
    # (1·[1, 2] + 3·[3, 6]) / 4 = [10/4, 20/4]
    got = make_strategy(name).aggregate(vec(0, 0), ups([1, 2], [3, 6], counts=[1, 3]))
    np.testing.assert_allclose(got, [2.5, 5.0], rtol=1e-7)
    assert got.dtype == np.float32


def test_fedprox_records_mu_and_accepts_flowers_name():
    assert make_strategy("fedprox", mu=0.01).options() == {"mu": 0.01}
    assert make_strategy("fedprox", proximal_mu="0.1").options() == {"mu": 0.1}


def test_fedavgm_keeps_server_momentum_across_rounds():
    s = make_strategy("fedavgm", server_lr=1.0, momentum=0.5)
    # round 1: g = [1, 1] − [0, 2] = [1, −1]; v = [1, −1]; w = [1, 1] − v = [0, 2]
    w1 = s.aggregate(vec(1, 1), ups([0, 2]))
    np.testing.assert_allclose(w1, [0.0, 2.0], atol=1e-7)
    # round 2: the client returns w unchanged, g = 0; v = 0.5·[1, −1]; w = [0, 2] − v
    w2 = s.aggregate(w1, ups([0, 2]))
    np.testing.assert_allclose(w2, [-0.5, 2.5], atol=1e-7)


def test_fedavgm_server_lr_scales_the_step():
    # g = [0] − [2] = [−2]; v = [−2]; w = 0 − 0.5·(−2) = 1
    got = make_strategy("fedavgm", server_lr=0.5, momentum=0.0).aggregate(vec(0), ups([2]))
    np.testing.assert_allclose(got, [1.0], atol=1e-7)


def test_fedadam_without_bias_correction_is_reddis_algorithm_2():
    s = make_strategy("fedadam", bias_correction=False)  # eta .1, beta1 .9, beta2 .99, tau 1e-3
    # Δ = [1, −2]; m = 0.1·Δ = [0.1, −0.2]; v = 0.01·Δ² = [0.01, 0.04]; √v = [0.1, 0.2]
    # w = 0 + 0.1·m/(√v + 0.001) = [0.01/0.101, −0.02/0.201]
    got = s.aggregate(vec(0, 0), ups([1, -2]))
    np.testing.assert_allclose(got, [0.0990099, -0.0995025], rtol=1e-6)


def test_fedadam_bias_correction_follows_flowers_exponent():
    s = make_strategy("fedadam")
    # round 1: eta_t = 0.1·√(1 − 0.99²)/(1 − 0.9²) = 0.1·0.1410674/0.19 = 0.0742460
    # w = eta_t·0.1/(0.1 + 0.001) = 0.0735109
    got = s.aggregate(vec(0), ups([1]))
    np.testing.assert_allclose(got, [0.0735109], rtol=1e-6)


def test_fedyogi_second_moment_follows_the_sign_rule():
    s = make_strategy("fedyogi")  # eta .01, beta1 .9, beta2 .99, tau 1e-3
    # round 1: Δ = 1; m = 0.1; v = 0 − 0.01·1·sign(0 − 1) = 0.01; w = 0.01·0.1/0.101 = 0.00990099
    w1 = s.aggregate(vec(0), ups([1]))
    np.testing.assert_allclose(w1, [0.00990099], rtol=1e-6)
    # round 2: Δ = 0.05; v = 0.01 − 0.01·0.0025·sign(0.01 − 0.0025) = 0.009975
    # m = 0.9·0.1 + 0.1·0.05 = 0.095; step = 0.01·0.095/(√0.009975 + 0.001) = 0.00095/0.1008749
    w2 = s.aggregate(w1, ups([float(w1[0]) + 0.05]))
    np.testing.assert_allclose(w2, [0.00990099 + 0.00941760], rtol=1e-5)


def test_fedadagrad_accumulates_squared_pseudo_gradients():
    s = make_strategy("fedadagrad")  # eta .1, tau 1e-3, beta1 0 so m = Δ
    # round 1: Δ = [2, −1]; v = [4, 1]; w = 0.1·[2/2.001, −1/1.001]
    w1 = s.aggregate(vec(0, 0), ups([2, -1]))
    np.testing.assert_allclose(w1, [0.0999500, -0.0999001], rtol=1e-6)
    # round 2: Δ = [2, 0]; v = [8, 1]; w += 0.1·[2/(√8 + 0.001), 0] = [0.0706857, 0]
    w2 = s.aggregate(w1, ups([float(w1[0]) + 2, float(w1[1])]))
    np.testing.assert_allclose(w2, [0.1706357, -0.0999001], rtol=1e-6)


def test_median_is_coordinatewise_and_unweighted():
    # per coordinate: median(1, 2, 100) = 2 and median(10, 20, −5) = 10
    got = make_strategy("median").aggregate(vec(0, 0), ups([1, 10], [2, 20], [100, -5],
                                                           counts=[100, 1, 1]))
    np.testing.assert_array_equal(got, [2, 10])
    # an even count takes the mean of the two middle values: (2 + 3)/2
    np.testing.assert_array_equal(make_strategy("median").aggregate(
        vec(0), ups([1], [2], [3], [10])), [2.5])


def test_trimmed_mean_drops_beta_n_from_each_end():
    rows = ([1, -50], [2, 0], [3, 1], [4, 2], [100, 3])
    # beta 0.2, n 5: cut 1 each side → mean(2, 3, 4) = 3 and mean(0, 1, 2) = 1
    got = make_strategy("trimmed_mean").aggregate(vec(0, 0), ups(*rows))
    np.testing.assert_allclose(got, [3.0, 1.0], rtol=1e-7)
    # beta 0.1: ⌊0.5⌋ = 0 cut → the plain mean (110/5, −44/5)
    got = make_strategy("trimmed_mean", beta=0.1).aggregate(vec(0, 0), ups(*rows))
    np.testing.assert_allclose(got, [22.0, -8.8], rtol=1e-6)


KRUM_ROWS = ([0.0], [1.0], [2.5], [3.0], [100.0])
# f = 1, n = 5: each score sums the n − f − 2 = 2 smallest squared distances to the others
#   0 → 1 + 6.25 = 7.25;  1 → 1 + 2.25 = 3.25;  2.5 → 0.25 + 2.25 = 2.5;  3 → 0.25 + 4 = 4.25
#   100 → 97² + 97.5² = 18915.25


def test_krum_picks_the_update_with_the_lowest_score():
    got = make_strategy("krum", f=1).aggregate(vec(0), ups(*KRUM_ROWS))
    np.testing.assert_array_equal(got, [2.5])


def test_multikrum_averages_the_m_best_by_num_examples():
    # m = 3 picks 2.5, 1 and 3; weights 1, 2, 1 → (2.5 + 2·1 + 3)/4 = 1.875
    got = make_strategy("multikrum", f=1, m=3).aggregate(
        vec(0), ups(*KRUM_ROWS, counts=[1, 2, 1, 1, 1]))
    np.testing.assert_allclose(got, [1.875], rtol=1e-7)
    # default m = n − f = 4 drops only 100: (0 + 1 + 2.5 + 3)/4
    got = make_strategy("multikrum", f=1).aggregate(vec(0), ups(*KRUM_ROWS))
    np.testing.assert_allclose(got, [1.625], rtol=1e-7)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=8),
       st.lists(st.integers(1, 1000), min_size=1, max_size=6))
def test_fedavg_of_identical_updates_is_that_update(values, counts):
    w = np.array(values, np.float32)
    got = make_strategy("fedavg").aggregate(np.zeros_like(w),
                                            [ClientUpdate(w.copy(), n) for n in counts])
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-30)


def _attacked_round(seed: int = 0) -> tuple[np.ndarray, list[ClientUpdate]]:
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=50).astype(np.float32)
    updates = [ClientUpdate(honest + 0.01 * rng.normal(size=50).astype(np.float32), 10)
               for _ in range(8)]
    updates += [ClientUpdate(-10 * honest, 10) for _ in range(2)]
    return honest, updates


@pytest.mark.parametrize("name,options", [
    ("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 2}),
    ("multikrum", {"f": 2, "m": 4}),
])
def test_robust_rules_survive_two_of_ten_sign_flipped_updates(name, options):
    honest, updates = _attacked_round()
    got = make_strategy(name, **options).aggregate(np.zeros(50, np.float32), updates)
    assert np.linalg.norm(got - honest) < 0.05 * np.linalg.norm(honest)


def test_plain_mean_is_dragged_away_by_two_sign_flipped_updates():
    honest, updates = _attacked_round()
    got = make_strategy("fedavg").aggregate(np.zeros(50, np.float32), updates)
    # (8·h − 2·10·h)/10 = −1.2·h
    assert np.linalg.norm(got - honest) > 2 * np.linalg.norm(honest)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_strategy_returns_flat_float32_deterministically(name):
    _, updates = _attacked_round(1)
    options = {"f": 2} if "krum" in name else {}
    runs = [make_strategy(name, **options).aggregate(np.ones(50, np.float32), updates)
            for _ in range(2)]
    assert runs[0].dtype == np.float32 and runs[0].shape == (50,)
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_strategy_documents_its_rule_and_paper(name):
    doc = REGISTRY[name].__doc__ or ""
    assert any(year in doc for year in ("2017", "2018", "2019", "2020", "2021")), doc


def test_registry_matches_the_checkers_strategy_names():
    check = pytest.importorskip("fedc.check")
    assert set(REGISTRY) == set(check.STRATEGIES)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REGISTRY))
def test_no_updates_is_a_clear_error(name):
    with pytest.raises(AggregationError, match=f"{name}: no client updates"):
        make_strategy(name).aggregate(vec(0, 0), [])


def test_update_of_the_wrong_size_names_the_client():
    with pytest.raises(AggregationError, match="client c1 sent 3 weights but the global model "
                                               "has 2"):
        make_strategy("fedavg").aggregate(vec(0, 0), ups([1, 2], [1, 2, 3]))


def test_zero_examples_in_total_cannot_be_weighted():
    with pytest.raises(AggregationError, match="0 training examples"):
        make_strategy("fedavg").aggregate(vec(0), ups([1], [2], counts=[0, 0]))


def test_krum_needs_2f_plus_3_updates():
    with pytest.raises(AggregationError, match="f=2 needs at least 2f\\+3 = 7 .* got 5"):
        make_strategy("krum", f=2).aggregate(vec(0), ups(*KRUM_ROWS))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_check_clients_refuses_a_round_size_the_rule_can_never_aggregate(name):
    options = {"f": 2} if "krum" in name else {}
    strategy = make_strategy(name, **options)
    strategy.check_clients(7)  # krum's n > 2f + 2; every other rule takes any n ≥ 1
    if "krum" in name:
        with pytest.raises(UsageError, match=f"{name} with f=2 needs n > 2f \\+ 2 = 6 client "
                                             "updates per round, but a round has at most n = 6"):
            strategy.check_clients(6)
    with pytest.raises(UsageError, match="multikrum: m=8 is more than the 7 client updates"):
        make_strategy("multikrum", f=2, m=8).check_clients(7)


def test_unknown_strategy_suggests_the_closest_name():
    with pytest.raises(UsageError, match="unknown strategy 'fedavgg'; did you mean 'fedavg'\\? "
                                         "\\(expected one of fedavg, fedavgm"):
        make_strategy("fedavgg")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(UsageError, match="fedadam: unknown option 'lr' \\(valid options: eta, "
                                         "eta_l, beta1, beta2, tau, bias_correction\\)"):
        make_strategy("fedadam", lr=0.1)
    with pytest.raises(UsageError, match="fedavg: unknown option 'mu' \\(valid options: none\\)"):
        make_strategy("fedavg", mu=0.1)


@pytest.mark.parametrize("name,options,message", [
    ("fedadam", {"beta1": 1.0}, "fedadam: beta1 must be in \\[0, 1\\) but got 1.0"),
    ("fedyogi", {"tau": 0}, "fedyogi: tau must be > 0"),
    ("fedavgm", {"momentum": "x"}, "fedavgm: momentum must be a number, got 'x'"),
    ("trimmed_mean", {"beta": 0.5}, "trimmed_mean: beta must be in \\[0, 0.5\\)"),
    ("krum", {"f": 1.5}, "krum: f must be a whole number"),
    ("krum", {"m": 3}, "krum selects one update"),
    ("multikrum", {"m": 0}, "multikrum: m must be >= 1"),
    ("fedprox", {"mu": -1}, "fedprox: mu must be >= 0"),
    ("fedadagrad", {"beta2": 0.9}, "fedadagrad: beta2 is not used"),
    ("fedadam", {"bias_correction": "maybe"}, "bias_correction must be true or false"),
])
def test_bad_option_values_are_usage_errors(name, options, message):
    with pytest.raises(UsageError, match=message):
        make_strategy(name, **options)


def test_flower_option_names_and_cli_strings_are_accepted():
    s = make_strategy("FedAdam", beta_1="0.5", beta_2=0.9, bias_correction="false")
    assert s.options() == {"eta": 0.1, "eta_l": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 1e-3,
                           "bias_correction": False}
    assert make_strategy("multikrum", num_malicious_nodes=1, num_nodes_to_select="2").options() \
        == {"f": 1, "m": 2}
