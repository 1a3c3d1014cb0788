"""The project's own error types, below every other module.

Every error a user can act on (a wrong config field, a damaged shard, a full disk, a folder the command will
not replace, a missing optional extra...) is a `JointspaceError`; the CLI (`cli_errors.friendly`) prints
those as one line on stderr and exits 2. Anything else is a bug or an unexpected state and keeps its
traceback. Each subclass also derives from the builtin error it refines (`UsageError` is a `ValueError`,
`MissingExtra` an `ImportError`...), so code that catches the builtin still catches it."""

from __future__ import annotations

import importlib
from types import ModuleType


class JointspaceError(Exception):
    """An expected error with a message that says what to change; the CLI shows it as one line."""


class UsageError(JointspaceError, ValueError):
    """A value the user gave (an argument, a config value, a query) cannot be used; the message names it."""


# The optional extras (pyproject.toml's [project.optional-dependencies], but dev and all): the top-level
# modules each one installs, and the distribution each module comes from. tests/test_extras.py checks this
# against pyproject.toml. Everything else the package imports is a core dependency.
EXTRAS: dict[str, dict[str, str]] = {
    "serve": {"fastapi": "fastapi", "starlette": "starlette", "uvicorn": "uvicorn",
              "multipart": "python-multipart", "fastapi_offline": "fastapi-offline"},
    "augment": {"diffusers": "diffusers"},
    "sweep": {"optuna": "optuna"},
    "export": {"onnx": "onnx", "onnxruntime": "onnxruntime"},
    "wandb": {"wandb": "wandb"},
    "parquet": {"pyarrow": "pyarrow"},
    "milvus": {"pymilvus": "pymilvus", "milvus_lite": "milvus-lite"},
    "audit": {"cleanlab": "cleanlab"},
}


def extra_of(module: str) -> str | None:
    """The optional extra that installs `module` (or a submodule of it); None for anything else."""
    root = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if root in modules), None)


class MissingExtra(JointspaceError, ImportError):
    """A command needs an optional extra that is not installed; the message names it and its pip line."""

    def __init__(self, extra: str, module: str, what: str):
        root = module.split(".")[0]
        package = EXTRAS.get(extra, {}).get(root, root)
        super().__init__(f"{what} needs the optional extra '{extra}' ({package} is not installed): "
                         f"pip install 'jointspace[{extra}]'", name=root)
        self.extra = extra


def require(extra: str, module: str, what: str) -> ModuleType:
    """Import `module` (one that the optional `extra` installs) or raise MissingExtra naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.split(".")[0] != err.name.split(".")[0]:
            raise  # the extra is there, but something it needs is broken: show the traceback
        raise MissingExtra(extra, module, what) from None
