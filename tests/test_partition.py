"""Partitioners: disjoint covering splits, label and quantity skew, determinism, scheme errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedc.diagnostics import UsageError
from fedc.fl.partition import ClientRow, Scheme, parse_scheme, partition, summarize

LABELS = np.repeat(np.arange(10), 100)  # 10 balanced classes, 1000 samples
SCHEMES = ["iid", "dirichlet:0.1", "dirichlet:1.0", "shards:2", "quantity:0.5"]


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    assert all(len(p) >= 1 for p in parts)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("clients", [1, 7, 50])
def test_parts_are_disjoint_cover_everything_and_are_never_empty(scheme, clients):
    assert_disjoint_cover(partition(LABELS, clients, scheme, seed=3), len(LABELS))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 60),
       st.sampled_from(SCHEMES + ["dirichlet:0.01", "shards:5", "quantity:0.05"]),
       st.integers(0, 2**32 - 1))
def test_any_labels_any_scheme_give_a_disjoint_cover(labels, clients, scheme, seed):
    labels = np.array(labels)
    clients = min(clients, len(labels))
    assert_disjoint_cover(partition(labels, clients, scheme, seed), len(labels))


def test_iid_sizes_differ_by_at_most_one_and_mix_labels():
    parts = partition(LABELS, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(LABELS[p])) >= 8 for p in parts)


def _mean_label_skew(alpha: float) -> float:
    """Mean over clients of the total-variation distance from the global label mix (0 = IID)."""
    parts = partition(LABELS, 20, f"dirichlet:{alpha}", seed=1)
    rows = summarize(LABELS, parts, 10)
    tv = [0.5 * np.abs(np.array(r.label_counts) / r.samples - 0.1).sum() for r in rows]
    return float(np.mean(tv))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skews = [_mean_label_skew(a) for a in (100.0, 1.0, 0.05)]
    assert skews[0] < 0.15 < skews[1] < skews[2]
    assert skews[2] > 0.6


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_at_most_k_labels_per_client(k):
    parts = partition(LABELS, 20, f"shards:{k}", seed=0)
    assert max(len(np.unique(LABELS[p])) for p in parts) <= k
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= k  # shards are near-equal, so clients are too


def test_shards_with_unbalanced_classes_stay_label_pure():
    labels = np.concatenate([np.zeros(500, int), np.ones(30, int), np.full(7, 2)])
    parts = partition(labels, 10, "shards:2", seed=4)
    assert_disjoint_cover(parts, len(labels))
    assert max(len(np.unique(labels[p])) for p in parts) <= 2


def test_quantity_skews_sizes_but_not_labels():
    parts = partition(LABELS, 10, "quantity:0.3", seed=2)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 4 * sizes[len(sizes) // 2]  # a few clients hold most of the data
    big = max(parts, key=len)
    assert len(np.unique(LABELS[big])) == 10


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_split_other_seed_other_split(scheme):
    a, b = partition(LABELS, 10, scheme, 5), partition(LABELS, 10, scheme, 5)
    c = partition(LABELS, 10, scheme, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_regression_targets_can_be_split_iid_or_by_quantity():
    y = np.linspace(0, 1, 40).astype(np.float32)
    for scheme in ("iid", "quantity:1"):
        assert_disjoint_cover(partition(y, 4, scheme, 0), 40)
    with pytest.raises(UsageError, match="'dirichlet' needs class labels"):
        partition(y, 4, "dirichlet:1", 0)


def test_summarize_counts_samples_and_labels_per_client():
    labels = np.array([0, 0, 1, 2, 2, 2])
    rows = summarize(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])], 3)
    assert rows == [ClientRow(0, 2, (1, 1, 0)), ClientRow(1, 4, (1, 0, 3))]
    assert summarize(labels, [np.arange(6)], None) == [ClientRow(0, 6, ())]


@pytest.mark.parametrize("text,want", [
    ("iid", Scheme("iid")), (" Dirichlet:0.5 ", Scheme("dirichlet", 0.5)),
    ("shards:2", Scheme("shards", 2)), ("quantity:1e-1", Scheme("quantity", 0.1)),
])
def test_scheme_strings_parse(text, want):
    assert parse_scheme(text) == want


@pytest.mark.parametrize("text,message", [
    ("dirichlet", "'dirichlet' needs a parameter: dirichlet:ALPHA"),
    ("dirichlet:-1", "ALPHA must be a positive number, got -1"),
    ("dirichlet:nan", "ALPHA must be a positive number"),
    ("dirichlet:abc", "ALPHA must be a number, got 'abc'"),
    ("shards:0", "K must be at least 1, got 0"),
    ("shards:1.5", "K must be a whole number, got '1.5'"),
    ("iid:3", "'iid' takes no parameter"),
    ("diriclet:0.5", "unknown partition scheme 'diriclet:0.5'; did you mean 'dirichlet'\\?"),
    ("random", "expected one of iid, dirichlet:ALPHA, shards:K, quantity:ALPHA"),
])
def test_bad_scheme_strings_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        partition(LABELS, 4, text, 0)


@pytest.mark.parametrize("scheme", ["dirichlet:1e308", "quantity:1e308"])
def test_an_alpha_whose_dirichlet_draw_overflows_is_a_usage_error(scheme):
    # numpy drew all-zero proportions: NaN counts (RuntimeWarnings) and a split of 1, 2, 1, 4…
    # samples with one client holding nearly everything, the opposite of what a large alpha means
    kind = scheme.split(":")[0]
    with pytest.raises(UsageError, match=f"partition scheme '{kind}:1e\\+308': ALPHA is too "
                                         "large to draw proportions for 10 clients"):
        partition(LABELS, 10, scheme, 0)
    sizes = [len(p) for p in partition(LABELS, 10, scheme.replace("308", "300"), 0)]
    assert max(sizes) - min(sizes) <= 20  # still drawable: a nearly even split


def test_more_clients_than_samples_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot give 11 clients at least one sample each "
                                         "from 10 samples"):
        partition(np.arange(10), 11, "iid", 0)
    with pytest.raises(UsageError, match="positive whole number"):
        partition(np.arange(10), 0, "iid", 0)
    with pytest.raises(UsageError, match="non-empty 1-D label array"):
        partition(np.array([], int), 1, "iid", 0)
