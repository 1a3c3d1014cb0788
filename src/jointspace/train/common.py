"""Pieces shared by the supervised loops (fusion classifiers, metric learning): run folder, data,
peak memory, the done marker that `jointspace compare` uses to skip finished runs."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from jointspace.config import RunConfig, save_config
from jointspace.data.dataset import SplitData, load_split, steps_per_epoch
from jointspace.runs import CONFIG, prepare_run_dir
from jointspace.train.checkpoint import atomic_write_text
from jointspace.train.loop import NonFiniteLossError, prepare_data, split_kwargs
from jointspace.train.tracking import Tracker

DONE = "done.json"


def start_run(cfg: RunConfig, overwrite: bool = False) -> Path:
    """Create the run folder (refusing to replace one unless `overwrite`) and write the resolved config."""
    run_dir = prepare_run_dir(cfg.run_dir, resume=False, overwrite=overwrite, can_resume=False)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    save_config(cfg, run_dir / CONFIG)
    return run_dir


def load_splits(cfg: RunConfig) -> tuple[dict, SplitData, SplitData | None, SplitData]:
    """dataset.json info and the train, val (None if absent) and evaluation (`eval.split`) splits."""
    info, train, val = prepare_data(cfg)
    test = load_split(cfg.data.path, cfg.eval.split, **split_kwargs(cfg), prep=train.prep)  # prepared as train
    return info, train, val, test


def n_classes_of(data: SplitData) -> int:
    """Number of classes: the dataset's class names, else the largest label + 1."""
    return max(len(data.class_names), int(data.labels.max()) + 1)


def steps_or_fail(n_samples: int, batch_size: int) -> int:
    """Optimizer steps per epoch (drop_last); a batch larger than the split is an error naming the field."""
    steps = steps_per_epoch(n_samples, batch_size)
    if steps == 0:
        raise ValueError(f"train.batch_size={batch_size} exceeds the {n_samples} training samples")
    return steps


def progress_bar(show: bool) -> Progress:
    """The rich progress bar of the training loops (epoch, steps, loss, time left)."""
    return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]:.4f}"),
                    TimeRemainingColumn(), disable=not show)


def clip_or_stop(params, loss: torch.Tensor, grad_clip: float | None, step: int, epoch: int,
                 tracker: Tracker) -> torch.Tensor:
    """Clip gradients; on a non-finite loss or gradient norm close the tracker and raise (nothing saved)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    if not torch.isfinite(loss) or not torch.isfinite(grad_norm):
        tracker.close()
        raise NonFiniteLossError(f"non-finite loss {float(loss)} / grad norm {float(grad_norm)} "
                                 f"at step {step + 1} (epoch {epoch + 1})")
    return grad_norm


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch dict."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block, in MB: the rise of the resident set size (high-water mark minus the size at
    start; Linux resets the mark through /proc/self/clear_refs, elsewhere getrusage's maxrss is used), and
    on CUDA torch.cuda.max_memory_allocated. The RSS rise is exact in a fresh process; in a process that
    already freed memory it can under-count what the allocator reuses."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start_kb = 0
        self._hwm = False

    def __enter__(self):  # -> Self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark to now
            self._hwm = _proc_status_kb("VmHWM") is not None
        except OSError:
            self._hwm = False
        self.start_kb = (_proc_status_kb("VmRSS") if self._hwm else None) or \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        peak_kb = (_proc_status_kb("VmHWM") if self._hwm else None) or \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.rss_mb = max(0, peak_kb - self.start_kb) / 1024
        self.peak_rss_mb = peak_kb / 1024
        self.cuda_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20
                        if self.device.type == "cuda" else None)

    def result(self) -> dict[str, float | None]:
        """{"peak_mem_mb": the CUDA peak on a GPU, else the RSS rise; plus both raw numbers}."""
        return {"peak_mem_mb": round(self.cuda_mb if self.cuda_mb is not None else self.rss_mb, 1),
                "rss_rise_mb": round(self.rss_mb, 1), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "cuda_peak_mb": None if self.cuda_mb is None else round(self.cuda_mb, 1)}


def write_done(run_dir: Path, summary: dict) -> None:
    """Write the run's summary as its done marker (atomically: present only when the run finished)."""
    atomic_write_text(Path(run_dir) / DONE, json.dumps(summary, indent=2))


def read_done(run_dir: Path) -> dict | None:
    """The summary of a finished run, or None when it has not finished."""
    path = Path(run_dir) / DONE
    return json.loads(path.read_text()) if path.exists() else None
