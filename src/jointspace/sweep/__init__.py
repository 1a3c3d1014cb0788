"""Hyperparameter search over any task that validates per epoch (Optuna; see run.py)."""

from jointspace.sweep.run import run_sweep

__all__ = ["run_sweep"]
