"""The training engine: one loop (AMP, accumulation, clipping, NaN stop, schedule, tracking, atomic
checkpoints, exact resume) that runs any task's objective, and the distributed setup."""

from jointspace.engine.loop import Engine, FitResult, NonFiniteLossError, Plan, autocast, fit, seed_everything
from jointspace.engine.objective import Objective, StepContext

__all__ = ["Engine", "FitResult", "NonFiniteLossError", "Objective", "Plan", "StepContext", "autocast", "fit",
           "seed_everything"]
