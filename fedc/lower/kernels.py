"""Loop and vector helpers the op lowerings are written with (llvmlite.ir only, no binding)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from llvmlite import ir

I32 = ir.IntType(32)
F32 = ir.FloatType()
PTR = ir.PointerType()
V4 = ir.VectorType(F32, 4)
LANES = 4


def i32c(x: int) -> ir.Constant:
    return ir.Constant(I32, x)


def f32c(x: float) -> ir.Constant:
    return ir.Constant(F32, x)


def splat(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """A <4 x float> with x in every lane (constants fold to a vector constant)."""
    if isinstance(x, ir.Constant):
        return ir.Constant(V4, [x.constant] * LANES)
    v = b.insert_element(ir.Constant(V4, ir.Undefined), x, i32c(0))
    zeros = ir.Constant(ir.VectorType(I32, 4), [0] * 4)
    return b.shuffle_vector(v, ir.Constant(V4, ir.Undefined), zeros)


def const_like(x: ir.Value, value: float) -> ir.Constant:
    if isinstance(x.type, ir.VectorType):
        return ir.Constant(x.type, [value] * x.type.count)
    return ir.Constant(F32, value)


def where_positive(b: ir.IRBuilder, test: ir.Value, then: ir.Value) -> ir.Value:
    """then where test > 0, else 0 (scalars or vectors; NaN in test gives 0): fedc's relu and
    the mask of its gradient, as PyTorch's."""
    return b.select(b.fcmp_ordered(">", test, const_like(test, 0.0)), then, const_like(then, 0.0))


def as_value(x: ir.Value | int) -> ir.Value:
    return i32c(x) if isinstance(x, int) else x


def imin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """The smaller of two signed i32 values."""
    return b.select(b.icmp_signed("<", x, y), x, y)


def imax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """The larger of two signed i32 values."""
    return b.select(b.icmp_signed(">", x, y), x, y)


def ceil_div(b: ir.IRBuilder, x: ir.Value | int, d: int) -> ir.Value | int:
    """⌈x / d⌉ for x ≥ 0: a Python int for an int, else an unsigned i32 division."""
    return (x + d - 1) // d if isinstance(x, int) else b.udiv(b.add(x, i32c(d - 1)), i32c(d))


def gep(b: ir.IRBuilder, base: ir.Value, index: ir.Value | int, elem: ir.Type = F32) -> ir.Value:
    return b.gep(base, [as_value(index)], source_etype=elem)


def load(b: ir.IRBuilder, base: ir.Value, index: ir.Value | int, elem: ir.Type = F32) -> ir.Value:
    return b.load(gep(b, base, index, elem), typ=elem, align=4)


def store(b: ir.IRBuilder, value: ir.Value, base: ir.Value, index: ir.Value | int) -> None:
    b.store(value, gep(b, base, index, value.type), align=4)


def load4(b: ir.IRBuilder, base: ir.Value, index: ir.Value | int) -> ir.Value:
    """Four consecutive floats starting at element `index` (4-byte alignment assumed)."""
    return b.load(gep(b, base, index), typ=V4, align=4)


def store4(b: ir.IRBuilder, value: ir.Value, base: ir.Value, index: ir.Value | int) -> None:
    b.store(value, gep(b, base, index), align=4)


def relaxed_madd(b: ir.IRBuilder, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
    """x·y + acc in one f32x4.relaxed_madd (fused or not, as the engine's CPU does it)."""
    name = "llvm.wasm.relaxed.madd.v4f32"
    fn = b.module.globals.get(name)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(V4, [V4, V4, V4]), name)
    return b.call(fn, [x, y, acc])


def mul_add(b: ir.IRBuilder, x: ir.Value, y: ir.Value, acc: ir.Value, madd: bool) -> ir.Value:
    """acc + x·y: one relaxed_madd if `madd` (the relaxed-simd build), else mul then add."""
    return relaxed_madd(b, x, y, acc) if madd else b.fadd(acc, b.fmul(x, y))


def load_split(b: ir.IRBuilder, p: ir.Value, index: ir.Value | int, floats: int,
               align: int = 4) -> list[ir.Value]:
    """p[index … index + floats) as floats/4 <4 x float>, loaded as one <floats x float>. In a
    loop, LLVM's loop strength reduction then keeps one address for them, and the Wasm loads
    the wide one is split into take constant offsets from it (as separate loads they got a
    base at the last one and negative offsets, which Wasm loads cannot fold: an add each)."""
    at = b.gep(p, [as_value(index)], inbounds=True, source_etype=F32)
    v = b.load(at, typ=ir.VectorType(F32, floats), align=align)
    return [b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), list(range(i, i + 4))))
            for i in range(0, floats, LANES)]


