"""Lowering: dense-layer matmuls (nn, nt, tn) → register-blocked <4 x float> llvmlite.ir kernels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from llvmlite import ir

from .address import LinearMemoryBuilder
from .kernels import (
    LANES,
    carry_loop,
    ceil_div,
    imin,
    load_split,
    mul_add,
    opaque_count,
    transpose4,
    where_positive,
)
from .kernels import splat as broadcast

I32 = ir.IntType(32)
F32 = ir.FloatType()
PTR = ir.PointerType()
V4 = ir.VectorType(F32, 4)
ZERO4 = ir.Constant(V4, [0.0] * 4)

Kind = Literal["nn", "nt", "tn"]


# The register tile: MR rows × NR columns of C in MR·NR/4 = 8 <4 x float> accumulators. With
# the two B vectors and the four broadcasts of A that is 14 of the 16 XMM registers wasmtime's
# Cranelift allocates on x86-64; larger tiles (4×12, 4×16, 8×8) spilled and ran slower.
MR = 4
NR = 8
# Splat A panels hold each float of A four times, so the micro-kernel loads its broadcasts
# instead of shuffling them out of one vector (see _tile_product); only where each float of A
# feeds at least SPLAT_MIN_COLS columns of C, else the four-fold packing costs more than the
# shuffles it saves (digits' 128 → 10 layer: 4.3 µs with shuffles, 5.3 splat); and not with
# relaxed_madd, whose FMAs leave the shuffles a port of their own (_splat_a).
SPLAT = LANES
SPLAT_MIN_COLS = 32
# A narrow C (5…WIDE_COLUMNS_MAX columns: a 10-class output) is computed by columns tiles only,
# at most WIDE_COLUMNS wide, under mul + add (`wide` in _groups): one A vector times a loaded
# broadcast per column issues no shuffles, where the 4×8 tile of an 8 + 2 split spends four a
# step. Not under relaxed_madd: a columns tile's five FMA chains cannot fill two FMA ports.
WIDE_COLUMNS = 6
WIDE_COLUMNS_MAX = 12


def _c(x: int) -> ir.Constant:
    return ir.Constant(I32, x)


def _up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _as(x: ir.Value | int) -> ir.Value:
    return _c(x) if isinstance(x, int) else x


def _at(b: ir.IRBuilder, p: ir.Value, idx: ir.Value | int) -> ir.Value:
    return b.gep(p, [_as(idx)], inbounds=True, source_etype=F32)


def _ld4(b: ir.IRBuilder, p: ir.Value, idx: ir.Value | int, align: int = 4) -> ir.Value:
    return b.load(_at(b, p, idx), typ=V4, align=align)


def _st4(b: ir.IRBuilder, v: ir.Value, p: ir.Value, idx: ir.Value | int, align: int = 4) -> None:
    b.store(v, _at(b, p, idx), align=align)


def _ld_part(b: ir.IRBuilder, p: ir.Value, idx: ir.Value | int, lanes: int) -> ir.Value:
    """The first `lanes` (1..4) floats at p[idx], zeros in the other lanes; reads no further."""
    if lanes >= 4:
        return _ld4(b, p, idx)
    v: ir.Value = ZERO4
    for j in range(lanes):
        x = b.load(_at(b, p, b.add(_as(idx), _c(j))), typ=F32, align=4)
        v = b.insert_element(v, x, _c(j))
    return v


def _st_part(b: ir.IRBuilder, v: ir.Value, p: ir.Value, idx: ir.Value | int, lanes: int) -> None:
    """Store the first `lanes` (1..4) lanes of v at p[idx]; writes no further."""
    if lanes >= 4:
        _st4(b, v, p, idx)
        return
    for j in range(lanes):
        b.store(b.extract_element(v, _c(j)), _at(b, p, b.add(_as(idx), _c(j))), align=4)


def _lane(b: ir.IRBuilder, v: ir.Value, j: int) -> ir.Value:
    """Lane j of v in every lane, by a shuffle (wasmtime's load32_splat is slow)."""
    return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), [j] * 4))


_for = carry_loop


def _for_each(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: int,
              body: Callable[[ir.Value], None], name: str) -> None:
    def wrapped(i: ir.Value, _: list[ir.Value]) -> list[ir.Value]:
        body(i)
        return []

    _for(b, start, stop, step, [], wrapped, name)


# ---------------------------------------------------------------------------------------------
# Panels: each operand is packed into scratch as consecutive panels of `width` rows of C (A) or
# columns of C (B), each [depth][width] and 16-byte aligned; padding lanes are zeros (or copies
# of the last row of A) so the micro-kernel needs no mask and nothing reads past an operand.


@dataclass(frozen=True)
class Group:
    """`count` consecutive panels of `width` lanes starting at lane `first`; `last_valid` lanes
    of the final panel are real (the rest is padding).

    A `columns` group (B only) is the last 1–3 columns of C (or, `wide` in _groups, up to
    WIDE_COLUMNS of a narrow C), each stored as a <4 x float>
    broadcast per unit of depth; its tile holds them as columns of four rows (_column_product).
    """

    first: int
    count: int
    width: int
    last_valid: int
    columns: bool = False

    @property
    def floats(self) -> int:
        """Floats per unit of depth of all the group's panels, padding included."""
        return self.count * self.width * (SPLAT if self.columns else 1)

    @property
    def in_place(self) -> bool:
        """Whether its panels can be read straight from a row-major operand (no padding)."""
        return self.last_valid == self.width and not self.columns


