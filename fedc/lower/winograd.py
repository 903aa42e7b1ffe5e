"""Lowering: 3×3 stride-1 convolutions by Winograd F(m×m, 3×3) → transforms and a² GEMMs a chunk.

Each m×m block of outputs (a tile; m = 2 or 4) is computed from the a×a input patch under it
(a = m + 2):

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A          (per output channel, summed over input channels)

so with U_ξ = (G g Gᵀ)_ξ [C, O] and V_ξ = (Bᵀ d B)_ξ [T, C] for the a² positions ξ of a
transformed tile and the T tiles of a chunk of images, the products are a² GEMMs
M_ξ = V_ξ · U_ξ (fedc.lower.gemm "nn"): a² multiplies per tile and channel pair instead of
9·m² (16 instead of 36 for F(2×2), 36 instead of 144 for F(4×4)). The gradients are the
adjoints of that same algorithm, so they are exact in real arithmetic like it:

    Z_ξ  = (A dy Aᵀ)_ξ                        [T, O]   (the output transform's adjoint)
    dV_ξ = Z_ξ · U_ξᵀ,  dx += B dV Bᵀ          [T, C]   ("nn" on a transposed U, then the
                                                       input transform's adjoint)
    dU_ξ = Σ_T V_ξᵀ · Z_ξ,  dW = Gᵀ dU G      [C, O]   ("tn" accumulated over chunks)

Transforms run on <4 x float> over four channels, so images are first transposed to
channels-last ([H·W, C]) in scratch and back. Tile positions are unrolled at compile time: the
patch cells that fall in the padding, and the outputs past an odd edge, are known statically.
Chunks are a few images, so a chunk's transformed tiles stay in L1 between the transforms and
the GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llvmlite import ir

from . import gemm
from .context import LowerCtx
from .kernels import (
    LANES,
    ceil_div,
    gep,
    i32c,
    imin,
    load,
    load4,
    loop,
    store,
    store4,
    transpose4,
)
from .wino_transforms import F2, F4, Cell, Transforms, transpose, two_sided, zero

if TYPE_CHECKING:
    from .conv import ConvShape

CHUNK_CELLS = 160  # tiles × ξ per chunk (2 images of 4 tiles × 16 or 4 of 1 × 36): L1-resident
# The weight gradient's "tn" products reduce over a chunk's tiles and add into dU: deeper
# chunks amortise that read-modify-write (digits CNN 16→32 on 4×4: 58.4 µs at 160, 53.4 at 640)
DW_CHUNK_CELLS = 640
MAX_TILES = 16  # tiles per image, unrolled (outputs up to 8×8 for F(2×2), 16×16 for F(4×4))
# Unrolled tile positions per image (tiles × ξ): beyond this the code grows faster than the
# speed (F(4×4) on 14×14 outputs, 576: 200 KB of Wasm for a 3-layer CNN, as fast looped)
MAX_UNROLLED_CELLS = 144
# Larger images are copied into zero-bordered channels-last grids and their tiles looped over at
# run time (every patch cell then lies in the grid); up to this many tiles per image (scratch)
MAX_LOOPED_TILES = 256


@dataclass(frozen=True)
class Wino:
    f: Transforms
    c: int
    o: int
    h: int
    w: int
    ph: int
    pw: int
    cells: int = 0  # tile positions (tiles × ξ) per chunk; 0: CHUNK_CELLS
    by_image: bool = False  # forward, input gradient: image_lanes applies (see there)

    @property
    def ho(self) -> int:
        return self.h + 2 * self.ph - 2

    @property
    def wo(self) -> int:
        return self.w + 2 * self.pw - 2

    @property
    def xis(self) -> int:
        """Positions ξ of a transformed tile (a²): the number of GEMMs per chunk."""
        return self.f.a * self.f.a

    @property
    def tiles_hw(self) -> tuple[int, int]:
        m = self.f.m
        return -(-self.ho // m), -(-self.wo // m)

    @property
    def tiles(self) -> int:
        th, tw = self.tiles_hw
        return th * tw

    @property
    def padded(self) -> bool:
        """Zero-bordered grids and tile loops at run time: more than MAX_TILES tiles, or more
        than MAX_UNROLLED_CELLS tile positions (tiles × ξ: the unrolled code's size)."""
        return self.tiles > MAX_TILES or self.tiles * self.xis > MAX_UNROLLED_CELLS

    @property
    def grid_in(self) -> tuple[int, int]:
        """(rows, width) of an input image as the transforms read it: the image itself, or
        (padded) a zero-bordered grid that every tile's patch lies inside."""
        th, tw = self.tiles_hw
        m = self.f.m
        return (m * th + 2, m * tw + 2) if self.padded else (self.h, self.w)

    @property
    def grid_out(self) -> tuple[int, int]:
        """(rows, width) of an output image as the transforms write it (padded: whole tiles)."""
        th, tw = self.tiles_hw
        m = self.f.m
        return (m * th, m * tw) if self.padded else (self.ho, self.wo)

    @property
    def image_lanes(self) -> bool:
        """Transforms vectorised over four images (one tile each) instead of four channels:
        their cells are then stored straight into the packed-A panels of the a² GEMMs (rows
        are tiles, depth is channels), so the products skip packing A (2.5–4 µs of a digits
        CNN kernel). For one tile per image (rows stay image order), whole groups of four
        images per chunk and planes in whole vectors; the forward and input gradient only
        (the weight gradient's tn reads V as rows of channels)."""
        return (self.by_image and self.tiles == 1 and not self.padded and self.chunk % LANES == 0
                and (self.h * self.w) % LANES == 0 and (self.ho * self.wo) % LANES == 0)

    @property
    def u_stride(self) -> int:
        """Floats between the a² blocks U_ξ [C, O] (and dU_ξ): C·O padded so that the blocks
        start in different L1 sets. Unpadded, 16×32 blocks are 2 KB apart, so the a² = 36
        cells a kernel-transform step stores (or a kernel-adjoint step loads) fell in two of
        L1's 64 sets and missed on nearly every access."""
        return _spread(self.c * self.o)

    def cells_stride(self, ch: int) -> int:
        """Floats between the a² blocks [T, ch] of V, Z or dV (spread over L1 sets as U)."""
        return _spread(self.tmax * ch)

    @property
    def chunk(self) -> int:
        """Images per chunk."""
        return max(1, (self.cells or CHUNK_CELLS) // (self.tiles * self.xis))

    @property
    def tmax(self) -> int:
        return self.chunk * self.tiles

    def _areas(self) -> list[tuple[str, int]]:
        (hi, wi), (hq, wq) = self.grid_in, self.grid_out
        img = self.chunk * max(hi * wi * self.c, hq * wq * self.o)
        g = max(gemm.scratch_bytes("nn", self.tmax, self.o, self.c),
                gemm.scratch_bytes("nn", self.tmax, self.c, self.o),
                gemm.scratch_bytes("tn", self.tmax, self.o, self.c)) // 4
        x = self.xis
        return [("u", x * self.u_stride), ("img1", img), ("img2", img),
                ("v", x * self.cells_stride(self.c)), ("z", x * self.cells_stride(self.o)),
                ("dv", x * self.cells_stride(self.c)), ("gemm", g)]

    def offset(self, name: str) -> int:
        """Byte offset of a scratch area (each 16-byte aligned). "wt" (the weights in
        weights_by_lane's layout) overlaps the areas after U: the kernel transform runs before
        the chunks, the kernel adjoint after them."""
        if name == "wt":
            return self.offset("img1")
        at = 0
        for area, floats in self._areas():
            if area == name:
                return at
            at += (floats + 3) // 4 * 16
        raise KeyError(name)

    def scratch_bytes(self) -> int:
        areas = sum((floats + 3) // 4 * 16 for _, floats in self._areas())
        return max(areas, self.offset("wt") + 4 * 9 * self.c * self.o)


def _spread(floats: int) -> int:
    """floats rounded up to whole 64-byte lines, plus one line if that is an even number of
    lines: blocks this far apart start in distinct L1 sets (the line count is odd, so coprime
    to the number of sets)."""
    lines = -(-floats // 16)
    return 16 * (lines + 1 - lines % 2)


def of(s: ConvShape, m: int = 2, which: int = 0) -> Wino | None:
    """The plan of F(m×m, 3×3) (m = 2 or 4) for kernel `which` (0 forward, 1 input gradient,
    2 weight gradient) of a convolution, or None where it does not apply: 2-D, 3×3, stride 1,
    one group, channel counts in fours (the transforms' vectors), padding ≤ 2 and at most
    MAX_LOOPED_TILES tiles per image (up to MAX_TILES, their positions are unrolled)."""
    win = s.win
    if len(win.size) != 2 or win.kernel != (3, 3) or win.stride != (1, 1):
        return None
    if s.groups != 1 or s.channels % LANES or s.out_channels % LANES or max(win.padding) > 2:
        return None
    (h, w), (ph, pw) = win.size, win.padding
    cells = DW_CHUNK_CELLS if which == 2 else CHUNK_CELLS
    wg = Wino(F4 if m == 4 else F2, s.channels, s.out_channels, h, w, ph, pw, cells,
              by_image=which != 2)
    return wg if wg.ho >= 1 and wg.wo >= 1 and wg.tiles <= MAX_LOOPED_TILES else None


# --- layouts -----------------------------------------------------------------------------------

def channels_last(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, ch: int, hw: int,
                  inverse: bool = False, stride: int | None = None) -> None:
    """dst[p, c] = src[c, p] for p < hw pixels of one image (src [ch, hw], or channels `stride`
    floats apart: one row of a larger image); `inverse`: dst[c, p] = src[p, c]."""
    whole = hw - hw % LANES
    plane = hw if stride is None else stride

    def at(c: ir.Value, p: ir.Value | int, last: bool) -> ir.Value:  # index into [ch, hw]
        return b.add(b.mul(c, i32c(plane)), i32c(p) if isinstance(p, int) else p) if not last \
            else b.add(b.mul(i32c(p) if isinstance(p, int) else p, i32c(ch)), c)

    with loop(b, 0, ch, LANES, "hc") as c:
        if whole:
            with loop(b, 0, whole, LANES, "hp") as p:
                if not inverse:
                    rows = [load4(b, src, at(b.add(c, i32c(r)), p, False)) for r in range(4)]
                    for j, v in enumerate(transpose4(b, rows)):
                        store4(b, v, dst, at(c, b.add(p, i32c(j)), True))
                else:
                    rows = [load4(b, src, at(c, b.add(p, i32c(j)), True)) for j in range(4)]
                    for r, v in enumerate(transpose4(b, rows)):
                        store4(b, v, dst, at(b.add(c, i32c(r)), p, False))
        for p in range(whole, hw):
            for r in range(LANES):
                cr = b.add(c, i32c(r))
                if not inverse:
                    store(b, load(b, src, at(cr, p, False)), dst, at(cr, p, True))
                else:
                    store(b, load(b, src, at(cr, p, True)), dst, at(cr, p, False))


# --- the transforms of one chunk ---------------------------------------------------------------

@dataclass(frozen=True)
class Tile:
    """One tile of image i: its index in the chunk, the grid pixels its patch and outputs start
    at, and the pixel offsets (from there) of its patch cells and outputs, None outside."""

    t: ir.Value
    patch_at: ir.Value
    out_at: ir.Value
    patch: list[list[int | None]]
    outputs: list[list[int | None]]


def _tiles(b: ir.IRBuilder, wg: Wino, i: ir.Value) -> Iterator[Tile]:
    """Every tile of image i of a chunk: unrolled (cells in the padding and outputs past an odd
    edge known statically), or (padded) in loops over tile rows and columns whose patches all
    lie in the zero-bordered grid."""
    m, a = wg.f.m, wg.f.a
    th, tw = wg.tiles_hw
    first = b.mul(i, i32c(wg.tiles))
    if wg.padded:
        (_, wi), (_, wq) = wg.grid_in, wg.grid_out
        with loop(b, 0, th, 1, "ty") as ty, loop(b, 0, tw, 1, "tx") as tx:
            yield Tile(b.add(first, b.add(b.mul(ty, i32c(tw)), tx)),
                       b.add(b.mul(ty, i32c(m * wi)), b.mul(tx, i32c(m))),
                       b.add(b.mul(ty, i32c(m * wq)), b.mul(tx, i32c(m))),
                       [[r * wi + q for q in range(a)] for r in range(a)],
                       [[u * wq + v for v in range(m)] for u in range(m)])
        return
    zero_at = i32c(0)
    for ty in range(th):
        for tx in range(tw):
            patch = [[y * wg.w + x if 0 <= (y := m * ty + r - wg.ph) < wg.h
                      and 0 <= (x := m * tx + q - wg.pw) < wg.w else None for q in range(a)]
                     for r in range(a)]
            outputs = [[y * wg.wo + x if (y := m * ty + u) < wg.ho and (x := m * tx + v) < wg.wo
                        else None for v in range(m)] for u in range(m)]
            yield Tile(b.add(first, i32c(ty * tw + tx)), zero_at, zero_at, patch, outputs)


def _at(b: ir.IRBuilder, base: ir.Value, start: ir.Value, pixel: int, ch: int,
        c: ir.Value) -> ir.Value:
    """Index of channel c of pixel start + pixel in channels-last images from base."""
    return b.add(b.add(base, b.mul(start, i32c(ch))), b.add(i32c(pixel * ch), c))


def _xi(b: ir.IRBuilder, xi: int, wg: Wino, ch: int, t: ir.Value, c: ir.Value) -> ir.Value:
    """Index of V/Z/dV[ξ][t][c] (rows of ch floats)."""
    return b.add(b.add(i32c(xi * wg.cells_stride(ch)), b.mul(t, i32c(ch))), c)


def _load_xis(b: ir.IRBuilder, wg: Wino, src: ir.Value, ch: int, t: ir.Value,
              c: ir.Value) -> list[list[Cell]]:
    """Tile t's a×a transformed cells src[ξ][t][c…c+3] (M, dV: rows of ch floats)."""
    a = wg.f.a
    return [[load4(b, src, _xi(b, a * r + q, wg, ch, t, c)) for q in range(a)]
            for r in range(a)]


def _store_xis(b: ir.IRBuilder, wg: Wino, cells: list[list[Cell]], dst: ir.Value, ch: int,
               at: ir.Value) -> None:
    """One tile's a×a transformed cells (V, Z; a zero cell stores zeros) at dst[at] of each
    ξ's block of rows of ch floats."""
    for xi in range(wg.xis):
        cell = cells[xi // wg.f.a][xi % wg.f.a]
        store4(b, zero() if cell is None else cell, dst,
               b.add(i32c(xi * wg.cells_stride(ch)), at))


def to_cells(ctx: LowerCtx, wg: Wino, img: ir.Value, e: ir.Value, dst: ir.Value, *,
             out: int, lanes: int = 0, packed: int = 0) -> None:
    """Each tile's transformed cells dst[ξ][i·tiles + t][·] from channels-last images img[e]:
    V = Bᵀ d B from the input side (out=0: patches, C channels), or Z = A dy Aᵀ from the
    output side (out=1: output gradients, O channels; the output transform's adjoint).
    `lanes` (Wino.image_lanes): img holds image_lanes' groups and the cells go to packed-A
    panels, dst[ξ][group][channel][image of the group]. `packed`: each block as the weight
    gradient's tn product reads its B (gemm.packed_b_index), so the product packs nothing."""
    b = ctx.b
    ch, (rows, width) = (wg.o, wg.grid_out) if out else (wg.c, wg.grid_in)
    mat = transpose(wg.f.at) if out else wg.f.bt
    if lanes:
        tile = next(_tiles(b, wg, i32c(0)))  # the only one: its cells' pixels are static
        cells = tile.outputs if out else tile.patch
        with loop(b, 0, ceil_div(b, e, LANES), 1, "wq") as q, loop(b, 0, ch, 1, "wc") as c:
            base = b.mul(b.add(b.mul(q, i32c(ch)), c), i32c(rows * width * LANES))
            d = [[None if p is None else load4(b, img, b.add(base, i32c(p * LANES)))
                  for p in row] for row in cells]
            at = b.add(b.mul(q, i32c(LANES * ch)), b.mul(c, i32c(LANES)))
            _store_xis(b, wg, two_sided(b, mat, d, mat), dst, ch, at)
        return
    with loop(b, 0, e, 1, "wi") as i, loop(b, 0, ch, LANES, "wc") as c:
        base = b.mul(i, i32c(rows * width * ch))
        for tile in _tiles(b, wg, i):
            at, cells = (tile.out_at, tile.outputs) if out else (tile.patch_at, tile.patch)
            d = [[None if p is None else load4(b, img, _at(b, base, at, p, ch, c)) for p in row]
                 for row in cells]
            at = gemm.packed_b_index(b, ch, b.mul(e, i32c(wg.tiles)), tile.t, c) if packed \
                else _xi(b, 0, wg, ch, tile.t, c)
            _store_xis(b, wg, two_sided(b, mat, d, mat), dst, ch, at)


def output_transform(ctx: LowerCtx, wg: Wino, m: ir.Value, e: ir.Value, bias: ir.Value | None,
                     img: ir.Value) -> None:
    """img[e][ho·wo][O] = Aᵀ M A (+ bias) from M[ξ][T][O]."""
    b = ctx.b
    (hq, wq) = wg.grid_out
    with loop(b, 0, e, 1, "wi") as i, loop(b, 0, wg.o, LANES, "wo") as o:
        base = b.mul(i, i32c(hq * wq * wg.o))
        bv = load4(b, bias, o) if bias is not None else None
        for tile in _tiles(b, wg, i):
            y = two_sided(b, wg.f.at, _load_xis(b, wg, m, wg.o, tile.t, o), wg.f.at)
            for u, row in enumerate(tile.outputs):
                for vv, p in enumerate(row):
                    if p is not None:
                        val = y[u][vv]
                        assert val is not None
                        store4(b, val if bv is None else b.fadd(val, bv), img,
                               _at(b, base, tile.out_at, p, wg.o, o))


def input_adjoint(ctx: LowerCtx, wg: Wino, dv: ir.Value, e: ir.Value, img: ir.Value) -> None:
    """img[e][h·w][C] = Σ over tiles of B dV Bᵀ on each patch's cells inside the image."""
    b = ctx.b
    b_mat = transpose(wg.f.bt)
    (hi, wi) = wg.grid_in
    count = b.mul(e, i32c(hi * wi * wg.c))
    with loop(b, 0, count, LANES, "wz") as j:
        store4(b, zero(), img, j)
    with loop(b, 0, e, 1, "wi") as i, loop(b, 0, wg.c, LANES, "wc") as c:
        base = b.mul(i, i32c(hi * wi * wg.c))
        for tile in _tiles(b, wg, i):
            dd = two_sided(b, b_mat, _load_xis(b, wg, dv, wg.c, tile.t, c), b_mat)
            for r, row in enumerate(tile.patch):
                for q, p in enumerate(row):
                    val = dd[r][q]
                    if p is not None and val is not None:
                        at = _at(b, base, tile.patch_at, p, wg.c, c)
                        store4(b, b.fadd(load4(b, img, at), val), img, at)


def weights_by_lane(ctx: LowerCtx, wg: Wino, w: ir.Value, dst: ir.Value, *,
                    over_o: bool) -> None:
    """w[O, C, 3, 3] → dst with the four lanes of a transform vector side by side, so the
    transforms load whole vectors: over_o, dst[c·9 + tap][o]; else dst[o][tap][c]. Gathering
    four floats 9 or 9·C apart lane by lane sent them through general registers, which were
    spilled (a 16→32 kernel transform: 3.9 µs gathered, 3.5 with this copy)."""
    b = ctx.b
    if over_o:
        channels_last(b, w, dst, wg.o, wg.c * 9)
        return
    with loop(b, 0, wg.o, 1, "kw") as o:
        at = b.mul(o, i32c(wg.c * 9))
        channels_last(b, gep(b, w, at), gep(b, dst, at), wg.c, 9)


def _by_lane(b: ir.IRBuilder, wg: Wino, o: ir.Value, c: ir.Value, tap: int,
             over_o: bool) -> ir.Value:
    """Index of tap `tap` of the four lanes at (o, c) in weights_by_lane's layout."""
    if over_o:
        return b.add(b.mul(b.add(b.mul(c, i32c(9)), i32c(tap)), i32c(wg.o)), o)
    return b.add(b.add(b.mul(o, i32c(wg.c * 9)), i32c(tap * wg.c)), c)


def kernel_transform(ctx: LowerCtx, wg: Wino, w: ir.Value, u: ir.Value, lanes_w: ir.Value,
                     transposed: int = 0) -> None:
    """U[ξ][c][o] = (G g Gᵀ)_ξ for g = w[o, c], vectors over four output channels; or
    `transposed`, Uᵀ[ξ][o][c], vectors over four input channels. lanes_w: scratch for
    weights_by_lane."""
    b = ctx.b
    over_o = not transposed
    weights_by_lane(ctx, wg, w, lanes_w, over_o=over_o)
    rows, lanes = (wg.o, wg.c) if transposed else (wg.c, wg.o)
    with loop(b, 0, rows, 1, "kr") as r, loop(b, 0, lanes, LANES, "kl") as q:
        o, c = (r, q) if transposed else (q, r)
        g = [[load4(b, lanes_w, _by_lane(b, wg, o, c, 3 * i + j, over_o))
              for j in range(3)] for i in range(3)]
        out = two_sided(b, wg.f.g, g, wg.f.g)
        for xi in range(wg.xis):
            cell = out[xi // wg.f.a][xi % wg.f.a]
            assert cell is not None
            store4(b, cell, u, b.add(b.add(i32c(xi * wg.u_stride), b.mul(r, i32c(lanes))), q))


def kernel_adjoint(ctx: LowerCtx, wg: Wino, du: ir.Value, dw: ir.Value,
                   lanes_w: ir.Value) -> None:
    """dw[o, c] = Gᵀ dU[ξ][c][o] G, vectors over four output channels written to lanes_w in
    weights_by_lane's layout, then transposed into dw (storing lane by lane was slower)."""
    b = ctx.b
    gt = transpose(wg.f.g)
    with loop(b, 0, wg.c, 1, "kc") as c, loop(b, 0, wg.o, LANES, "ko") as o:
        a = wg.f.a
        cells = [[load4(b, du, b.add(b.add(i32c((a * r + q) * wg.u_stride),
                                           b.mul(c, i32c(wg.o))), o)) for q in range(a)]
                 for r in range(a)]
        out = two_sided(b, gt, cells, gt)
        for i in range(3):
            for j in range(3):
                val = out[i][j]
                assert val is not None
                store4(b, val, lanes_w, _by_lane(b, wg, o, c, 3 * i + j, True))
    channels_last(b, lanes_w, dw, wg.o, wg.c * 9, inverse=True)


# --- the three kernels -------------------------------------------------------------------------

class _Chunks:
    """The scratch areas and the loop over chunks of images."""

    def __init__(self, ctx: LowerCtx, wg: Wino) -> None:
        self.ctx, self.wg = ctx, wg

    def area(self, name: str) -> ir.Value:
        return self.ctx.addr_ptr(self.ctx.scratch + self.wg.offset(name))

    def each(self, body: Callable[[ir.Value, ir.Value], None]) -> None:
        """body(first image, images in the chunk) over chunks of at most wg.chunk images."""
        b, e_max = self.ctx.b, self.wg.chunk
        with loop(b, 0, self.ctx.n, e_max, "wn") as n0:
            left = b.sub(self.ctx.n, n0)
            body(n0, imin(b, left, i32c(e_max)))

    def shared(self, label: str, fn: Callable[..., None], *args: ir.Value | None,
               **static: int) -> None:
        """fn(ctx, wg, *args, **static) as an internal noinline function defined once per
        module (the forward and gradient kernels of one layer share their transforms), called
        here with the args that are not None."""
        b, wg = self.ctx.b, self.wg
        # the key names everything the body depends on: sizes, chunk (layouts) and addresses
        key = (f"fedc.wino.{label}.m{wg.f.m}.c{wg.c}.o{wg.o}.h{wg.h}.w{wg.w}.p{wg.ph}{wg.pw}"
               f".t{wg.tmax}.s{self.ctx.scratch}"
               + "".join(f".{k}{v}" for k, v in sorted(static.items()))
               + "".join("_" if a is None else "a" for a in args))
        real = [a for a in args if a is not None]
        fn_ir = b.module.globals.get(key)
        if fn_ir is None:
            fn_ir = ir.Function(b.module, ir.FunctionType(ir.VoidType(), [a.type for a in real]),
                                key)
            fn_ir.linkage = "internal"
            fn_ir.attributes.add("noinline")
            inner = type(b)(fn_ir.append_basic_block("entry"))  # native builds' builder too
            params = iter(fn_ir.args)
            fn(replace(self.ctx, b=inner), wg, *[None if a is None else next(params)
                                                 for a in args], **static)
            inner.ret_void()
        b.call(fn_ir, real)

    def to_last(self, src: ir.Value, n0: ir.Value, e: ir.Value, side: str, dst: str,
                inverse: bool = False) -> None:
        """Images n0 … n0+e−1 of src (NCHW: the convolution's input side "in" or output side
        "out") into area dst[0 … e−1] as the transforms read them, or back (`inverse`)."""
        b, wg = self.ctx.b, self.wg
        ch, plane = (wg.c, wg.h * wg.w) if side == "in" else (wg.o, wg.ho * wg.wo)
        first = gep(b, src, b.mul(n0, i32c(ch * plane)))
        if wg.image_lanes and not inverse:
            self.shared("lanes", image_lanes, first, e, self.area(dst), out=int(side == "out"))
        else:
            self.shared("last", _to_last, first, e, self.area(dst), out=int(side == "out"),
                        inverse=inverse)

    def products(self, kind: gemm.Kind, e: ir.Value, a: str, bmat: str, c: str,
                 n: int, k: int, accumulate: bool = False, a_packed: bool = False,
                 b_packed: bool = False) -> None:
        """The a² GEMMs of one chunk, area by area (emit_matmul's n and k)."""
        b, wg = self.ctx.b, self.wg
        t = b.mul(e, i32c(wg.tiles))
        rows = {"v": wg.cells_stride(wg.c), "z": wg.cells_stride(wg.o), "dv": wg.cells_stride(wg.c),
                "u": wg.u_stride}
        with loop(b, 0, wg.xis, 1, "xi") as xi:  # a loop, not a² call sites: module size
            gemm.emit_matmul(b, kind=kind, m=t, n=n, k=k,
                             a=gep(b, self.area(a), b.mul(xi, i32c(rows[a]))),
                             bmat=gep(b, self.area(bmat), b.mul(xi, i32c(rows[bmat]))),
                             c=gep(b, self.area(c), b.mul(xi, i32c(rows[c]))),
                             scratch=self.area("gemm"), accumulate=accumulate,
                             madd=self.ctx.madd, a_packed=a_packed, b_packed=b_packed)


def image_lanes(ctx: LowerCtx, wg: Wino, src: ir.Value, e: ir.Value, area: ir.Value, *,
                out: int) -> None:
    """area[g][c][p][l] = image 4g + l of src (NCHW, e images), channel c, pixel p: the
    transforms' vectors then run over four images. A last group of fewer than four repeats
    its last image (those rows of the products are computed, never stored)."""
    b = ctx.b
    ch, hw = (wg.o, wg.ho * wg.wo) if out else (wg.c, wg.h * wg.w)
    last = b.sub(e, i32c(1))
    with loop(b, 0, ceil_div(b, e, LANES), 1, "lq") as q, loop(b, 0, ch, 1, "lc") as c, \
            loop(b, 0, hw, LANES, "lp") as p:
        rows = []
        for lane in range(LANES):
            i = b.add(b.mul(q, i32c(LANES)), i32c(lane))
            i = imin(b, i, last)
            rows.append(load4(b, src, b.add(b.mul(b.add(b.mul(i, i32c(ch)), c), i32c(hw)), p)))
        first = b.mul(b.add(b.mul(b.add(b.mul(q, i32c(ch)), c), i32c(hw)), p), i32c(LANES))
        for j, v in enumerate(transpose4(b, rows)):
            store4(b, v, area, b.add(first, i32c(j * LANES)))


def _to_last(ctx: LowerCtx, wg: Wino, src: ir.Value, e: ir.Value, area: ir.Value, *, out: int,
             inverse: int) -> None:
    """channels_last on each image; padded, row by row into the zero-bordered grid (zeroed
    first) or back out of it."""
    b = ctx.b
    if out:
        ch, (rows, width), (grid_h, grid_w), at0 = wg.o, (wg.ho, wg.wo), wg.grid_out, 0
    else:
        ch, (rows, width), (grid_h, grid_w) = wg.c, (wg.h, wg.w), wg.grid_in
        at0 = wg.ph * grid_w + wg.pw if wg.padded else 0
    plane = rows * width
    with loop(b, 0, e, 1, "wl") as i:
        nchw = gep(b, src, b.mul(i, i32c(ch * plane)))
        grid = gep(b, area, b.mul(i, i32c(ch * grid_h * grid_w)))
        if not wg.padded:
            channels_last(b, grid if inverse else nchw, nchw if inverse else grid, ch, plane,
                          inverse=bool(inverse))
        else:
            if not inverse:
                with loop(b, 0, ch * grid_h * grid_w, LANES, "wz") as j:
                    store4(b, zero(), grid, j)
            with loop(b, 0, rows, 1, "wr") as y:
                row = gep(b, nchw, b.mul(y, i32c(width)))
                cells = gep(b, grid, b.mul(b.add(i32c(at0), b.mul(y, i32c(grid_w))), i32c(ch)))
                channels_last(b, cells if inverse else row, row if inverse else cells, ch,
                              width, inverse=bool(inverse), stride=plane)


def forward(ctx: LowerCtx, wg: Wino, x: ir.Value, w: ir.Value, bias: ir.Value | None,
            out: ir.Value) -> None:
    ch = _Chunks(ctx, wg)
    ch.shared("kt", kernel_transform, w, ch.area("u"), ch.area("wt"), transposed=0)
    lanes = int(wg.image_lanes)

    def chunk(n0: ir.Value, e: ir.Value) -> None:
        ch.to_last(x, n0, e, "in", "img1")
        ch.shared("in", to_cells, ch.area("img1"), e, ch.area("v"), out=0, lanes=lanes)
        ch.products("nn", e, "v", "u", "z", n=wg.o, k=wg.c, a_packed=bool(lanes))
        ch.shared("out", output_transform, ch.area("z"), e, bias, ch.area("img2"))
        ch.to_last(out, n0, e, "out", "img2", inverse=True)
    ch.each(chunk)


def grad_input(ctx: LowerCtx, wg: Wino, dy: ir.Value, w: ir.Value, dx: ir.Value) -> None:
    ch = _Chunks(ctx, wg)
    # dV = Z · Uᵀ as "nn"
    ch.shared("kt", kernel_transform, w, ch.area("u"), ch.area("wt"), transposed=1)
    lanes = int(wg.image_lanes)

    def chunk(n0: ir.Value, e: ir.Value) -> None:
        ch.to_last(dy, n0, e, "out", "img1")
        ch.shared("outT", to_cells, ch.area("img1"), e, ch.area("z"), out=1, lanes=lanes)
        ch.products("nn", e, "z", "u", "dv", n=wg.c, k=wg.o, a_packed=bool(lanes))
        ch.shared("inT", input_adjoint, ch.area("dv"), e, ch.area("img2"))
        ch.to_last(dx, n0, e, "in", "img2", inverse=True)
    ch.each(chunk)


def grad_weight(ctx: LowerCtx, wg: Wino, x: ir.Value, dy: ir.Value, dw: ir.Value) -> None:
    ch, b = _Chunks(ctx, wg), ctx.b
    du = ch.area("u")
    packed = int(wg.o % gemm.NR == 0)  # Z straight into the tn product's B panels
    with loop(b, 0, wg.xis * wg.u_stride, LANES, "wz") as j:
        store4(b, zero(), du, j)

    def chunk(n0: ir.Value, e: ir.Value) -> None:
        ch.to_last(x, n0, e, "in", "img1")
        ch.shared("in", to_cells, ch.area("img1"), e, ch.area("v"), out=0)
        ch.to_last(dy, n0, e, "out", "img2")
        ch.shared("outT", to_cells, ch.area("img2"), e, ch.area("z"), out=1, packed=packed)
        ch.products("tn", e, "v", "z", "u", n=wg.o, k=wg.c, accumulate=True,
                    b_packed=bool(packed))
    ch.each(chunk)
    ch.shared("ktT", kernel_adjoint, du, dw, ch.area("wt"))
