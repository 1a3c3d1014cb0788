"""What a preemption is, below the config, the engine and the CLI: the signals a run can catch
(`signal_number`, `DEFAULT_SIGNALS`), the `Preempted` error a stopped run raises and its exit code
(`PREEMPTED_EXIT`). The config checks `train.preempt_signals` with `signal_number`, the engine
(`engine/preempt.py`: `PreemptWatch`) stops on them and raises `Preempted`, and the CLI
(`cli_errors.friendly`) prints it as one line and exits with PREEMPTED_EXIT."""

from __future__ import annotations

import signal

from jointspace.errors import JointspaceError, UsageError

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: try again later (what a requeued job does)
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_number(name: str) -> int:
    """SIGTERM / TERM / 15 -> the signal's number; anything else is a ValueError naming it."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    number = getattr(signal.Signals, text if text.startswith("SIG") else f"SIG{text}", None)
    if number is None or text in ("SIGKILL", "SIGSTOP", "KILL", "STOP"):
        raise UsageError(f"{name!r} is not a signal a run can catch (e.g. SIGTERM, SIGUSR1)")
    return int(number)


class Preempted(JointspaceError):
    """A run stopped by a preemption signal after writing a checkpoint; `--resume` continues it. (Not a
    RuntimeError: a sweep's caught trial errors must not swallow it.)"""

    def __init__(self, signal_name: str, step: int, total_steps: int, epoch: int, checkpoint: str):
        super().__init__(signal_name, step, total_steps, epoch, checkpoint)  # args: it pickles across processes
        self.signal_name, self.step, self.total_steps = signal_name, step, total_steps
        self.epoch, self.checkpoint = epoch, checkpoint

    def __str__(self) -> str:
        return (f"stopped by {self.signal_name} at step {self.step} of {self.total_steps} (epoch {self.epoch}); "
                f"checkpoint {self.checkpoint}")
