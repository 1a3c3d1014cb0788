"""Preemption: clusters and spot machines signal a job before they kill it (SIGTERM from Kubernetes, spot
instances and Slurm; SIGUSR1 with Slurm's `--signal=USR1@90`). While a run trains, those signals
(`train.preempt_signals`) only set a flag; the engine stops at the next step boundary (under torchrun,
every rank at the same step: they agree on log steps), writes a mid-epoch checkpoint and raises
`Preempted`, which the CLI prints as one line naming the checkpoint and the command that resumes, with
exit code PREEMPTED_EXIT. A second signal while the checkpoint is written is noted and changes nothing.
The signals, `Preempted` and its exit code are defined below the config and the CLI, in
jointspace.preemption; this module holds the watch.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

from jointspace.preemption import DEFAULT_SIGNALS, signal_number


class PreemptWatch:
    """While entered (in the main thread), the given signals set `requested` (the first one's name)
    instead of ending the process; the previous handlers come back on exit. Watches nest (a sweep's
    worker watches around the engine's): an inner one starts with what the outer one already heard, and
    what it heard goes back to the outer one on exit."""

    def __init__(self, names: Sequence[str] = DEFAULT_SIGNALS):
        self.numbers = [signal_number(n) for n in names]
        self.requested: str | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        self.requested = self.requested or signal.Signals(signum).name

    def __enter__(self) -> PreemptWatch:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for n in self.numbers:
                self._previous[n] = signal.signal(n, self._handle)
        for outer in self._outer():
            self.requested = self.requested or outer.requested
        return self

    def __exit__(self, *exc) -> None:
        for outer in self._outer():
            outer.requested = outer.requested or self.requested
        for n, handler in self._previous.items():
            signal.signal(n, handler)
        self._previous.clear()

    def _outer(self) -> list[PreemptWatch]:
        """The watches whose handlers this one replaced."""
        return [h.__self__ for h in self._previous.values() if isinstance(getattr(h, "__self__", None), PreemptWatch)]
