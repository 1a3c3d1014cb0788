"""Name -> tower builder. A tower is an nn.Module with `out_dim` and `forward(x, lengths=None)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

_TOWERS: dict[str, Callable[..., nn.Module]] = {}


def register_tower(name: str) -> Callable:
    """Decorator: register a tower builder under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _TOWERS:
            raise ValueError(f"tower {name!r} registered twice")
        _TOWERS[name] = fn
        return fn

    return wrap


def list_towers() -> list[str]:
    """Registered tower names."""
    return sorted(_TOWERS)


def build_tower(name: str, **params) -> nn.Module:
    """Build a registered tower; unknown names or parameters raise ValueError naming them."""
    if name not in _TOWERS:
        raise ValueError(f"unknown tower {name!r}; registered: {', '.join(list_towers())}")
    fn = _TOWERS[name]
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        bad = [k for k in params if k not in sig.parameters]
        if bad:
            raise ValueError(f"tower {name!r}: unknown parameters {bad}; accepted: {list(sig.parameters)}")
    tower = fn(**params)
    if not hasattr(tower, "out_dim"):
        raise TypeError(f"tower {name!r} has no out_dim")
    return tower
