"""Visualisation: training curves, joint embedding maps, retrieval grids and HTML run reports."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "plot_curves": "plots",
    "plot_umap": "plots",
    "plot_retrieval_grid": "plots",
    "plot_confusion": "plots",
    "top_k_indices": "plots",
    "query_indices": "plots",
    "write_report": "report",
    "metrics_table": "report",
    "select_pairs": "report",
}

__all__ = [
    "metrics_table",
    "plot_confusion",
    "plot_curves",
    "plot_retrieval_grid",
    "plot_umap",
    "query_indices",
    "select_pairs",
    "top_k_indices",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import submodules lazily so that `metrics_table` does not pull in matplotlib."""
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
