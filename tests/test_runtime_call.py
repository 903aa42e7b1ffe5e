"""The Python runtime's unchecked call path (fedc_runtime._Call): results, traps, recovery."""

from __future__ import annotations

import sys

import pytest
import wasmtime

import fedc.runtime  # noqa: F401  (loads fedc_runtime)
from fedc.pipeline import compile_source
from fedc.runtime import Model

_Call = sys.modules["fedc_runtime"]._Call

# f(n) = n as f32, trapping (unreachable) for n = 0; g(n) stores n at address 8 and returns
# nothing
WAT = """(module
  (memory (export "memory") 1)
  (func (export "f") (param i32) (result f32)
    local.get 0
    i32.eqz
    if
      unreachable
    end
    local.get 0
    f32.convert_i32_s)
  (func (export "g") (param i32)
    i32.const 8
    local.get 0
    i32.store))"""


def _instance() -> tuple[wasmtime.Store, object]:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, wasmtime.wat2wasm(WAT)), [])
    return store, inst.exports(store)


def test_the_fast_path_is_taken_with_the_pinned_wasmtime():
    store, ex = _instance()
    call = _Call(store, ex["f"], 1)
    assert call.fast
    assert call(7) == 7.0
    assert call(-3) == -3.0


def test_a_trap_is_raised_and_the_next_call_runs_normally():
    store, ex = _instance()
    call = _Call(store, ex["f"], 1)
    for _ in range(3):  # the trap slot is cleared after each trap, so traps do not repeat
        with pytest.raises(wasmtime.Trap, match="unreachable"):
            call(0)
        assert call(5) == 5.0


def test_a_call_without_results_returns_none_and_runs():
    store, ex = _instance()
    call = _Call(store, ex["g"], 0)
    assert call(1234) is None
    mem = ex["memory"]
    assert int.from_bytes(bytes(mem.read(store, 8, 12)), "little") == 1234


def test_models_train_through_the_fast_path():
    src = """model M:
    input x: f32[2]
    target y: class[2]
    loss = softmax_cross_entropy(dense(x, 2), y)
optimizer sgd(lr=0.1)
"""
    art = compile_source(src, "m.fed")
    model = Model(art.wasm, art.manifest)
    assert all(c.fast for c in model._calls.values())


def _edited(manifest: dict, path: str, value: object) -> dict:
    """A deep copy of the manifest with the field at a dotted path set (or deleted: ...)."""
    import copy
    out = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


EDITS = [("max_batch", ..., "KeyError: 'max_batch'"),
         ("inputs.0.offset", ..., "KeyError: 'offset'"),
         ("outputs", [], "IndexError"),
         ("exports", None, "AttributeError"),
         ("params_region.offset", -4, "places a buffer at bytes -4..38436, not inside"),
         ("params_region.count", 10**9, "not inside the module's"),
         ("params_region.offset", 6, "places a buffer at bytes 6..")]


@pytest.mark.parametrize("path, value, message", EDITS, ids=[e[0] + str(e[1])[:8] for e in EDITS])
def test_an_edited_manifest_is_a_runtime_data_error_naming_what_is_wrong(digits_mlp, path, value,
                                                                         message):
    from fedc.runtime import RuntimeDataError
    with pytest.raises(RuntimeDataError, match="manifest.json") as info:
        Model(digits_mlp.wasm, _edited(digits_mlp.manifest, path, value))
    assert message in str(info.value)
