"""Shuffle.permutation runs in Wasm for speed (fedc_runtime._PERMUTE_WAT): it must equal the
definition (Fisher–Yates over the Python below() and next_u32()), rejection steps included,
and leave the stream in the same state."""

from __future__ import annotations

import pytest

from fedc.runtime import RuntimeDataError, Shuffle


def _reference(stream: Shuffle, n: int) -> list[int]:
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = stream.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 7, 2**53 - 1])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 1000, 20_000])
def test_inline_permutation_equals_the_definition(seed, n):
    fast, slow = Shuffle(seed), Shuffle(seed)
    assert fast.permutation(n).tolist() == _reference(slow, n)
    assert fast.next_u32() == slow.next_u32()  # the stream continues from the same state


def test_rejected_draws_are_skipped_like_below_does():
    # s1 = 0 makes the next draw 0, below the rejection threshold 2**32 mod 3 = 1 of bound 3
    fast, slow = Shuffle(5), Shuffle(5)
    fast.s, slow.s = [0x12345678, 0, 0x9ABCDEF0, 0x0F1E2D3C], [0x12345678, 0, 0x9ABCDEF0,
                                                                0x0F1E2D3C]
    assert fast.permutation(3).tolist() == _reference(slow, 3)
    assert fast.s == slow.s


def test_permutations_grow_the_memory_and_continue_one_stream():
    fast, slow = Shuffle(9), Shuffle(9)
    for n in (5, 70_000, 3, 17_000):  # 70,000 rows need more than one 64 KiB page
        assert fast.permutation(n).tolist() == _reference(slow, n)
    assert fast.s == slow.s


def test_a_permutation_of_an_impossible_size_is_refused():
    with pytest.raises(RuntimeDataError, match="0..2\\*\\*31-1 rows"):
        Shuffle(1).permutation(-1)
