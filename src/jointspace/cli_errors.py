"""How every command reports an expected user error: one red line naming it, exit code 2, no traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer
from rich.console import Console


def friendly(console: Console) -> Callable[[Callable], Callable]:
    """Decorator for every typer command: config, data, non-finite-loss, failed-grid, file and value errors ->
    one line, exit 2."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from jointspace.config import ConfigError, RunsFailed
            from jointspace.data.shards import DataError
            from jointspace.engine import NonFiniteLossError

            try:
                return fn(*args, **kwargs)
            except (ConfigError, DataError, NonFiniteLossError, RunsFailed, FileExistsError, FileNotFoundError,
                    ValueError) as err:
                console.print(f"[bold red]error:[/] {type(err).__name__}: {err}", markup=True, highlight=False)
                raise typer.Exit(2) from None

        return wrapper

    return decorate
