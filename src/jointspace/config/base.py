"""What every config section shares: the strict base model, the config's errors, renamed keys."""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
)

from jointspace.errors import JointspaceError, UsageError

M = TypeVar("M", bound=BaseModel)


class ConfigError(UsageError):
    """A configuration file or override is wrong; the message names the field."""


class RunsFailed(JointspaceError, RuntimeError):
    """Some runs of a grid failed (the others finished and were tabulated); the message names each."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def renamed_key(raw: Any, old: str, new: str, section: str) -> Any:
    """A config section as written before its key `old` was named `new` (config files, run folders'
    config.yaml): read as `new`, with a one-line FutureWarning; both keys at once is an error naming them."""
    if not isinstance(raw, dict) or old not in raw:
        return raw
    if new in raw:
        raise UsageError(f"{section}.{old} is the former name of {section}.{new}: give only {section}.{new}")
    warnings.warn(f"{section}.{old} is now called {section}.{new} (the old name is still read)", FutureWarning,
                  stacklevel=2)
    return {(new if k == old else k): v for k, v in raw.items()}
