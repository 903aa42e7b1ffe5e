"""Shuffle.permutation steps the stream inline for speed: it must equal the definition
(Fisher–Yates over below() and next_u32()), rejection steps included."""

from __future__ import annotations

import pytest

from fedc.runtime import Shuffle


def _reference(stream: Shuffle, n: int) -> list[int]:
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = stream.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 7, 2**53 - 1])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 1000])
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
