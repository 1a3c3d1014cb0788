"""How every command reports an expected user error: one red line on stderr naming it, exit code 2, no
traceback. Standard output stays for results (`search --json > hits.json` never captures an error)."""

from __future__ import annotations

import functools
import inspect
import re
import shlex
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from jointspace.errors import JointspaceError, MissingExtra, extra_of
from jointspace.preemption import PREEMPTED_EXIT, Preempted

errors = Console(stderr=True)


def one_line(err: BaseException) -> str:
    """`Type: message` on one line (a message of several lines is joined with '; ')."""
    text = re.sub(r"\s+", " ", "; ".join(part.strip() for part in str(err).splitlines() if part.strip()))
    return f"{type(err).__name__}: {text}"


def report(err: BaseException) -> None:
    """Print one error line on stderr."""
    errors.print(f"[bold red]error:[/] {escape(one_line(err))}", markup=True, highlight=False, soft_wrap=True)


def said_stopped(stop: BaseException, resumable: bool) -> None:
    """The one line of a preempted command: where it stopped, its checkpoint, the command that goes on."""
    argv = ["jointspace", *sys.argv[1:]]
    again = shlex.join(argv + (["--resume"] if resumable and "--resume" not in argv else []))
    errors.print(f"[bold yellow]preempted:[/] {escape(one_line(stop).split(': ', 1)[1])}; continue with: "
                 f"{escape(again)}", markup=True, highlight=False, soft_wrap=True)


def command_name(fn: Callable) -> str:
    """`jointspace <group> <command>` of a command function named <group>_<command> (`eval_`: eval)."""
    return "jointspace " + fn.__name__.rstrip("_").replace("_", " ")


def friendly(console: Console | None = None) -> Callable[[Callable], Callable]:
    """Decorator for every typer command: the project's own errors (`JointspaceError`: config, data, usage,
    non-finite loss, failed grid, full disk, a missing optional extra...) and the operating system's
    (`OSError`: a missing file, a denied permission) -> one line on stderr, exit 2. A module of an optional
    extra that is not installed (imported anywhere below the command) is said the same way, as the extra
    to install. Anything else is a bug and keeps its traceback.
    (`console` is the command's output console; errors never go there.)"""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Preempted as stop:
                said_stopped(stop, "resume" in inspect.signature(fn).parameters)
                raise typer.Exit(PREEMPTED_EXIT) from None
            except (JointspaceError, OSError) as err:
                report(err)
                raise typer.Exit(2) from None
            except ModuleNotFoundError as err:
                extra = extra_of(err.name or "")
                if extra is None:
                    raise  # not an optional module: a broken install or a bug, with its traceback
                report(MissingExtra(extra, err.name, command_name(fn)))
                raise typer.Exit(2) from None

        return wrapper

    return decorate
