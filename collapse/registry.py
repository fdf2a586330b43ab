"""Registries of named variants (docs/STYLE.md principle 5): a committed name never changes meaning."""
from __future__ import annotations

from typing import Callable


def registrar(table: dict[str, Callable], what: str) -> Callable[[str], Callable]:
    """A ``register(name)`` decorator that adds to ``table`` and refuses a name registered twice."""
    def register(name: str):
        def deco(fn):
            if name in table:
                raise ValueError(f"{what} {name!r} is already registered")
            table[name] = fn
            return fn
        return deco
    return register
