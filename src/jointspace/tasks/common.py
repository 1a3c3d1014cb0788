"""Pieces every task shares: its data (built-in sets synthesised on demand, splits prepared as the train
split was), its run folder and config, the engine's plan from `train:`, peak memory, and the done marker
that `jointspace compare` uses to skip finished runs."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from jointspace.config import RunConfig, TrainConfig, save_config
from jointspace.data.builtin import synth_size, synthesize
from jointspace.data.dataset import SplitData, load_split, steps_per_epoch
from jointspace.data.shards import INFO_FILE, DataError, read_info
from jointspace.data.source import Source
from jointspace.data.sources import load_sources, source_of
from jointspace.engine import Plan, seed_everything
from jointspace.engine.tracking import Tracker
from jointspace.errors import UsageError
from jointspace.kinds import Prep
from jointspace.run_dir import RunDir
from jointspace.runs import config_prep, run_prep
from jointspace.tasks.init_from import resolve_init


def ensure_dataset(cfg: RunConfig) -> Source:
    """The run's dataset; a built-in set is synthesised first when `data.path` is missing."""
    root, d = Path(cfg.data.path), cfg.data
    if not (d.urls or d.csv) and d.synth:
        if not root.exists():
            synthesize(d.synth, root, seed=cfg.seed, n=d.synth_size)
        elif (root / INFO_FILE).is_file():
            made = read_info(root).get("synth")
            if made is not None and (made.get("name"), made.get("n")) != (d.synth, synth_size(d.synth, d.synth_size)):
                raise DataError(f"data.path {root} holds the built-in set {made.get('name')} made with n="
                                f"{made.get('n')}, but the config asks data.synth={d.synth}, data.synth_size="
                                f"{d.synth_size}: point data.path at another folder, or remake this one with "
                                "`jointspace data synth ... --overwrite`")
    return source_of(cfg.data)


def split_kwargs(cfg: RunConfig, prep: Prep | None = None) -> dict:
    """load_split keyword arguments a run's config implies (label map, range scale), with `prep` (default:
    the config's, `runs.config_prep`: sizes and the text towers' tokenizers)."""
    d = cfg.data
    return {"modalities": d.modalities, "prep": prep or config_prep(cfg), "max_bad_fraction": d.max_bad_fraction,
            "label_map": d.label_map or None, "max_range": d.max_range}


def prepare_data(cfg: RunConfig, prep: Prep | None = None) -> tuple[dict, SplitData | None, SplitData | None]:
    """dataset.json info, and the train (None when streamed) and validation splits; validation is
    prepared as the train split was, and both as `prep` when given (a resumed run's recorded Prep, or
    the streamed train split's)."""
    root = ensure_dataset(cfg)
    info = root.info
    kw = split_kwargs(cfg, prep)
    if cfg.data.streaming:
        train = None
    elif cfg.data.sources:  # the train split mixes these folders; val/test stay those of data.path
        train = load_sources(cfg.data, "train", info.get("class_names"), **{**kw, "label_map": None})
    else:
        train = load_split(root, "train", **kw)
    fixed = train.prep if train is not None else prep
    val = load_split(root, "val", **split_kwargs(cfg, fixed)) if root.has_split("val") else None
    return info, train, val


def init_towers(cfg: RunConfig, resume: bool) -> tuple[RunConfig, dict | None]:
    """`model.init_from` / `towers.<m>.init_from` resolved against the data's modalities: the config with the
    source runs' tower configs filled in (saved as the run's config) and the weights to start from. A
    resumed run gets the same tower configs, and its weights from its checkpoint instead."""
    if not (cfg.model.init_from or any(t.init_from for t in cfg.model.towers.values())):
        return cfg, None
    stored = ensure_dataset(cfg).info["modalities"]
    cfg, init = resolve_init(cfg, {m: stored[m] for m in cfg.data.modalities if m in stored})
    return cfg, None if resume else init


def skipped(**splits: SplitData | None) -> dict:
    """{split: {n_skipped, reasons}} of the splits that lost samples (for run.json and the report)."""
    return {name: {"n_skipped": s.stats.n_missing, "reasons": s.stats.errors[:5]}
            for name, s in splits.items() if s is not None and s.stats.n_missing}


