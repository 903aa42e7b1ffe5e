"""Locates the data files fedc ships (grammar, runtimes, templates) in a wheel or a checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `name` (grammar, runtime, templates): in the wheel, or at the checkout root."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fedc installation is missing its {name}/ folder")
