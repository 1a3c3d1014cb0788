"""Metric logging: JSONL always, plus TensorBoard (default) or W&B in offline mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jointspace.errors import require
from jointspace.run_dir import RunDir


class Tracker:
    """Writes each record to the run's metrics.jsonl and to the chosen tracker."""

    def __init__(self, run_dir: Path, backend: str = "tensorboard", config: dict | None = None, name: str = "run",
                 enabled: bool = True):
        self.path = RunDir(run_dir).metrics
        self.enabled = enabled  # False on every data-parallel rank but the first
        backend = backend if enabled else "none"
        self.backend = backend  # config `tracker`: tensorboard, wandb or none (metrics.jsonl always)
        self._tb = None
        self._wandb = None
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        elif backend == "wandb":
            wandb = require("wandb", "wandb", "the wandb tracker")
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project="jointspace", name=name, dir=str(run_dir), config=config or {},
                                     mode="offline")

    def keep_until(self, step: int) -> None:
        """Drop logged records after `step` (a resumed run re-trains those steps: none is logged twice)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut short by a kill mid-write
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def log(self, record: dict) -> None:
        """Append one record {step, epoch, split, metric: value...}."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        scalars = {k: v for k, v in record.items() if k not in ("step", "epoch", "split") and isinstance(v, (int, float))}
        prefix = record.get("split", "train")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
