"""Sliding-window geometry shared by convolution and pooling: attrs → Window, numpy windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._lazy import np
from ..ir import BATCH, f32
from . import ShapeError
from .surface import NONNEG_INT, POS_INT, SurfaceError

Pair = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """A window sliding over 1-D or 2-D spatial dims, always described in 2-D: a 1-D window
    has height 1, kernel height 1, stride 1 and no vertical padding."""

    rank: int  # 1 or 2 spatial dims
    size: Pair  # input (H, W)
    kernel: Pair
    stride: Pair
    padding: Pair

    @classmethod
    def of(cls, size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
           padding: tuple[int, ...]) -> Window:
        rank = len(size)
        if rank == 1:
            return cls(1, (1, size[0]), (1, kernel[0]), (1, stride[0]), (0, padding[0]))
        return cls(2, _pair(size), _pair(kernel), _pair(stride), _pair(padding))

    @property
    def out(self) -> Pair:
        return (_out(self.size[0], self.kernel[0], self.stride[0], self.padding[0]),
                _out(self.size[1], self.kernel[1], self.stride[1], self.padding[1]))

    @property
    def out_spatial(self) -> tuple[int, ...]:
        """The output's spatial shape in the window's own rank."""
        return self.out if self.rank == 2 else (self.out[1],)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def plane(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def out_plane(self) -> int:
        return self.out[0] * self.out[1]

    def validate(self, op: str, what: str = "kernel") -> None:
        """Raise ShapeError if the window does not fit the padded input."""
        dims = ("height", "width") if self.rank == 2 else ("", "length")
        for d in range(2 - self.rank, 2):
            if self.stride[d] < 1 or self.kernel[d] < 1 or self.padding[d] < 0:
                raise ShapeError(f"{op} needs kernel and stride ≥ 1 and padding ≥ 0 but got "
                                 f"{self.describe()}")
            padded = self.size[d] + 2 * self.padding[d]
            if self.kernel[d] > padded:
                raise ShapeError(
                    f"{op}: {what} {self.kernel_text()} is larger than the padded input: "
                    f"{dims[d]} {self.size[d]} + 2·padding {self.padding[d]} = {padded}")

    def kernel_text(self) -> str:
        return f"{self.kernel[0]}×{self.kernel[1]}" if self.rank == 2 else str(self.kernel[1])

    def describe(self) -> str:
        pick = (lambda p: f"({p[0]}, {p[1]})") if self.rank == 2 else (lambda p: str(p[1]))
        return (f"kernel_size={pick(self.kernel)}, stride={pick(self.stride)}, "
                f"padding={pick(self.padding)}")


def _pair(t: tuple[int, ...]) -> Pair:
    return int(t[0]), int(t[1])


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1 if s > 0 else 0


def spatial_of(op: str, shape: tuple[int, ...], rank: int, what: str = "input") -> None:
    """Check a per-example shape is [channels, *spatial] with `rank` spatial dims."""
    want = "f32[N, channels, length]" if rank == 1 else "f32[N, channels, height, width]"
    if len(shape) != rank + 1:
        raise ShapeError(f"{op} expects {what} of type {want} but got "
                         f"{f32(BATCH, *shape)}")


# --- surface arguments: kernel_size=3 or kernel_h=3, kernel_w=1, … ---------------------------

_PER_DIM = (("kernel", "kernel_size", POS_INT), ("stride", "stride", POS_INT),
            ("padding", "padding", NONNEG_INT))


def window_spec(rank: int) -> list[tuple[str, str, Any]]:
    """bind() triples for the per-dimension window keywords of a 2-D op (none for 1-D)."""
    if rank == 1:
        return []
    return [(f"{key}_{d}", kind, None) for key, _, kind in _PER_DIM for d in "hw"]


def window_args(op: str, rank: int, vals: dict[str, Any],
                stride_is_kernel: bool = False) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, padding) per spatial dim from bound arguments: a per-dimension keyword
    (kernel_h) overrides the shared one (kernel_size); a missing stride is 1, or the kernel
    size with stride_is_kernel (pooling)."""
    out: list[tuple[int, ...]] = []
    for key, shared, _ in _PER_DIM:
        dims = []
        for axis, d in enumerate("hw"[2 - rank:]):
            v = vals.get(f"{key}_{d}") if rank == 2 else None
            v = vals.get(shared) if v is None else v
            if v is None and key == "stride":
                v = out[0][axis] if stride_is_kernel else 1
            if v is None:
                extra = f" (or {key}_h and {key}_w)" if rank == 2 else ""
                raise SurfaceError(f"{op} is missing its argument {shared!r}{extra}")
            dims.append(int(v))
        out.append(tuple(dims))
    return tuple(out)


# --- numpy: windows of a (padded) batch and their adjoint ------------------------------------


def as2d(x: np.ndarray, rank: int) -> np.ndarray:
    """[N, C, L] → [N, C, 1, L]; 2-D arrays pass through."""
    return x[:, :, None, :] if rank == 1 else x


def from2d(x: np.ndarray, rank: int) -> np.ndarray:
    return x[:, :, 0, :] if rank == 1 else x


def windows(x: np.ndarray, win: Window, fill: float = 0.0) -> np.ndarray:
    """[N, C, H, W] → [N, C, Ho, Wo, kh, kw]: every window of x padded with `fill`."""
    (ph, pw), (sh, sw) = win.padding, win.stride
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    v = np.lib.stride_tricks.sliding_window_view(xp, win.kernel, axis=(2, 3))
    ho, wo = win.out
    return v[:, :, : (ho - 1) * sh + 1: sh, : (wo - 1) * sw + 1: sw]


def unwindow(cols: np.ndarray, win: Window) -> np.ndarray:
    """The adjoint of `windows`: [N, C, Ho, Wo, kh, kw] summed back onto [N, C, H, W]."""
    (h, w), (ph, pw), (sh, sw) = win.size, win.padding, win.stride
    ho, wo = win.out
    n, c = cols.shape[:2]
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            out[:, :, i: i + (ho - 1) * sh + 1: sh, j: j + (wo - 1) * sw + 1: sw] += \
                cols[:, :, :, :, i, j]
    return out[:, :, ph: ph + h, pw: pw + w]
