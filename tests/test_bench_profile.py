"""bench/profile_step.py: every node's export runs and is timed, under wasmtime and Node."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import profile_step  # noqa: E402

SMALL = """model Small:
    input x: f32[6]
    target y: class[3]
    loss = softmax_cross_entropy(dense(relu(dense(x, 8)), 3), y)
optimizer sgd(lr=0.1, momentum=0.9)
"""


@pytest.fixture
def small(tmp_path: Path) -> str:
    path = tmp_path / "small.fed"
    path.write_text(SMALL)
    return str(path)


def _check(times: dict[str, list[float]], reps: int) -> None:
    assert list(times)[-2:] == ["update", "step"]
    assert any(name.endswith("softmax_cross_entropy_grad") for name in times)
    for name, v in times.items():
        assert len(v) == reps and all(math.isfinite(t) and t > 0 for t in v), name


def test_wasmtime_profile_times_every_node(small):
    prof = profile_step.Profile(small, "relaxed-simd")
    _check({n: [prof.time(n, 5, 0.002)] for n in prof.names}, 1)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_profile_times_the_same_exports(small):
    times = profile_step.node_times(small, "relaxed-simd", True, 5, 2, 0.002)
    _check(times, 2)
    assert list(times) == profile_step.Profile(small, "relaxed-simd").names
