"""The loss registry: a name (config `loss.name`) -> a `PairLoss` class, whose `Params` model checks
`loss.params`. The registering lines are in `losses/__init__.py`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from jointspace.errors import UsageError
from jointspace.losses.base import LossParams, PairLoss

LOSSES: dict[str, type[PairLoss]] = {}


def register(name: str, cls: type[PairLoss]) -> None:
    """Make `cls` the loss called `name`."""
    if name in LOSSES:
        raise UsageError(f"loss {name!r} is registered twice")
    LOSSES[name] = cls


def loss_class(name: str) -> type[PairLoss]:
    """The registered loss `name`; an unknown name lists the choices."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_params(name: str, params: dict[str, Any] | LossParams | None) -> LossParams:
    """`params` checked by loss `name`'s params model; errors name `loss.params.<field>`."""
    cls = loss_class(name)
    if isinstance(params, cls.Params):
        return params
    try:
        return cls.Params.model_validate(params or {})
    except ValidationError as err:
        fields = []
        for e in err.errors():
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            fields.append(f"loss.params.{'.'.join(str(p) for p in e['loc'])}: {msg}")
        raise UsageError(f"loss {name!r}: " + "; ".join(fields)) from None


def build_pair_loss(name: str, params: dict[str, Any] | LossParams | None = None,
                    local_loss: bool = False) -> PairLoss:
    """The loss `name` with its checked `params`; `local_loss` as in `PairLoss`."""
    return loss_class(name)(loss_params(name, params), local_loss=local_loss)


def extra_refusal(name: str) -> str:
    """The line refusing extra candidates per anchor (data.hard_negatives) to a loss that cannot take them."""
    able = sorted(n for n, cls in LOSSES.items() if cls.takes_extra)
    return (f"data.hard_negatives: the loss {name!r} cannot take extra candidates per anchor; use one that "
            f"can ({', '.join(able)}) or drop data.hard_negatives")
