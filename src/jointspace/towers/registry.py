"""Name -> tower builder. A tower is an nn.Module with `out_dim` and `forward(x, lengths=None)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from jointspace.errors import UsageError

_TOWERS: dict[str, Callable[..., nn.Module]] = {}


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()  # the "default" of a tower parameter the config must set
_TOKENIZERS: dict[str, Callable[[dict], str]] = {}
_PRETRAINED: dict[str, Callable[[], str]] = {}


def register_tower(name: str, tokenizer: Callable[[dict], str] | None = None,
                   pretrained_tags: Callable[[], str] | None = None) -> Callable:
    """Decorator: register a tower builder under `name`.

    `tokenizer(params)` gives the spec of the tokenizer a text tower needs (see kinds.text.make_tokenizer);
    towers without one read OpenCLIP's BPE ids. `pretrained_tags()` says which pretrained weights the
    tower takes by name (for `jointspace towers`).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _TOWERS:
            raise UsageError(f"tower {name!r} registered twice")
        _TOWERS[name] = fn
        if tokenizer is not None:
            _TOKENIZERS[name] = tokenizer
        if pretrained_tags is not None:
            _PRETRAINED[name] = pretrained_tags
        return fn

    return wrap


def list_towers() -> list[str]:
    """Registered tower names."""
    return sorted(_TOWERS)


def build_tower(name: str, **params) -> nn.Module:
    """Build a registered tower; unknown names or parameters raise ValueError naming them."""
    if name not in _TOWERS:
        raise UsageError(f"unknown tower {name!r}; registered: {', '.join(list_towers())}")
    fn = _TOWERS[name]
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        bad = [k for k in params if k not in sig.parameters]
        if bad:
            raise UsageError(f"tower {name!r}: unknown parameters {bad}; accepted: {list(sig.parameters)}")
    tower = fn(**params)
    if not hasattr(tower, "out_dim"):
        raise TypeError(f"tower {name!r} has no out_dim")
    return tower


def tower_parameters(name: str) -> dict[str, object] | None:
    """Constructor parameters of tower `name` with their defaults (None when it takes any keyword)."""
    if name not in _TOWERS:
        raise UsageError(f"unknown tower {name!r}; registered: {', '.join(list_towers())}")
    sig = inspect.signature(_TOWERS[name])
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {k: (REQUIRED if p.default is inspect.Parameter.empty else p.default) for k, p in sig.parameters.items()}


def tower_summary(name: str) -> str:
    """The first line of a tower builder's docstring."""
    return (inspect.getdoc(_TOWERS[name]) or "").splitlines()[0] if name in _TOWERS else ""


def tower_pretrained(name: str) -> str:
    """What pretrained weights tower `name` takes by name ('' when none)."""
    fn = _PRETRAINED.get(name)
    return fn() if fn is not None else ""


def tower_tokenizer(name: str, params: dict) -> str | None:
    """Tokenizer spec the tower `name` built with `params` reads its ids with (None: OpenCLIP BPE)."""
    fn = _TOKENIZERS.get(name)
    return fn(params) if fn is not None else None
