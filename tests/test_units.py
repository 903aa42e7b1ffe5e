"""Codegen units (fedc/lower/units.py, fedc/emit.py's emit_units): a big module is compiled as
two modules, in two processes where it can be, and the result trains exactly like one module."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest

import fedc.emit as emit_mod
import fedc.lower.units as units_mod
from fedc.diagnostics import InternalError
from fedc.emit import emit_units
from fedc.lower.module import EXPORTS, lower_module
from fedc.lower.units import split_units
from fedc.pipeline import compile_source
from fedc.runtime import Model

ROOT = Path(__file__).resolve().parent.parent
CNN = (ROOT / "examples/digits_cnn.fed").read_text()
LOGREG = (ROOT / "examples/breast_cancer_logreg.fed").read_text()
DEFINE = re.compile(r'^define [^@]*@"([^"]+)"', re.M)


def _lowered(text: str):
    art = compile_source(text, "m.fed")
    return lower_module(art.train_graph, art.plan, art.model.optimizer, frozenset({"simd128"}))


def test_a_big_module_splits_into_units_that_each_stand_alone():
    units = split_units(_lowered(CNN), EXPORTS)
    assert len(units.texts) == 2
    defined = [DEFINE.findall(t) for t in units.texts]
    kernels = [[n for n in d if re.match(r"k\d+_", n)] for d in defined]
    assert kernels[0] and kernels[1] and not set(kernels[0]) & set(kernels[1])
    whole = DEFINE.findall(units.whole)
    # every node kernel in exactly one unit; the exports in unit 0; helpers where they are used
    assert sorted(kernels[0] + kernels[1]) == sorted(n for n in whole if re.match(r"k\d+_", n))
    assert set(EXPORTS) <= set(defined[0]) and not set(EXPORTS) & set(defined[1])
    assert set(defined[0]) | set(defined[1]) == set(whole)
    for text in units.texts:  # LLVM takes each unit alone: what it calls is declared
        llvm.parse_assembly(text).verify()
        assert "fedc.count" not in text or " = linkonce_odr global i32 " in text
    sizes = [len(t) for t in units.texts]
    assert max(sizes) < 1.2 * min(sizes)  # balanced: the point is two cores' worth of work


def test_a_small_module_stays_one_unit():
    units = split_units(_lowered(LOGREG), EXPORTS)
    assert units.texts == (units.whole,)
    assert len(units.whole) < units_mod.SPLIT_BYTES


def _train(wasm: bytes, manifest: dict) -> tuple[list[float], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=70).astype(np.int32)
    model = Model(wasm, manifest)
    model.init_weights(5)
    losses = [model.train_step(x[:32], y[:32]), model.train_step(x[32:64], y[32:64])]
    model.train_epoch(x, y, 16, seed=1)
    return losses, model.get_weights(), model.predict(x[:10])


def test_the_split_build_trains_bit_for_bit_like_one_module(monkeypatch):
    split = compile_source(CNN, "cnn.fed")
    monkeypatch.setattr(units_mod, "SPLIT_BYTES", 10**12)
    whole = compile_source(CNN, "cnn.fed")
    assert split.wasm != whole.wasm  # two units were linked (the functions' order differs)
    assert re.findall(r"^; codegen unit (\d) of 2", split.optimized_ir, re.M) == ["1", "2"]
    assert "codegen unit" not in whole.optimized_ir
    a, b = _train(split.wasm, split.manifest), _train(whole.wasm, whole.manifest)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert len(split.wasm) == pytest.approx(len(whole.wasm), abs=16)  # the same code


def _forks() -> bool:
    return emit_mod._can_fork(2)


@pytest.fixture
def workers(monkeypatch):
    """The pids of the codegen workers forked during the test."""
    pids: list[int] = []
    real = emit_mod._fork

    def recording(text: str, variant: str) -> tuple[int, int]:
        pid, read = real(text, variant)
        pids.append(pid)
        return pid, read

    monkeypatch.setattr(emit_mod, "_fork", recording)
    return pids


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.mark.skipif(not _forks(), reason="needs Linux, two cores and no other thread")
def test_forked_and_one_process_builds_are_byte_for_byte_equal(monkeypatch, workers):
    forked = compile_source(CNN, "cnn.fed")
    assert len(workers) == 1 and _reaped(workers[0])
    monkeypatch.setenv("FEDC_JOBS", "1")
    serial = compile_source(CNN, "cnn.fed")
    assert len(workers) == 1
    assert forked.wasm == serial.wasm
    assert forked.optimized_ir == serial.optimized_ir


@pytest.fixture(scope="module")
def two_units() -> tuple[str, ...]:
    return split_units(_lowered(CNN), EXPORTS).texts


@pytest.mark.skipif(not _forks(), reason="needs Linux, two cores and no other thread")
def test_a_worker_that_llvm_rejects_raises_an_internal_error_in_the_caller(two_units, workers):
    first, _ = two_units
    with pytest.raises(InternalError, match="in a codegen worker: LLVM rejected the generated IR"):
        emit_units([first, "define void @f() {\n  ret i32 0\n}\n"])
    assert len(workers) == 1 and _reaped(workers[0])


@pytest.mark.skipif(not _forks(), reason="needs Linux, two cores and no other thread")
def test_a_worker_that_dies_raises_an_internal_error_naming_the_signal(monkeypatch, two_units,
                                                                     workers):
    real = emit_mod.emit

    def dying(text: str, variant: str = "simd128"):
        if text == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(text, variant)

    monkeypatch.setattr(emit_mod, "emit", dying)
    first, _ = two_units
    with pytest.raises(InternalError, match=r"ended \(signal 9\) without its object"):
        emit_units([first, "die"])
    assert len(workers) == 1 and _reaped(workers[0])


def test_the_parent_s_own_error_stops_and_reaps_the_worker(two_units, workers):
    _, second = two_units
    with pytest.raises(InternalError, match="LLVM rejected the generated IR"):
        emit_units(["define void @f() {\n  ret i32 0\n}\n", second])
    assert len(workers) == (1 if _forks() else 0) and all(map(_reaped, workers))


def test_no_process_to_spare_compiles_every_unit_here(monkeypatch, two_units, workers):
    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(emit_mod, "_can_fork", lambda units: True)
    monkeypatch.setattr(os, "fork", refuse)
    out = emit_units(list(two_units))
    assert len(out) == 2 and all(e.object_code.startswith(b"\0asm") for e in out)
    assert workers == []


def test_the_split_does_not_depend_on_string_hashing(tmp_path):
    """Python randomises str hashes per process: the units (and so the bytes) must not follow
    a set's order. Two processes with different PYTHONHASHSEED build the same module."""
    import hashlib
    import subprocess
    import sys

    code = ("import hashlib, sys; from fedc.pipeline import compile_file; "
            "sys.stdout.write(hashlib.sha256(compile_file(sys.argv[1]).wasm).hexdigest())")
    digests = set()
    for seed in ("0", "1", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples/digits_cnn.fed")],
                             env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout)
    assert len(digests) == 1
    assert hashlib.sha256(compile_source(CNN, "cnn.fed").wasm).hexdigest() in digests
