"""fedc's federation server: bundle + SQLite state → HTTP rounds for edge clients (`fedc serve`)."""

from __future__ import annotations

from ..diagnostics import FedcError


class ServeError(FedcError):
    """The server cannot start or a server request failed (bad state file, unreachable URL…)."""