def start_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Create (or, to resume, keep) the run folder, write the resolved config, seed and set threads."""
    run_dir = RunDir(cfg.run_dir).create(resume, overwrite).path
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if not resume:
        save_config(cfg, RunDir(run_dir).config)
    seed_everything(cfg.seed)
    return run_dir


def plan_of(train: TrainConfig, steps_per_epoch: int, **changes) -> Plan:
    """The engine's plan for a run's `train:` section (`changes` override its fields)."""
    fields = {"steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * train.epochs,
              "log_every": train.log_every, "eval_every": train.eval_every, "checkpoint_every": train.checkpoint_every,
              "checkpoint_every_steps": train.checkpoint_every_steps, "keep_checkpoints": train.keep_checkpoints,
              "grad_clip": train.grad_clip, "amp": train.amp, "accum_steps": train.accum_steps,
              "preempt_signals": tuple(train.preempt_signals)}
    return Plan(**{**fields, **changes})


def tracker_of(cfg: RunConfig, run_dir: Path, enabled: bool = True) -> Tracker:
    """The run's metrics log (metrics.jsonl + TensorBoard or offline W&B, as `tracker:` says)."""
    return Tracker(run_dir, cfg.tracker if enabled else "none", cfg.model_dump(mode="json"), cfg.name, enabled=enabled)


def resumed_prep(cfg: RunConfig, resume: bool) -> Prep | None:
    """A resumed run's recorded Prep (None for a fresh run): its normalisation cannot change mid-run."""
    run = RunDir(cfg.run_dir)
    return run_prep(cfg, run.read_info()) if resume and run.has_info() else None


def load_splits(cfg: RunConfig, prep: Prep | None = None) -> tuple[dict, SplitData, SplitData | None, SplitData]:
    """dataset.json info and the train, val (None if absent) and evaluation (`eval.split`) splits."""
    info, train, val = prepare_data(cfg, prep)
    if not train.labelled:
        raise DataError(f"{cfg.data.urls or cfg.data.csv}: no labels (cls, a json field data.label_key, class "
                        f"folders or a label column); task {cfg.task} trains on labels")
    test = load_split(source_of(cfg.data), cfg.eval.split, **split_kwargs(cfg, train.prep))  # as train
    return info, train, val, test


def n_classes_of(data: SplitData) -> int:
    """Number of classes: the dataset's class names, else the largest label + 1."""
    return max(len(data.class_names), int(data.labels.max()) + 1)


def steps_or_fail(n_samples: int, batch_size: int) -> int:
    """Optimizer steps per epoch (drop_last); a batch larger than the split is an error naming the field."""
    steps = steps_per_epoch(n_samples, batch_size)
    if steps == 0:
        raise UsageError(f"train.batch_size={batch_size} exceeds the {n_samples} training samples")
    return steps


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


def epochs_to_fraction(run_dir: Path, key: str = "accuracy", fraction: float = 0.95) -> int | None:
    """The first epoch whose validation `key` reached `fraction` of the run's best (None: never logged)."""
    rows = RunDir(run_dir).read_metrics()
    curve = [(r["epoch"], r[key]) for r in rows if r.get("split") == "val" and key in r]
    if not curve:
        return None
    best = max(v for _, v in curve)
    return next(int(e) for e, v in curve if v >= fraction * best)


def write_done(run_dir: Path, summary: dict) -> None:
    """Write the run's summary as its done marker (atomically: present only when the run finished)."""
    RunDir(run_dir).write_done(summary)


def read_done(run_dir: Path) -> dict | None:
    """The summary of a finished run, or None when it has not finished."""
    return RunDir(run_dir).read_done()


SUMMARY_KEYS = ("test_accuracy", "precision_at_1", "mean_average_precision_at_r", "val_loss", "final_loss",
                "classifier_accuracy", "projector_mse")


def done_line(run_dir: Path) -> str:
    """`done: RUN` and the headline numbers of its summary (what `jointspace train` prints)."""
    s = read_done(run_dir) or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in s.items() if k in SUMMARY_KEYS and isinstance(v, float))
    return f"done: {run_dir}  {shown}".rstrip()
