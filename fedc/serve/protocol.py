"""Binary framing of the wire protocol: bytes ⇄ Frame(kind, meta JSON, float32 values).

A frame (docs/protocol.md) is a 16-byte little-endian header, a UTF-8 JSON object of metadata
padded to 4 bytes, then `count` float32 values. Weights never travel as JSON numbers: a float32
vector is copied byte for byte, so what a client trained is exactly what the server averages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"FEDC"
VERSION = 1
KINDS = {"task": 1, "update": 2, "model": 3}
KIND_NAMES = {v: k for k, v in KINDS.items()}
DTYPE_F32 = 1
HEADER = struct.Struct("<4sBBBBII")  # magic, version, kind, dtype, reserved, meta_len, count
MAX_META = 16384
CONTENT_TYPE = "application/x-fedc-frame"


class ProtocolError(Exception):
    """A request the server refuses: an HTTP status, a stable code and a reason for humans."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True, eq=False)  # holds an array
class Frame:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    dtype: int = DTYPE_F32


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def encode(kind: str, meta: dict[str, Any], values: np.ndarray | None = None) -> bytes:
    """A frame's bytes; `values` is cast to little-endian float32."""
    body = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    vals = np.zeros(0, "<f4") if values is None else np.ascontiguousarray(values, "<f4").ravel()
    head = HEADER.pack(MAGIC, VERSION, KINDS[kind], DTYPE_F32, 0, len(body), vals.size)
    return head + body + b"\0" * (_pad4(len(body)) - len(body)) + vals.tobytes()


def decode(data: bytes) -> Frame:
    """Parse and check a frame's structure; ProtocolError (400/422) with the reason if bad."""
    if len(data) < HEADER.size:
        raise ProtocolError(400, "truncated", f"a frame has a {HEADER.size}-byte header, "
                                              f"got {len(data)} bytes")
    magic, version, kind, dtype, _reserved, meta_len, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(400, "bad_magic", "not a fedc frame (the body must start with FEDC)")
    if version != VERSION:
        raise ProtocolError(400, "bad_version", f"frame version {version} is not supported "
                                                f"(this server speaks {VERSION})")
    if kind not in KIND_NAMES:
        raise ProtocolError(400, "bad_kind", f"unknown frame kind {kind}")
    if dtype != DTYPE_F32:
        raise ProtocolError(422, "bad_dtype", f"values must be float32 (dtype code "
                                              f"{DTYPE_F32}), got dtype code {dtype}")
    if meta_len > MAX_META:
        raise ProtocolError(400, "bad_meta", f"metadata is {meta_len} bytes; at most {MAX_META}")
    start = HEADER.size + _pad4(meta_len)
    want = start + 4 * count
    if len(data) != want:
        what = "truncated" if len(data) < want else "trailing_bytes"
        raise ProtocolError(400, what, f"the header announces {count} values ({want} bytes in "
                                       f"all) but the body has {len(data)} bytes")
    meta = _meta(data[HEADER.size: HEADER.size + meta_len])
    values = np.frombuffer(data, "<f4", count, start).astype(np.float32)
    return Frame(KIND_NAMES[kind], meta, values, dtype)


def _meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        raise ProtocolError(400, "bad_meta", "frame metadata is not UTF-8 JSON") from None
    if not isinstance(meta, dict):
        raise ProtocolError(400, "bad_meta", "frame metadata must be a JSON object")
    return meta


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def meta_int(meta: dict[str, Any], key: str, low: int, high: int) -> int:
    """An integer field of the metadata within [low, high], or a 400 naming it."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(400, "bad_meta", f"metadata field {key!r} must be an integer, "
                                             f"got {value!r}")
    if not low <= value <= high:
        raise ProtocolError(422, "bad_meta", f"metadata field {key!r} must be in "
                                             f"{low}..{high}, got {value}")
    return value