@contextmanager
def loop(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int,
         step: int = 1, name: str = "i") -> Iterator[ir.Value]:
    """`for i in range(start, stop, step)`: yields i; the body is emitted inside the with-block."""
    start_v, stop_v = as_value(start), as_value(stop)
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I32, name=name)
    i.add_incoming(start_v, pre)
    b.cbranch(b.icmp_signed("<", i, stop_v), body, done)
    b.position_at_end(body)
    yield i
    nxt = b.add(i, i32c(step))
    i.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(done)


def reduce_add4(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Horizontal sum of a <4 x float> (fixed pairwise order: deterministic)."""
    hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), [2, 3, 0, 1]))
    s = b.fadd(v, hi)
    hi2 = b.shuffle_vector(s, s, ir.Constant(ir.VectorType(I32, 4), [1, 0, 3, 2]))
    return b.extract_element(b.fadd(s, hi2), i32c(0))


MapFn = Callable[[ir.IRBuilder, Sequence[ir.Value]], ir.Value]


def emit_map(b: ir.IRBuilder, count: ir.Value | int, fn: MapFn,
             inputs: Sequence[ir.Value], out: ir.Value) -> None:
    """out[i] = fn(inputs[0][i], …) for i < count: <4 x float> body, scalar tail.

    `fn` receives values that are all <4 x float> or all float and must accept both.
    """
    emit_zip(b, count, lambda bb, vs: (fn(bb, vs),), inputs, (out,))


ZipFn = Callable[[ir.IRBuilder, Sequence[ir.Value]], Sequence[ir.Value]]


def emit_zip(b: ir.IRBuilder, count: ir.Value | int, fn: ZipFn,
             inputs: Sequence[ir.Value], outputs: Sequence[ir.Value]) -> None:
    """outputs[k][i] = fn(inputs…[i])[k] for i < count, vector body then scalar tail."""
    count_v = as_value(count)
    vec_end = b.and_(count_v, i32c(~(LANES - 1)))
    for start, stop, width, name in ((0, vec_end, LANES, "v"), (vec_end, count_v, 1, "t")):
        with loop(b, start, stop, width, name) as i:
            vals = [load_w(b, p, i, width == LANES) for p in inputs]
            for res, out in zip(fn(b, vals), outputs, strict=True):
                store_w(b, res, out, i, width == LANES)


def fsum(b: ir.IRBuilder, base: ir.Value, count: ir.Value | int) -> ir.Value:
    """Sum of `count` floats, four accumulators then a fixed-order reduction."""
    count_v = as_value(count)
    vec_end = b.and_(count_v, i32c(~(LANES - 1)))
    acc_v = _accumulate(b, vec_end, lambda i, acc: b.fadd(acc, load4(b, base, i)),
                        ir.Constant(V4, [0.0] * 4), LANES, "s")
    total = reduce_add4(b, acc_v)
    return _accumulate(b, count_v, lambda i, acc: b.fadd(acc, load(b, base, i)), total, 1, "st",
                       start=vec_end)


CarryBody = Callable[[ir.Value, list[ir.Value]], list[ir.Value]]


def opaque_count(b: ir.IRBuilder, count: int) -> ir.Value:
    """A static trip count read from a (hidden, never written) global that LLVM may not assume
    constant, for the hot loops whose bodies are short: the loop then keeps a down-counting
    trip counter as a run-time count gets (`add −1; test; jne`). On a constant trip count
    LLVM's loop strength reduction compares an offset against the constant instead, which
    Cranelift lowers to `cmp; je; mov; jmp` per step, a register move and a second branch:
    MNIST's 784-deep forward GEMM ran 12 % slower that way. (A `select` on a run-time value
    instead of the load was folded, or made LLVM version the loop, 2× slower.) One 4-byte load
    from the page after the arena (docs/abi.md) each time the loop is entered."""
    name = f"fedc.count{count}"
    g = b.module.globals.get(name)
    if g is None:
        g = ir.GlobalVariable(b.module, I32, name)
        g.initializer = ir.Constant(I32, count)
        g.visibility = "hidden"  # external linkage: not known constant; hidden: not exported
        g.align = 4
    return b.load(g, typ=I32, align=4)


def carry_loop(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: int,
               carried: Sequence[ir.Value], body: CarryBody, name: str) -> list[ir.Value]:
    """`for i in range(start, stop, step)` carrying values through phis; returns their finals."""
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    bodyb = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I32, name=name)
    i.add_incoming(as_value(start), pre)
    phis = [b.phi(v.type) for v in carried]
    for phi, v in zip(phis, carried, strict=True):
        phi.add_incoming(v, pre)
    b.cbranch(b.icmp_signed("<", i, as_value(stop)), bodyb, done)
    b.position_at_end(bodyb)
    new = body(i, list(phis))
    i.add_incoming(b.add(i, i32c(step), flags=["nsw", "nuw"]), b.block)
    for phi, v in zip(phis, new, strict=True):
        phi.add_incoming(v, b.block)
    b.branch(head)
    b.position_at_end(done)
    return list(phis)


def _accumulate(b: ir.IRBuilder, stop: ir.Value, body: Callable[[ir.Value, ir.Value], ir.Value],
                init: ir.Value, step: int, name: str, start: ir.Value | int = 0) -> ir.Value:
    """A loop carrying one accumulator: acc = body(i, acc) for i in range(start, stop, step)."""
    return carry_loop(b, start, stop, step, [init], lambda i, acc: [body(i, acc[0])], name)[0]


accumulate = _accumulate


def emit_cols(b: ir.IRBuilder, ncols: int, body: Callable[[ir.Value, bool], None],
              name: str = "j") -> None:
    """body(j, vec) over a static column count: 4-wide chunks, then a scalar tail."""
    vec_end = ncols // LANES * LANES
    if vec_end:
        with loop(b, 0, vec_end, LANES, f"{name}v") as j:
            body(j, True)
    if vec_end < ncols:
        with loop(b, vec_end, ncols, 1, f"{name}t") as j:
            body(j, False)


def load_w(b: ir.IRBuilder, base: ir.Value, index: ir.Value, vec: bool) -> ir.Value:
    return load4(b, base, index) if vec else load(b, base, index)


def store_w(b: ir.IRBuilder, value: ir.Value, base: ir.Value, index: ir.Value, vec: bool) -> None:
    (store4 if vec else store)(b, value, base, index)


def zero_w(vec: bool) -> ir.Constant:
    return ir.Constant(V4, [0.0] * 4) if vec else f32c(0.0)


def bcast_w(b: ir.IRBuilder, x: ir.Value, vec: bool) -> ir.Value:
    return splat(b, x) if vec else x


def transpose4(b: ir.IRBuilder, rows: Sequence[ir.Value]) -> list[ir.Value]:
    """The columns of a 4×4 block given as four row vectors."""
    m = ir.VectorType(I32, 4)
    t0 = b.shuffle_vector(rows[0], rows[1], ir.Constant(m, [0, 4, 1, 5]))
    t1 = b.shuffle_vector(rows[2], rows[3], ir.Constant(m, [0, 4, 1, 5]))
    t2 = b.shuffle_vector(rows[0], rows[1], ir.Constant(m, [2, 6, 3, 7]))
    t3 = b.shuffle_vector(rows[2], rows[3], ir.Constant(m, [2, 6, 3, 7]))
    return [b.shuffle_vector(t0, t1, ir.Constant(m, [0, 1, 4, 5])),
            b.shuffle_vector(t0, t1, ir.Constant(m, [2, 3, 6, 7])),
            b.shuffle_vector(t2, t3, ir.Constant(m, [0, 1, 4, 5])),
            b.shuffle_vector(t2, t3, ir.Constant(m, [2, 3, 6, 7]))]


def emit_zip_static(b: ir.IRBuilder, count: int, fn: ZipFn, inputs: Sequence[int],
                    outputs: Sequence[int], unroll: int = 2) -> None:
    """emit_zip over regions at static byte offsets of linear memory, `unroll` vectors per
    iteration.

    Every address is an inbounds GEP of a region's offset (plus the unrolled vector's) from one
    shared byte index, so all streams share one induction variable. With a pointer per region,
    LLVM's loop strength reduction gave each stream its own (an add and a zero-extension per
    stream and vector under Cranelift: 22 instructions per vector of SGD with momentum, now
    15.5). LSR still rebases the index by one iteration, so Cranelift computes each address
    with an `lea` rather than folding the offset into the load; with LSR disabled the offsets
    fold (14 per vector), but the switch is process-wide and its effect on the GEMMs was lost
    in the host's noise when measured.
    """
    def step(j: ir.Value, at: int, width: int) -> None:
        base = b.inttoptr(j, PTR)
        typ = V4 if width == LANES else F32

        def ptr(off: int) -> ir.Value:
            return b.gep(base, [i32c(off + at)], inbounds=True, source_etype=ir.IntType(8))

        vals = [b.load(ptr(p), typ=typ, align=4) for p in inputs]
        for res, out in zip(fn(b, vals), outputs, strict=True):
            b.store(res, ptr(out), align=4)

    block = LANES * unroll
    body_end = count // block * block
    if body_end:  # bottom-tested: the count is static and at least one block
        pre, body = b.block, b.append_basic_block("zs.body")
        b.branch(body)
        b.position_at_end(body)
        j = b.phi(I32, name="zs")
        j.add_incoming(i32c(0), pre)
        for u in range(unroll):
            step(j, u * LANES * 4, LANES)
        nxt = b.add(j, i32c(block * 4), flags=["nuw", "nsw"])
        j.add_incoming(nxt, body)
        done = b.append_basic_block("zs.done")
        b.cbranch(b.icmp_unsigned("<", nxt, i32c(body_end * 4)), body, done)
        b.position_at_end(done)
    for i in range(body_end, count // LANES * LANES, LANES):
        step(i32c(0), i * 4, LANES)
    for i in range(count // LANES * LANES, count):
        step(i32c(0), i * 4, 1)