def _groups(lanes: int, width: int, narrow_edge: bool, columns: bool = False,
            wide: bool = False) -> list[Group]:
    """Full `width`-lane panels, then the remainder: one panel 4 lanes wide if that is enough
    and narrow_edge (a 4×4 tile beats a 4×8 one that is mostly padding), else padded; with
    `columns`, a full 4-lane panel if the remainder has one, then its last 1–3 lanes as a
    columns group (a 4×2 edge tile computes 2 columns, not 4 of which 2 are padding).

    With `columns` and `wide` (mul + add), 5…WIDE_COLUMNS_MAX lanes are columns groups only,
    of nearly equal widths up to WIDE_COLUMNS: 10 as 5 + 5. Digits' 128 → 10 layer, wasmtime
    simd128, min of interleaved runs: forward 3.65 → 3.48 µs, weight gradient 3.25 → 2.90
    (V8: 3.47 → 3.33, 3.10 → 2.69); 5, 6, 7, 9, 11 and 12 classes gained 2–25 %, 9's forward
    tied. Under relaxed_madd the same split lost (forward 3.3 → 4.0 µs): five FMA chains of
    latency 4 issue 1.25 FMAs a cycle where the 4×8 tile's eight issue two."""
    if columns and wide and 4 < lanes <= WIDE_COLUMNS_MAX:
        count = -(-lanes // WIDE_COLUMNS)
        widths = [lanes // count + (i < lanes % count) for i in range(count)]
        return [Group(sum(widths[:i]), 1, w, w, columns=True) for i, w in enumerate(widths)]
    groups = [Group(0, lanes // width, width, width)] if lanes // width else []
    rest = lanes % width
    if columns:
        if rest >= 4:
            groups.append(Group(lanes - rest, 1, 4, 4))
            rest -= 4
        if rest:
            groups.append(Group(lanes - rest, 1, rest, rest, columns=True))
    elif rest:
        groups.append(Group(lanes - rest, 1, _up(rest, 4) if narrow_edge else width, rest))
    return groups


def _panel_floats(lanes: int, width: int, narrow_edge: bool, columns: bool = False) -> int:
    """Floats per unit of depth of all panels of _groups(…), padding included."""
    return sum(g.floats for g in _groups(lanes, width, narrow_edge, columns))


def _st_splat(b: ir.IRBuilder, v: ir.Value, dst: ir.Value, o: ir.Value, lane0: int,
              lanes: int = 4) -> None:
    """Lanes lane0 … lane0 + lanes − 1 of a splat panel's depth row at dst[o…]: lane j of v
    broadcast to dst[o + SPLAT·(lane0 + j) …]."""
    for j in range(lanes):
        _st4(b, _lane(b, v, j), dst, b.add(o, _c(SPLAT * (lane0 + j))), align=16)


def _pack_copy(b: ir.IRBuilder, src: ir.Value, ld: int, depth: ir.Value | int, g: Group,
               dst: ir.Value, row_sum: ir.Value | None = None, accumulate: bool = False,
               splat: bool = False, only: ir.Value | None = None) -> None:
    """dst[p][d][0:width] = src[d, first + p·width …] (zero past the valid lanes); with
    `splat` (always for a columns group), each of those floats as SPLAT copies
    (dst[p][d][lane][0:SPLAT]). With `only`, panel `only` alone, at dst[0].

    With row_sum, also row_sum[first + …] (+)= Σ_d src[d, …] of the lanes packed.
    """
    splat = splat or g.columns
    nv = _up(g.width, 4) // 4
    per = g.width * (SPLAT if splat else 1)  # floats per unit of depth

    def panel(p: ir.Value) -> None:
        col = b.add(_c(g.first), b.mul(p, _c(g.width)))
        out = b.mul(p, b.mul(_as(depth), _c(per))) if only is None else _c(0)
        lanes = [min(4, g.last_valid - 4 * v) if g.count == 1 else 4 for v in range(nv)]

        def step(d: ir.Value, sums: list[ir.Value]) -> list[ir.Value]:
            row = b.add(b.mul(d, _c(ld)), col)
            o = b.add(out, b.mul(d, _c(per)))
            vs = [_ld_part(b, src, b.add(row, _c(4 * v)), n) if n > 0 else ZERO4
                  for v, n in enumerate(lanes)]
            for v, x in enumerate(vs):
                if splat:
                    _st_splat(b, x, dst, o, 4 * v, min(4, g.width - 4 * v))
                else:
                    _st4(b, x, dst, b.add(o, _c(4 * v)), align=16)
            return [b.fadd(s, x) for s, x in zip(sums, vs, strict=True)] if sums else []

        sums = _for(b, 0, depth, 1, [ZERO4] * nv if row_sum is not None else [], step, "pc")
        if row_sum is not None:
            for v, n in enumerate(lanes):
                if n > 0:
                    _store_out(b, sums[v], row_sum, b.add(col, _c(4 * v)), n, accumulate)

    if only is not None:
        panel(only)
    else:
        _for_each(b, 0, g.count, 1, panel, "pcp")


def _pack_transpose(b: ir.IRBuilder, src: ir.Value, depth: int, rows: ir.Value | int,
                    g: Group, count: ir.Value | int, dst: ir.Value, splat: bool = False,
                    only: ir.Value | None = None, src_panels: bool = False) -> None:
    """dst[p][d][r] = src[first + p·width + r, d] for `count` panels; src is [rows, depth],
    or with src_panels (rows static, depth a multiple of NR) that matrix in NR-column panels
    (packed_b_index): a weight stored that way, read four floats of a row at a time as well.
    With `splat` (always for a columns group), each float as SPLAT copies:
    dst[p][d][r][0:SPLAT].

    Rows at or past `rows` repeat the last row: they only feed rows of C that are never
    stored, and so the last panel reads no byte outside src. A columns group's 1–3 rows are
    read as a block of four that way, and only its own are stored.
    """
    splat = splat or g.columns
    last = b.sub(_as(rows), _c(1))
    whole = depth - depth % 4
    per = g.width * (SPLAT if splat else 1)  # floats per unit of depth
    blocks4 = _up(g.width, 4) // 4  # blocks of four source rows per panel

    if src_panels and (not isinstance(rows, int) or depth % NR):
        raise ValueError(f"a source in panels needs static rows and depth in multiples of {NR}")

    def at(start: ir.Value, d: ir.Value | int) -> ir.Value:
        """The index of src[row, d] for the row whose `starts` entry is start."""
        if not src_panels:
            return b.add(start, _as(d))
        assert isinstance(rows, int)
        panel = b.mul(b.udiv(_as(d), _c(NR)), _c(rows * NR))
        return b.add(b.add(start, panel), b.urem(_as(d), _c(NR)))

    def panel(p: ir.Value) -> None:
        r0 = b.add(_c(g.first), b.mul(p, _c(g.width)))
        starts = []  # element offset of each source row of the panel (at d = 0)
        for r in range(4 * blocks4):
            ri = b.add(r0, _c(r))
            starts.append(b.mul(imin(b, ri, last), _c(NR if src_panels else depth)))
        out = b.mul(p, _c(depth * per)) if only is None else _c(0)

        def store_cols(d: ir.Value | int, cols: list[list[ir.Value]]) -> None:
            for j, col in enumerate(cols):  # col[q]: column d + j of rows 4q … 4q + 3
                o = b.add(out, b.mul(b.add(_as(d), _c(j)), _c(per)))
                for q, v in enumerate(col):
                    if splat:
                        _st_splat(b, v, dst, o, 4 * q, min(4, g.width - 4 * q))
                    else:
                        _st4(b, v, dst, b.add(o, _c(4 * q)), align=16)

        def step4(d: ir.Value) -> None:
            blocks = [transpose4(b, [_ld4(b, src, at(starts[4 * q + r], d)) for r in range(4)])
                      for q in range(blocks4)]
            store_cols(d, [[blk[j] for blk in blocks] for j in range(4)])

        _for_each(b, 0, whole, 4, step4, "pt")
        if depth % 4:  # the last 1–3 columns, gathered one float at a time
            store_cols(whole, [[_gather(b, src, [at(x, d) for x in starts[4 * q:4 * q + 4]])
                                for q in range(blocks4)] for d in range(whole, depth)])

    if only is not None:
        panel(only)
    else:
        _for_each(b, 0, count, 1, panel, "ptp")


def _gather(b: ir.IRBuilder, src: ir.Value, at: Sequence[ir.Value]) -> ir.Value:
    """<src[at[0]], …, src[at[3]]>."""
    v: ir.Value = ZERO4
    for r, idx in enumerate(at):
        x = b.load(_at(b, src, idx), typ=F32, align=4)
        v = b.insert_element(v, x, _c(r))
    return v


# ---------------------------------------------------------------------------------------------
# The micro-kernel: a 4×nr block of C (nr = 8, or 4 at a narrow edge) in nr/4·4 registers.


def _tile_product(b: ir.IRBuilder, nr: int, pa: Panels, pa_i: ir.Value, pb: Panels,
                  pb_j: ir.Value, depth: ir.Value | int, madd: bool = False, walk: bool = True,
                  paired: bool = True) -> list[list[ir.Value]]:
    """acc[r][v] = Σ_d pa_i[d·lda + r] · pb_j[d·ldb + 4v …] over one A and one B panel.

    Per step: the four rows' broadcasts of A, nr/4 B vectors and 4·nr/4 mul+add pairs. From a
    splat panel the broadcasts are four vector loads; otherwise one A vector is loaded and
    each lane broadcast by a shuffle. On x86-64 the shuffles compete with the multiplies and
    adds for the vector ports, so the splat panels run faster (docs/performance.md). The
    operands of one step are loaded as one wide vector each (<16 x float>, <8 x float>) and
    split (kernels.load_split: constant offsets from one address per operand, which the Wasm
    build's loop carries: _walk). Unrolling did not
    help: Cranelift emits a block's loads (which may trap) in order but its arithmetic where a
    result is first needed, here the back edge, so both steps' loads are live at once and the
    accumulators spill. For the same reason a load is never folded into `vmulps` here.
    """
    nv = nr // 4

    def at(a: ir.Value, bp: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        bv = load_split(b, bp, 0, nr, pb.align)
        if pa.splat:
            rows = load_split(b, a, 0, MR * SPLAT, pa.align)
        else:
            av = _ld4(b, a, 0, pa.align)
            rows = [_lane(b, av, r) for r in range(MR)]
        # relaxed_madd: Cranelift (wasmtime 50) lowers it to vfmadd213ps plus register copies,
        # V8 to an FMA into the accumulator (docs/performance.md)
        return [mul_add(b, rows[r], bv[v], acc[r * nv + v], madd)
                for r in range(MR) for v in range(nv)]

    # relaxed_madd's 4×4 tile: two sets of four FMA chains (_chains)
    flat = _depth_loop(b, at, pa, pa_i, pb, pb_j, depth, 2 if madd and nv == 1 else 1,
                       MR * nv, walk, paired)
    return [flat[r * nv:(r + 1) * nv] for r in range(MR)]


def _depth_loop(b: ir.IRBuilder, at: Callable[[ir.Value, ir.Value, list[ir.Value]],
                                                list[ir.Value]],
                pa: Panels, pa_i: ir.Value, pb: Panels, pb_j: ir.Value,
                depth: ir.Value | int, sets: int, width: int, walk: bool, paired: bool = True
                ) -> list[ir.Value]:
    """Σ over depth of `width` accumulators, at(A's step address, B's step address, acc) a
    step: in Wasm one address per operand carried by the loop (_walk); with more than one set
    of chains, or natively (x86's addressing modes take base + index · scale, and carried
    addresses behind _opaque measured the native digits step 48 → 50–85 µs), addresses from
    the depth index (_chains)."""
    if sets == 1 and walk:
        return _walk(b, [(pa_i, pa.ld), (pb_j, pb.ld)], depth, width,
                     lambda ptrs, acc: at(ptrs[0], ptrs[1], acc), paired)

    def step(d: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        return at(_at(b, pa_i, b.mul(d, _as(pa.ld))), _at(b, pb_j, b.mul(d, _as(pb.ld))), acc)

    return _chains(b, step, depth, sets, width)


def _walk(b: ir.IRBuilder, operands: Sequence[tuple[ir.Value, ir.Value | int]],
          depth: ir.Value | int, width: int,
          step: Callable[[list[ir.Value], list[ir.Value]], list[ir.Value]], paired: bool = True
          ) -> list[ir.Value]:
    """Σ over depth of `width` accumulators, step(addresses, acc) a step, as a loop that carries
    each operand's address (base, then + its ld floats a step) and runs two steps an iteration
    (one if not `paired`).

    wasmtime zero-extends a Wasm address to 64 bits before each access; one that a 32-bit add
    made in the same iteration is zero-extended already, one carried by a loop phi gets a
    `mov r32, r32`. LLVM's loop strength reduction rewrites any form of these addresses into
    phis that the loads use directly, so the first step's bumped addresses pass through an
    empty inline asm it cannot see through: the loads then take the add's result. MNIST's 4×8
    step went 29 → 27 instructions (no moves), its 784-deep forward 839 → 776 µs, weight
    gradient 797 → 756 (min of 3 interleaved profiles, Zen 3; docs/performance.md). The
    second step's addresses are the first's plus ld (inbounds): its loads take constant
    offsets from the same registers. How the two steps are kept apart: _paired.
    """
    n = len(operands)
    starts = [b.gep(p, [b.neg(_as(ld))], source_etype=F32) for p, ld in operands]

    def one(carried: list[ir.Value], first: bool) -> list[ir.Value]:
        ptrs = [b.gep(p, [_as(ld)], inbounds=not first, source_etype=F32)
                for p, (_, ld) in zip(carried[:n], operands, strict=True)]
        if first:
            ptrs = [_opaque(b, p) for p in ptrs]
        return [*ptrs, *step(ptrs, carried[n:])]

    init = [*starts, *[ZERO4] * width]
    if not paired:
        return _for(b, 0, depth, 1, init, lambda _, c: one(c, True), "kw")[n:]
    return _paired(b, _as(depth), init, one)[n:]


# Shortest static depth whose loop runs two steps an iteration (_paired): Winograd's 16- and
# 32-deep products in the digits CNN ran 1–4 % slower paired (the odd step and the tests for
# it), MNIST's and digits' 64- to 784-deep ones 2–10 % faster.
PAIR_MIN_DEPTH = 48


def _paired(b: ir.IRBuilder, depth: ir.Value, init: list[ir.Value],
            step: Callable[[list[ir.Value], bool], list[ir.Value]]) -> list[ir.Value]:
    """`depth` (≥ 0) applications of step(carried, first) from init: two a loop iteration
    (first=True, then False), one before the loop when depth is odd (first=True).

    Between the two steps the loop tests its counter for < 0, which never holds (it counts
    pairs down to 1) but which LLVM cannot fold (the counter passes through an empty asm):
    that exit takes the first step's results, so Cranelift has to compute them before the
    test. Cranelift emits a block's loads (which may trap) in order but its arithmetic where a
    result is first needed; in a one-step loop that is the back edge, so each step's loads all
    came first and its multiplies and adds last. Split so, a pair's second loads follow the
    first step's arithmetic, and no more values are live than in one step (unrolling the loop
    spilled accumulators). MNIST's 784-deep forward and weight gradient ran 9 % faster (paired
    minima in one process, wasmtime simd128, Zen 3; docs/performance.md).
    """
    fn = b.function
    pre = b.block
    odd_b, join, loop, second, done = (fn.append_basic_block(f"kp.{name}") for name in (
        "odd", "join", "loop", "second", "done"))
    b.cbranch(b.trunc(depth, ir.IntType(1)), odd_b, join)
    b.position_at_end(odd_b)
    after_odd = step(init, True)
    odd_end = b.block
    b.branch(join)
    b.position_at_end(join)
    start = [b.phi(v.type) for v in init]
    for phi, v0, v1 in zip(start, init, after_odd, strict=True):
        phi.add_incoming(v0, pre)
        phi.add_incoming(v1, odd_end)
    pairs = b.lshr(depth, _c(1))
    b.cbranch(b.icmp_unsigned("==", pairs, _c(0)), done, loop)
    b.position_at_end(loop)
    k = b.phi(I32, name="kp")
    carried = [b.phi(v.type) for v in init]
    mid = step(list(carried), True)
    mid_end = b.block
    b.cbranch(b.icmp_signed("<", _opaque(b, k), _c(0)), done, second)
    b.position_at_end(second)
    end = step(mid, False)
    k_next = b.sub(k, _c(1))
    second_end = b.block
    b.cbranch(b.icmp_unsigned("!=", k_next, _c(0)), loop, done)
    k.add_incoming(pairs, join)
    k.add_incoming(k_next, second_end)
    for phi, v0, v1 in zip(carried, start, end, strict=True):
        phi.add_incoming(v0, join)
        phi.add_incoming(v1, second_end)
    b.position_at_end(done)
    out = [b.phi(v.type) for v in init]
    for phi, v0, v1, v2 in zip(out, start, mid, end, strict=True):
        phi.add_incoming(v0, join)
        phi.add_incoming(v1, mid_end)
        phi.add_incoming(v2, second_end)
    return out


def _opaque(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """v (a pointer or an integer), through an empty inline asm (no code) that LLVM's analyses
    cannot look into."""
    return b.asm(ir.FunctionType(v.type, [v.type]), "", "=r,0", [v], False)


def _column_product(b: ir.IRBuilder, pa: Panels, pa_i: ir.Value, pb: Panels, pb_j: ir.Value,
                    depth: ir.Value | int, madd: bool = False, walk: bool = True,
                    paired: bool = True) -> list[ir.Value]:
    """acc[j] = Σ_d pa_i[d·lda + 0…3] · pb_j[d·ldb + SPLAT·j] for the w columns of a
    columns group: column j of a 4×w block of C as one vector over its four rows.

    Per step one A vector, w broadcasts of B (loaded: the panel stores them splat) and w
    mul+add pairs; a padded 4×4 tile would spend four shuffles and four pairs. With so few
    accumulators the chains of adds, not the ports, bound the loop, so the sums run in
    4 // w sets of depths (_chains).
    """
    assert not pa.splat, "a columns tile reads A's rows as one vector"
    w = pb.group.width

    def at(a: ir.Value, bp: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        av = _ld4(b, a, 0, pa.align)
        bs = load_split(b, bp, 0, SPLAT * w, pb.align)
        return [mul_add(b, av, bs[j], acc[j], madd) for j in range(w)]

    return _depth_loop(b, at, pa, pa_i, pb, pb_j, depth, max(1, 4 // w), w, walk, paired)


Step = Callable[[ir.Value, list[ir.Value]], list[ir.Value]]


def _chains(b: ir.IRBuilder, step: Step, depth: ir.Value | int, sets: int, width: int
            ) -> list[ir.Value]:
    """Σ over depth of `width` accumulators updated by step(d, acc), kept as `sets` (a power
    of two) sets, depth d in set d % sets, added together at the end.

    More sets, more independent chains: with relaxed_madd each accumulator is a chain of FMAs
    (latency 4 on x86-64) and a 4×4 tile has only four of them, one FMA a cycle where the CPU
    issues two. Two sets fill both ports: digits' 128 → 10 layers (a 4×8 and a 4×4 tile per
    four rows), min of interleaved runs, forward 3.25 → 2.93 µs under V8 and 3.77 → 3.54 µs
    under wasmtime, the weight gradient 3.30 → 3.11 µs under wasmtime. The 4×8 tile has eight
    chains already, and splitting simd128's add chains there measured the same (its ports, not
    latency, are the bound).
    """
    zeros = [ZERO4] * width
    if sets == 1:
        return _for(b, 0, depth, 1, zeros, step, "k")

    def group(d: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        out: list[ir.Value] = []
        for s in range(sets):
            out += step(b.add(d, _c(s)) if s else d, acc[s * width:(s + 1) * width])
        return out

    if isinstance(depth, int):
        whole = depth - depth % sets
        acc = _for(b, 0, whole, sets, zeros * sets, group, f"k{sets}")
        first = acc[:width]
        for d in range(whole, depth):
            first = step(_c(d), first)
    else:
        whole = b.and_(depth, _c(-sets))
        acc = _for(b, 0, whole, sets, zeros * sets, group, f"k{sets}")
        first = _for(b, whole, depth, 1, acc[:width], step, "k1")
    parts = [first, *(acc[s * width:(s + 1) * width] for s in range(1, sets))]
    while len(parts) > 1:  # pairwise: (s0 + s1) + (s2 + s3)
        parts = [[b.fadd(x, y) for x, y in zip(parts[i], parts[i + 1], strict=True)]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _store_out(b: ir.IRBuilder, v: ir.Value, p: ir.Value, idx: ir.Value, lanes: int,
               accumulate: bool) -> None:
    if accumulate:
        v = b.fadd(_ld_part(b, p, idx, lanes), v)
    _st_part(b, v, p, idx, lanes)


@dataclass(frozen=True)
class Flavor:
    """The static variations of one kernel (they are part of its name).

    fused: nn adds bias[n]; nt multiplies by [mask > 0] (mask laid out like C, the relu
    gradient); tn accumulates the row sums of G. relu: nn applies relu after the bias.
    The epilogue (bias, relu, mask) acts on the product before `accumulate` adds it to C.
    """

    fused: bool = False
    accumulate: bool = False
    madd: bool = False
    relu: bool = False
    a_packed: bool = False  # nn: `a` already holds pack_a's panels
    # `bmat` already holds B in panels (packed_b_index): tn as _b_panels packs them; nn and nt
    # a weight stored that way (weight_panels)
    b_packed: bool = False
    b_in_place: bool = False  # tn: B's full panels read in place at m ≤ tn_b_in_place_rows
    native: bool = False  # the host-CPU build (fedc/native.py): index addressing (_depth_loop)
    c_packed: bool = False  # tn: C written in panels (packed_b_index with rows = k), a weight's

    @property
    def suffix(self) -> str:
        flags = {"fused": self.fused, "acc": self.accumulate, "madd": self.madd,
                 "relu": self.relu, "pa": self.a_packed, "pb": self.b_packed,
                 "bip": self.b_in_place, "native": self.native, "pc": self.c_packed}
        return "".join(f".{name}" for name, on in flags.items() if on)


def _store_tile(b: ir.IRBuilder, acc: list[list[ir.Value]], c: ir.Value, ldc: int,
                row0: ir.Value, rows: ir.Value | int, col0: ir.Value, cols: int,
                bias: ir.Value | None, mask: ir.Value | None, flavor: Flavor,
                panel_rows: int | None = None) -> None:
    """C[row0 + r, col0 + j] (+)= epilogue(acc[r][j]) for row0 + r < rows, j < cols; C in
    panels of panel_rows rows where given (_each_row)."""
    lanes = [min(4, cols - 4 * v) for v in range(len(acc[0]))]
    bias_v = [_ld_part(b, bias, b.add(col0, _c(4 * v)), n) if n > 0 else ZERO4
              for v, n in enumerate(lanes)] if bias is not None else []
    def store_row(r: int, base: ir.Value) -> None:
        row = acc[r]
        for v, n in enumerate(lanes):
            if n > 0:
                at = b.add(base, _c(4 * v))
                x = b.fadd(row[v], bias_v[v]) if bias_v else row[v]
                if flavor.relu:  # relu's select: NaN gives 0, as fedc's relu op
                    x = where_positive(b, x, x)
                if mask is not None:
                    x = where_positive(b, _ld_part(b, mask, at, n), x)
                _store_out(b, x, c, at, n, flavor.accumulate)

    _each_row(b, len(acc), ldc, row0, rows, col0, store_row, panel_rows)


def _each_row(b: ir.IRBuilder, count: int, ldc: int, row0: ir.Value, rows: ir.Value | int,
              col0: ir.Value, store_row: Callable[[int, ir.Value], None],
              panel_rows: int | None = None) -> None:
    """store_row(r, index of C[row0 + r, col0]) for the tile's rows r < count below `rows`:
    the first always (a tile has at least one valid row), the others behind a branch.

    With panel_rows, C is stored in NR-column panels of that many rows (packed_b_index): a
    tile's row of up to NR columns from col0 (a multiple of NR) is contiguous there too."""
    valid = b.sub(_as(rows), row0)
    for r in range(count):
        row = b.add(row0, _c(r))
        base = (b.add(b.mul(row, _c(ldc)), col0) if panel_rows is None else
                packed_b_index(b, ldc, _c(panel_rows), row, col0))
        if r == 0:
            store_row(r, base)
        else:
            with b.if_then(b.icmp_signed(">", valid, _c(r))):
                store_row(r, base)


def _store_columns(b: ir.IRBuilder, cols: list[ir.Value], c: ir.Value, ldc: int,
                   row0: ir.Value, rows: ir.Value | int, col0: ir.Value,
                   bias: ir.Value | None, mask: ir.Value | None, flavor: Flavor) -> None:
    """C[row0 + r, col0 + j] (+)= epilogue(cols[j][r]) for row0 + r < rows: a columns tile."""
    xs = []
    for j, x in enumerate(cols):
        if bias is not None:
            x = b.fadd(x, broadcast(b, b.load(_at(b, bias, b.add(col0, _c(j))), typ=F32, align=4)))
        if flavor.relu:  # relu's select: NaN gives 0, as fedc's relu op
            x = where_positive(b, x, x)
        xs.append(x)

    def store_row(r: int, base: ir.Value) -> None:
        for j, x in enumerate(xs):
            v, at = b.extract_element(x, _c(r)), _at(b, c, b.add(base, _c(j)))
            if mask is not None:  # laid out like C
                keep = b.load(_at(b, mask, b.add(base, _c(j))), typ=F32, align=4)
                v = where_positive(b, keep, v)
            if flavor.accumulate:
                v = b.fadd(b.load(at, typ=F32, align=4), v)
            b.store(v, at, align=4)

    _each_row(b, MR, ldc, row0, rows, col0, store_row)


@dataclass(frozen=True)
class Panels:
    """Where `count` panels of one operand live: panel p at base[p·stride], its depth-d vector
    at + d·ld. Packed panels have ld = width (16-byte aligned); panels read in place from a
    row-major operand have ld = its row length (full panels only: no padding lanes exist). B's
    may be either, chosen at run time (ld a value then: tn's _b_panels)."""

    group: Group
    base: ir.Value
    count: ir.Value | int
    stride: ir.Value | int
    ld: int | ir.Value
    align: int = 16
    splat: bool = False  # A only: each float stored 4 times (a <4 x float> broadcast)
    # packs panel i at base just before its tiles (then stride is 0): _tiles, _jit_b
    pack: Callable[[ir.Value], None] | None = None


def _packed(group: Group, base: ir.Value, depth: ir.Value | int, b: ir.IRBuilder,
            count: ir.Value | int | None = None, splat: bool = False) -> Panels:
    ld = group.width * (SPLAT if splat or group.columns else 1)
    stride = ld * depth if isinstance(depth, int) else b.mul(depth, _c(ld))
    return Panels(group, base, group.count if count is None else count, stride, ld,
                  splat=splat)


def _in_place(b: ir.IRBuilder, src: ir.Value, group: Group, ld: int) -> Panels:
    """Full panels read straight from a row-major operand whose rows (depth) are ld long."""
    return Panels(group, _at(b, src, group.first), group.count, group.width, ld, align=4)


def _tiles(b: ir.IRBuilder, a_panels: Sequence[Panels], b_panels: Sequence[Panels],
           depth: ir.Value | int, rows: ir.Value | int, cols: int, c: ir.Value, flavor: Flavor,
           bias: ir.Value | None = None, mask: ir.Value | None = None, pair: bool = True
           ) -> None:
    """C[rows, cols] (+)= epilogue(A panels · B panels), tile by tile.

    Where A's panels are packed just in time (a `pack`), A panels outside: each is packed into
    one panel's room, which stays in L1 while every B panel passes (B in place or packed up
    front). Packing all of A first wrote it to L2 and read it back once per B panel: splat A
    is four times A (MNIST's 64 × 784 input: 800 KB), and in 256 KB blocks under the B panels
    (which a 4 MB splat A at 512³ needed) every block streamed all of B again. Otherwise B
    panels outside (nn's B packed just in time, or A given packed): one B panel stays in L1
    while the A panels stream. Measured in docs/performance.md (2026-12-07, just-in-time A).
    With `pair`, the Wasm build's depth loops of at least PAIR_MIN_DEPTH steps run two steps
    an iteration (_paired).
    """
    paired = pair and (not isinstance(depth, int) or depth >= PAIR_MIN_DEPTH)
    if not flavor.madd and isinstance(depth, int):  # not for relaxed_madd: its loop then ran
        depth = opaque_count(b, depth)  # 2× slower (MNIST, 256 deep)

    def tile(pa: Panels, ip: ir.Value, pb: Panels, jp: ir.Value) -> None:
        pa_i = _at(b, pa.base, b.mul(ip, _as(pa.stride)))
        pb_j = _at(b, pb.base, b.mul(jp, _as(pb.stride)))
        row0 = b.add(_c(pa.group.first), b.mul(ip, _c(MR)))
        col0 = b.add(_c(pb.group.first), b.mul(jp, _c(pb.group.width)))
        if pb.group.columns:
            vs = _column_product(b, pa, pa_i, pb, pb_j, depth, flavor.madd, not flavor.native,
                                 paired)
            _store_columns(b, vs, c, cols, row0, rows, col0, bias, mask, flavor)
            return
        acc = _tile_product(b, pb.group.width, pa, pa_i, pb, pb_j, depth, flavor.madd,
                            not flavor.native, paired)
        _store_tile(b, acc, c, cols, row0, rows, col0, pb.group.last_valid, bias, mask, flavor,
                    rows if flavor.c_packed else None)

    outer, inner = a_panels, b_panels
    if not any(pa.pack for pa in a_panels):
        outer, inner = b_panels, a_panels
    assert not any(p.pack for p in inner), "only the outer operand is packed just in time"
    for po in outer:
        def line(i: ir.Value, po: Panels = po) -> None:
            if po.pack is not None:
                po.pack(i)
            for pi in inner:
                def one(j: ir.Value, pi: Panels = pi) -> None:
                    tile(*((po, i, pi, j) if outer is a_panels else (pi, j, po, i)))

                _for_each(b, 0, pi.count, 1, one, "jp" if outer is a_panels else "ip")

        _for_each(b, 0, po.count, 1, line, "ip" if outer is a_panels else "jp")


# ---------------------------------------------------------------------------------------------
# Drivers. A row-major operand whose panels are contiguous runs of its rows (B in nn and tn,
# A in tn) is read in place, full panels only; the remainder panel, and the operands that need
# a transpose (A in nn and nt, B in nt), are packed into scratch. Reading in place saves a copy
# of the operand per call (the weight, for a dense layer's forward pass).


# Longest static depth whose B panels are read in place: a panel read in place touches a cache
# line per unit of depth, so past ~256 it no longer stays in L1 across the A panels (MNIST's
# 784-deep forward had a lower median in place than packed; 64- and 256-deep ones ran the same,
# minus the copy: a convolution's per-example column matrix, or a small layer's weight).
IN_PLACE_DEPTH = 256
# Longest row of tn's A (X in dW = Xᵀ·G) whose 4-column panels are read in place. Reading
# MNIST's 784-wide input rows in place ran ~3% slower than packing them, rows of 64–144 floats
# (digits, the CNN's 144-wide kernels) 2–4% faster (whole training steps, interleaved A/B).
TN_A_IN_PLACE_MAX_K = 160


# L1 data cache geometry of the x86-64 cores measured here (Zen 3/4: 32 KB, 8 ways, 64-byte
# lines, so 64 sets); a B panel read in place whose rows map to few sets cannot stay in L1.
L1_WAYS, L1_SETS, LINE_FLOATS = 8, 64, 16


def l1_rows(ld: int) -> int:
    """How many rows ld floats apart (one line touched per row) L1 can hold at once: rows a
    multiple of 64 bytes apart fall in only L1_SETS / gcd(lines apart, L1_SETS) sets."""
    if ld % LINE_FLOATS:
        return L1_WAYS * L1_SETS
    return L1_WAYS * (L1_SETS // math.gcd(ld // LINE_FLOATS, L1_SETS))


def _jit_b(kind: Kind, n: int, k: int, columns: bool) -> bool:
    """Whether nn packs each full B panel just before its tiles (B panels outside, _tiles)
    rather than A's: where B is packed and A's panels are not splat (`columns`), so that all
    of A packed up front is A's size, not four times it. MNIST's 64×784×256 forward under
    relaxed-simd: 816 µs with A's panels just in time and B packed up front, 792 with B's
    (min of 7 interleaved; before either, 830; V8: 684 → 656)."""
    return kind == "nn" and columns and not _in_place_b(kind, n, k)


def _in_place_b(kind: Kind, n: int, k: int) -> bool:
    """Whether B's full panels are read in place: nn only, and only when the panel's k rows
    (n floats apart) fit in L1's sets. MNIST's 256×128 second layer (rows 512 bytes apart:
    8 sets, 64 rows) ran 113 → 102 µs packed. Not in tn: reading G in place as well as A
    ran 5–30% slower at MNIST's 64×784×256 weight gradient (two strided streams)."""
    return kind == "nn" and k <= IN_PLACE_DEPTH and k <= l1_rows(n)


def weight_panels(n: int, k: int) -> bool:
    """Whether a dense weight W[k, n] is worth storing in NR-column panels (packed_b_index
    with rows = k, the layout nn packs B into): where every panel is full and nn would
    otherwise pack B on every call. Then nn reads W as it is, nt reads it in panels, tn writes
    its gradient in panels, and the optimizer's elementwise pass needs no change (fedc/layout.py
    decides, the runtimes convert at get/set_weights). MNIST's 784 × 256 weight: its forward
    packed 800 KB a step (60 µs in a 720 µs product); stored in panels, with its weight
    gradient writing 4×8 tiles as 128 contiguous bytes, the whole step ran 0.89× the time."""
    return n % NR == 0 and n > WIDE_COLUMNS_MAX and not _in_place_b("nn", n, k)


def tn_b_in_place_rows(n: int) -> int:
    """The most rows (tn's depth m, known at run time) at which tn reads B's (G's) full panels
    in place rather than packing them: rows n floats apart filling at most half the L1 ways of
    the sets they map to, as A's panels stream beside them. Digits' 32×64×128 weight gradient:
    18.6 → 16.9 µs without the copy of G; MNIST's 64-row ones (l1_rows 64 and 32) stay packed."""
    return min(IN_PLACE_DEPTH, l1_rows(n) // 2)


def _packed_b_floats(kind: Kind, m_max: int, n: int, k: int, columns: bool,
                     wide: bool = False) -> int:
    """Floats of B's packed panels (`columns` and `wide` as the body's groups are made)."""
    if kind == "nt":
        return _panel_floats(k, NR, True, columns) * n
    depth = k if kind == "nn" else m_max
    groups = _groups(n, NR, True, columns, wide)
    in_place = _in_place_b(kind, n, k)  # then only panels with padding or columns are packed
    jit = _jit_b(kind, n, k, columns)  # then the full panels take one panel's room
    return sum(g.floats // g.count if jit and g.count > 1 else g.floats
               for g in groups if not (in_place and g.in_place)) * depth


def scratch_bytes(kind: Kind, m_max: int, n: int, k: int, a_packed: bool = False,
                  b_packed: bool = False) -> int:
    """Bytes of scratch emit_matmul needs for a batch of at most m_max rows: the largest of the
    simd128 layout (splat A where _splat_a, B's columns groups where not, `wide` ones for a
    narrow C) and relaxed-simd's (no splat A, a columns group for the last 1–3 columns). nn
    with `b_packed` (a weight in panels) packs no B, and A one panel at a time."""
    if kind not in _BODIES:
        raise ValueError(f"unknown matmul kind {kind!r}")
    splat = _splat_a(kind, n, k) and not a_packed
    if kind == "nn" and b_packed:
        return 0 if a_packed else 4 * max((SPLAT if s else 1) * MR * k for s in {splat, False})
    return 4 * max(_packed_b_floats(kind, m_max, n, k, not s, wide)
                   + (0 if a_packed else _packed_a_floats(kind, m_max, n, k, s))
                   for s in {splat, False} for wide in (False, True))


def _splat_a(kind: Kind, n: int, k: int, madd: bool = False) -> bool:
    """Whether A is packed as splat panels: where each float of A feeds at least
    SPLAT_MIN_COLS columns of C (C has n columns, k for nt), and never for relaxed_madd.

    Splat panels trade the shuffles that broadcast A's lanes for four times the packing and
    four loads a step. That pays with mul + add, which share their vector ports with the
    shuffles (p0, p1, p5 on the Intel machine). An FMA issues on p0/p1 only, so the
    shuffles run beside it on p5 for free and only the costs of splat remain. Without splat
    under relaxed-simd, min of 6–9 interleaved (docs/performance.md): MNIST's 784-deep
    weight gradient 650 → 597 µs under V8 and 847 → 764 under wasmtime; steps digits 40.1 →
    38.1 / 50.5 → 48.4, MNIST 1,850 → 1,756 / 2,326 → 2,188, digits CNN 226 → 221 / 256 →
    246 µs (V8 / wasmtime). Scratch is sized for the splat layout, the larger.
    """
    return not madd and (k if kind == "nt" else n) >= SPLAT_MIN_COLS


def _tn_a_in_place(n: int, k: int, madd: bool = False) -> bool:
    return k <= TN_A_IN_PLACE_MAX_K and not _splat_a("tn", n, k, madd)


def _packed_a_floats(kind: Kind, m_max: int, n: int, k: int, splat: bool) -> int:
    """Floats of A's packed panels: one panel's room where they are packed just in time."""
    per = SPLAT if splat else 1
    if kind == "nn" and _jit_b(kind, n, k, not splat):  # all of A up front
        return per * _up(m_max, MR) * k
    if kind != "tn":
        return per * MR * (k if kind == "nn" else n)
    if k <= TN_A_IN_PLACE_MAX_K and not splat:  # _tn_a_in_place: only the last 1–3 columns
        return MR * m_max if k % MR else 0
    if k // MR > 1:  # the full panels just in time, then the remainder's
        return per * (MR + _up(k % MR, MR)) * m_max
    return per * _up(k, MR) * m_max


def _b_panels(b: ir.IRBuilder, src: ir.Value, n: int, depth: ir.Value | int,
              scratch: ir.Value, in_place: bool | ir.Value, columns: bool,
              row_sum: ir.Value | None = None, accumulate: bool = False,
              jit: bool = False, wide: bool = False) -> list[Panels]:
    """B[depth, n] as panels: those without padding lanes in place (if in_place; an i1 value
    decides at run time), the others packed at scratch[0…]; with `columns` (A's panels are not
    splat) the last 1–3 columns as a columns group, or (`wide`) a narrow B all as columns
    groups (_groups). With row_sum, also row_sum[j] (+)=
    Σ_d B[d, j] (tn's bias gradient). With `jit` (_jit_b), a group of several full panels is
    packed one panel at a time, as _tiles reaches it."""
    panels, packed = [], 0  # floats per unit of depth packed so far
    for g in _groups(n, NR, narrow_edge=True, columns=columns, wide=wide):
        if in_place is True and g.in_place:
            assert row_sum is None, "row sums are fused into the packing copy"
            panels.append(_in_place(b, src, g, n))
            continue
        dst = _at(b, scratch, b.mul(_as(depth), _c(packed)))
        if jit and g.count > 1:
            assert row_sum is None, "row sums are fused into the packing copy"
            packed += g.floats // g.count

            def pack(jp: ir.Value, g: Group = g, dst: ir.Value = dst) -> None:
                _pack_copy(b, src, n, depth, g, dst, only=jp)

            panels.append(Panels(g, dst, g.count, 0, g.width, pack=pack))
            continue
        packed += g.floats
        if isinstance(in_place, bool) or not g.in_place:
            _pack_copy(b, src, n, depth, g, dst, row_sum, accumulate)
            panels.append(_packed(g, dst, depth, b))
            continue
        assert row_sum is None, "row sums are fused into the packing copy"
        with b.if_then(b.not_(in_place)):
            _pack_copy(b, src, n, depth, g, dst)
        here, there = _in_place(b, src, g, n), _packed(g, dst, depth, b)
        pick = [b.select(in_place, _as(x), _as(y)) for x, y in
                ((here.base, there.base), (here.stride, there.stride), (here.ld, there.ld))]
        panels.append(Panels(g, pick[0], g.count, pick[1], pick[2], align=4))
    return panels


def packed_b_index(b: ir.IRBuilder, n: int, rows: ir.Value, row: ir.Value, col: int | ir.Value
                   ) -> ir.Value:
    """Where B[row, col] of a tn product's B[rows, n] goes for `b_packed` (col a multiple of 4,
    n of NR): panel col // NR of NR columns, [rows][NR]; four columns from col are contiguous."""
    if n % NR:
        raise ValueError(f"packed_b_index needs n in multiples of {NR}, got {n}")
    col_v = _as(col)
    panel, lane = b.udiv(col_v, _c(NR)), b.urem(col_v, _c(NR))
    return b.add(b.mul(panel, b.mul(rows, _c(NR))), b.add(b.mul(row, _c(NR)), lane))


def packed_a_bytes(m: int, k: int) -> int:
    """Bytes of the panels pack_a writes for an nn product's A[m, k]."""
    return 4 * _up(m, MR) * k


def emit_pack_a(b: ir.IRBuilder, *, m: int, k: int, a: ir.Value, dst: ir.Value) -> None:
    """Pack an nn product's A[m, k] (m static) into dst (16-byte aligned, packed_a_bytes), for
    emit_matmul(a_packed=True): a convolution packs its weight once instead of per example."""
    _pack_transpose(b, a, k, m, Group(0, 0, MR, MR), ceil_div(b, m, MR), dst)


def _body_nn(b: ir.IRBuilder, n: int, k: int, args: Sequence[ir.Value], flavor: Flavor) -> None:
    m, a, bm, c, bias, scratch = args
    splat = _splat_a("nn", n, k, flavor.madd) and not flavor.a_packed
    wide = not flavor.madd
    if flavor.b_packed:  # a weight stored in panels (weight_panels): full panels only
        pb = [_packed(g, _at(b, bm, k * g.first), k, b) for g in _groups(n, NR, True)]
    else:
        pb = _b_panels(b, bm, n, k, scratch, _in_place_b("nn", n, k), not splat,
                       jit=_jit_b("nn", n, k, not splat), wide=wide)
    count = ceil_div(b, m, MR)
    if flavor.a_packed:
        pa = _packed(Group(0, 0, MR, MR), a, k, b, count)
    else:
        b_floats = 0 if flavor.b_packed else _packed_b_floats("nn", 0, n, k, not splat, wide)
        dst = _at(b, scratch, b_floats)
        pa = _a_panels(b, a, k, m, count, dst, splat, just_in_time=not any(p.pack for p in pb))
    _tiles(b, [pa], pb, k, m, n, c, flavor, bias=bias if flavor.fused else None)


def _a_panels(b: ir.IRBuilder, a: ir.Value, depth: int, m: ir.Value, count: ir.Value,
              dst: ir.Value, splat: bool, just_in_time: bool = True) -> Panels:
    """nn's and nt's A[m, depth] as `count` transposed panels of MR rows at dst: each packed as
    _tiles reaches it (into one panel's room), or all now."""
    g = Group(0, 0, MR, MR)
    panels = _packed(g, dst, depth, b, count, splat=splat)
    if not just_in_time:
        _pack_transpose(b, a, depth, m, g, count, dst, splat=splat)
        return panels
    return Panels(g, dst, count, 0, panels.ld, splat=splat,
                  pack=lambda i: _pack_transpose(b, a, depth, m, g, count, dst, splat=splat,
                                                 only=i))


def _body_nt(b: ir.IRBuilder, n: int, k: int, args: Sequence[ir.Value], flavor: Flavor) -> None:
    m, a, bm, c, mask, scratch = args
    splat = _splat_a("nt", n, k, flavor.madd)
    pb, packed = [], 0  # floats per unit of depth packed so far
    for g in _groups(k, NR, narrow_edge=True, columns=not splat):
        dst = _at(b, scratch, packed * n)
        _pack_transpose(b, bm, n, k, g, g.count, dst, src_panels=flavor.b_packed)
        pb.append(_packed(g, dst, n, b))
        packed += g.floats
    dst = _at(b, scratch, _packed_b_floats("nt", 0, n, k, not splat))
    pa = _a_panels(b, a, n, m, ceil_div(b, m, MR), dst, splat)
    _tiles(b, [pa], pb, n, m, k, c, flavor, mask=mask if flavor.fused else None)


def _body_tn(b: ir.IRBuilder, n: int, k: int, args: Sequence[ir.Value], flavor: Flavor) -> None:
    m, a, g_mat, c, row_sum, scratch = args
    in_place, splat = _tn_a_in_place(n, k, flavor.madd), _splat_a("tn", n, k, flavor.madd)
    if flavor.b_packed:  # n is a multiple of NR (packed_b_index)
        pb = [_packed(g, _at(b, g_mat, b.mul(m, _c(g.first))), m, b)
              for g in _groups(n, NR, narrow_edge=True)]
    else:  # B's panels below A's, where all of B fits packed (scratch_bytes) in any case
        b_here = (b.icmp_unsigned("<=", m, _c(tn_b_in_place_rows(n))) if flavor.b_in_place
                  else False)
        pb = _b_panels(b, g_mat, n, m, scratch, b_here, not splat,
                       row_sum if flavor.fused else None, flavor.accumulate,
                       wide=not flavor.madd)
    rest = _at(b, scratch, b.mul(m, _c(_packed_b_floats("tn", 1, n, k, not splat,
                                                         not flavor.madd))))
    pa = []
    packed = 0  # floats per row of B (unit of depth) packed so far
    for g in _groups(k, MR, narrow_edge=False):
        if in_place and g.last_valid == MR:
            pa.append(_in_place(b, a, g, k))
            continue
        dst = _at(b, rest, b.mul(m, _c(packed)))
        panels = _packed(g, dst, m, b, splat=splat)
        if g.count > 1:  # just in time (_tiles)
            packed += g.width * (SPLAT if splat else 1)

            def pack(i: ir.Value, g: Group = g, dst: ir.Value = dst) -> None:
                _pack_copy(b, a, k, m, g, dst, splat=splat, only=i)

            pa.append(Panels(g, dst, g.count, 0, panels.ld, splat=splat, pack=pack))
            continue
        packed += g.floats * (SPLAT if splat else 1)
        _pack_copy(b, a, k, m, g, dst, splat=splat)
        pa.append(panels)
    # paired, relaxed_madd's tn loop kept one accumulator on the stack, beside its FMAs'
    # register copies (MNIST's weight gradients measured 10–30 % slower); relaxed nn and nt
    # do not spill paired and ran 14–24 % faster
    _tiles(b, pa, pb, m, k, n, c, flavor, pair=not flavor.madd)


_BODIES = {"nn": _body_nn, "nt": _body_nt, "tn": _body_tn}


def _kernel(module: ir.Module, kind: Kind, n: int, k: int, flavor: Flavor) -> ir.Function:
    """The internal `void(m, a, b, c, bias_mask_or_row_sum, scratch)` for one kind, shape and
    flavor, defined once per module and shared by every call with the same static parameters."""
    name = f"fedc.gemm.{kind}.n{n}.k{k}{flavor.suffix}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I32, PTR, PTR, PTR, PTR, PTR]), name)
    fn.linkage = "internal"
    for arg in fn.args[1:]:
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    _BODIES[kind](b, n, k, fn.args, flavor)
    b.ret_void()
    return fn


def emit_matmul(b: ir.IRBuilder, *, kind: Kind, m: ir.Value | int, n: int, k: int,
                a: ir.Value, bmat: ir.Value, c: ir.Value, scratch: ir.Value,
                bias: ir.Value | None = None, row_sum: ir.Value | None = None,
                accumulate: bool = False, madd: bool = False, relu: bool = False,
                mask: ir.Value | None = None, a_packed: bool = False,
                b_packed: bool = False, c_packed: bool = False) -> None:
    """Emit at b's position a call computing, with m a runtime i32 and n, k Python ints:

    - "nn": c[m,n] (+)= a[m,k] · bmat[k,n] (+ bias[n])                  (forward)
    - "nt": c[m,k] (+)= a[m,n] · bmat[k,n]ᵀ                             (input gradient)
    - "tn": c[k,n] (+)= a[m,k]ᵀ · bmat[m,n]; row_sum[n] (+)= Σ_m bmat[m,:]  (weight gradient)

    Epilogues (on the product, before "(+)="): nn: + bias, then relu if `relu`; nt: where
    mask[m,k] > 0, else 0 (`mask` laid out like c: a fused relu gradient). nn with `a_packed`:
    `a` holds emit_pack_a's panels of A (then scratch needs no room for them). tn with
    `b_packed`: `bmat` holds B[m, n] as packed_b_index lays it out (no row_sum then). nn and
    nt with `b_packed`: `bmat` is a weight B[k, n] stored in panels (packed_b_index with
    rows = k; nn only where weight_panels(n, k), nt where n is a multiple of NR); tn with
    `c_packed` writes such a weight's gradient C[k, n] in the same layout.
    "(+)=" adds to the output when `accumulate`. `madd` uses f32x4.relaxed_madd (the
    relaxed-simd build variant: results may differ in the last bit between engines). All
    operands are opaque pointers into linear memory, row-major, 4-byte aligned; `scratch` is
    16-byte aligned, holds scratch_bytes(kind, m_max, n, k) bytes for the largest m used and
    overlaps nothing else.
    """
    if n < 1 or k < 1:
        raise ValueError(f"matmul needs n, k ≥ 1, got n={n}, k={k}")
    if bias is not None and kind != "nn":
        raise ValueError("bias is only fused into the 'nn' (forward) matmul")
    if row_sum is not None and kind != "tn":
        raise ValueError("row_sum is only fused into the 'tn' (weight-gradient) matmul")
    if relu and kind != "nn":
        raise ValueError("relu is only fused into the 'nn' (forward) matmul")
    if mask is not None and kind != "nt":
        raise ValueError("mask is only fused into the 'nt' (input-gradient) matmul")
    if a_packed and kind != "nn":
        raise ValueError("only the 'nn' matmul takes a pre-packed A")
    if b_packed and kind == "tn" and row_sum is not None:
        raise ValueError("the 'tn' matmul takes a pre-packed B only without row_sum")
    if b_packed and kind == "nn" and not weight_panels(n, k):
        raise ValueError(f"nn's B[{k}, {n}] is not stored in panels (weight_panels)")
    if b_packed and kind == "nt" and n % NR:
        raise ValueError(f"nt's B in panels needs its depth n in multiples of {NR}, got {n}")
    if c_packed and (kind != "tn" or not weight_panels(n, k)):
        raise ValueError("only the 'tn' matmul writes C in panels, where weight_panels(n, k)")
    if kind not in _BODIES:
        raise ValueError(f"unknown matmul kind {kind!r}")
    extra = bias if bias is not None else row_sum if row_sum is not None else mask
    # tn without row sums (they are fused into the packing) reads B in place when m is small
    b_in_place = kind == "tn" and not b_packed and row_sum is None
    native = isinstance(b, LinearMemoryBuilder)  # the native build's builder (lower/address.py)
    flavor = Flavor(extra is not None, accumulate, madd, relu, a_packed, b_packed, b_in_place,
                    native, c_packed)
    fn = _kernel(b.module, kind, n, k, flavor)
    b.call(fn, [_as(m), a, bmat, c, ir.Constant(PTR, None) if extra is None else extra, scratch])
