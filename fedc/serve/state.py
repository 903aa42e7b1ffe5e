"""Strategy state ⇄ bytes: a stateful strategy's non-option fields (momenta, step counts) as .npz.

FedAvgM's velocity or FedAdam's moments must survive a restart, or a resumed run would
aggregate differently from an uninterrupted one. A strategy's options are its dataclass init
fields; everything else (``init=False``) is state, saved with each global model version.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np

from ..fl.strategies import Strategy


def strategy_state(strategy: Strategy) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for f in dataclasses.fields(strategy):  # type: ignore[arg-type]
        if f.init:
            continue
        value = getattr(strategy, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            scalars[f.name] = value.item() if isinstance(value, np.generic) else value
    buf = io.BytesIO()
    arrays["__scalars__"] = np.array(json.dumps(scalars))
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def restore_strategy(strategy: Strategy, blob: bytes | None) -> None:
    """Put saved state back into a strategy (None: keep its fresh state)."""
    if blob is None:
        return
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        for name, value in json.loads(str(npz["__scalars__"])).items():
            setattr(strategy, name, value)
        for name in npz.files:
            if name != "__scalars__":
                setattr(strategy, name, npz[name].copy())
