"""bench/profile_step.py: every node's export runs and is timed, under wasmtime and Node."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
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


def test_whole_steps_leave_the_weights_as_they_were(small):
    """The profile's hyper-parameters are the model's with lr = 0: thousands of steps in a row
    time the same arithmetic on the same numbers (no drift between repetitions)."""
    from fedc.link import ARENA_BASE

    prof = profile_step.Profile(small, "simd128")
    plan = prof.plan
    lo = plan.params_offset - ARENA_BASE
    hi = lo + 4 * plan.param_count
    hp = (plan.hparams_offset - ARENA_BASE) // 4
    assert prof.start[lo:hi].view(np.float32).any()  # random weights, not zeros
    assert list(prof.start.view(np.float32)[hp:hp + 3]) == pytest.approx([0.0, 0.9, 0.0])
    prof.time("step", 5, 0.002)
    assert (prof.arena[lo:hi] == prof.start[lo:hi]).all()
    state = plan.state_offset - ARENA_BASE
    assert (prof.arena[state:state + 4 * plan.param_count] != 0).any()  # the update ran
