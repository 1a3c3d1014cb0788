"""One trainer of bench/train_vs_openclip.py, run in its own process: open_clip_train or jointspace,
stopped after a wall-clock budget of training steps; writes the final weights and a JSON summary.

    python bench/train_bench_worker.py SPEC.json

SPEC: {"trainer": "open_clip" | "jointspace", "args": [...] (open_clip_train's command line) or
"config": PATH (jointspace YAML), "model_config_dir": PATH | null, "budget_s" or "max_steps", "threads",
"device", "batch_size", "weights": PATH, "result": PATH}.

Neither trainer has a time budget, so both get the same two hooks, installed before they start:
- torch.optim.AdamW becomes a subclass whose `zero_grad` times the steps. Both loops call it once per
  step, after the step's batch is ready and before its forward pass. Call 1 (the second step)
  starts the clock and the first call at or past `budget_s` later (or call `max_steps`), call N,
  stops training by raising BudgetReached: steps 1..N-1 ran in between, so
  samples/s = (N - 1) x batch / (t_N - t_1).
  Start-up is everything before call 1: imports, model build, data decoding (jointspace) or the
  loader's start (open_clip_train), and the first step.
- the function that builds the model is wrapped to keep a reference, so the weights can be written
  when training stops: open_clip_train's state_dict (`{"state_dict": ...}`, as in its checkpoints),
  jointspace's `model.safetensors` in the run folder.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import resource
import sys
import time
import types
from pathlib import Path

T_START = time.time()


class BudgetReached(Exception):
    """The wall-clock budget of training steps is spent."""


class StepClock:
    """Counts optimizer steps; raises BudgetReached at the first step start past `budget_s` seconds of
    timed steps, or at the start of step `max_steps` (0-based, >= 2) when that is given instead.

    The clock starts at the second step: the first one (lazy allocations, kernel set-up; about 3 s on
    2 CPU cores for either trainer) counts as start-up."""

    def __init__(self, budget_s: float | None, max_steps: int | None, device: str):
        self.budget_s, self.max_steps, self.cuda = budget_s, max_steps, device.startswith("cuda")
        self.calls, self.t0, self.t_end = 0, None, None

    @property
    def steps(self) -> int:
        """Steps run inside the timed window."""
        return max(self.calls - 1, 0)

    def tick(self) -> None:
        import torch

        self.calls += 1
        if self.calls == 1:
            return
        if self.t0 is None:
            if self.cuda:
                torch.cuda.synchronize()
            self.t0 = time.time()
        if self.calls - 1 == self.max_steps or (self.budget_s is not None and time.time() - self.t0 >= self.budget_s):
            if self.cuda:  # the timed steps are queued; wait for them before reading the clock
                torch.cuda.synchronize()
            self.t_end = time.time()
            self.calls -= 1  # this step does not run
            raise BudgetReached


def install_clock(clock: StepClock) -> None:
    """Make torch.optim.AdamW tick `clock` on every zero_grad (both trainers build a torch AdamW)."""
    import torch

    class TimedAdamW(torch.optim.AdamW):
        def zero_grad(self, set_to_none: bool = True) -> None:
            clock.tick()
            super().zero_grad(set_to_none=set_to_none)

    torch.optim.AdamW = TimedAdamW


def stub_pandas() -> None:
    """open_clip_train imports pandas at module level for its CSV loader, which is not used here."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        mod = types.ModuleType("pandas")
        mod.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = mod


def open_clip_train_data():
    """open_clip_train.data, made to read shards with the webdataset installed here: open_clip_train 3.3 pins
    webdataset<=0.2.86; since 0.2.96 tar_file_expander yields an end-of-shard marker `{}` by default that
    its group_by_keys_nothrow fails on (KeyError 'fname', open_clip#935). The fix its maintainers give:
    eof_value=None."""
    stub_pandas()
    import functools

    import open_clip_train.data as oc_data

    if not isinstance(oc_data.tar_file_expander, functools.partial):
        oc_data.tar_file_expander = functools.partial(oc_data.tar_file_expander, eof_value=None)
    return oc_data


def run_open_clip(spec: dict, held: dict) -> int:
    """open_clip_train.main.main(args), keeping the model it builds; returns the batch size."""
    open_clip_train_data()
    import open_clip_train.main as oc_main

    build = oc_main.create_model_and_transforms

    def keep(*a, **kw):
        out = build(*a, **kw)
        held.setdefault("model", out[0])
        return out

    oc_main.create_model_and_transforms = keep
    args = list(spec["args"])
    oc_main.main(args)
    return int(args[args.index("--batch-size") + 1])


def run_jointspace(spec: dict, held: dict) -> int:
    """jointspace.tasks.contrastive.train(config), keeping the model it builds; returns the batch size."""
    from jointspace.config import load_config
    from jointspace.tasks import contrastive as loop

    build = loop.build_from_info

    def keep(*a, **kw):
        held["model"] = build(*a, **kw)
        return held["model"]

    write_info = loop.write_run_info

    def keep_info(run_dir, info):  # a run stopped before its first checkpoint leaves no folder: keep what
        held["run_info"] = info      # evaluating its weights needs
        write_info(run_dir, info)

    loop.build_from_info, loop.write_run_info = keep, keep_info
    cfg = load_config(spec["config"])
    held["run_dir"], held["cfg"] = cfg.run_dir, cfg
    loop.train(cfg, overwrite=True, show_progress=False)
    return cfg.train.batch_size


def save_weights(spec: dict, held: dict) -> None:
    """Write the held model's weights where the driver expects them."""
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in held["model"].state_dict().items()}
    Path(spec["weights"]).parent.mkdir(parents=True, exist_ok=True)  # a run stopped before its first checkpoint
    if spec["trainer"] == "open_clip":  # leaves no run folder behind (jointspace), so make its place
        torch.save({"state_dict": state}, spec["weights"])
    else:
        from jointspace.config import save_config
        from jointspace.engine.checkpoint import save_tensors
        from jointspace.run_dir import CONFIG, RUN_INFO, write_run_info

        save_tensors(state, Path(spec["weights"]))
        folder = Path(spec["weights"]).parent
        if "run_info" in held and not (folder / RUN_INFO).exists():
            write_run_info(folder, held["run_info"])
            save_config(held["cfg"], folder / CONFIG)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    settings = spec.get("torch") or {}
    if "interop_threads" in settings:
        torch.set_num_interop_threads(int(settings["interop_threads"]))
    if "mkldnn" in settings:
        torch.backends.mkldnn.enabled = bool(settings["mkldnn"])
    if "math_attention_max_tokens" in settings:  # 0: PyTorch's own kernel choice under CPU autocast
        from jointspace.engine import precision

        precision.MATH_MAX_TOKENS = int(settings["math_attention_max_tokens"])
    if spec.get("model_config_dir"):
        import open_clip

        open_clip.add_model_config(spec["model_config_dir"])
    clock = StepClock(spec.get("budget_s"), spec.get("max_steps"), spec["device"])
    install_clock(clock)
    held: dict = {}
    run = run_open_clip if spec["trainer"] == "open_clip" else run_jointspace
    batch_size = None
    stopped = False
    try:
        batch_size = run(spec, held)
    except BudgetReached:
        stopped = True
        batch_size = spec["batch_size"]
    if not stopped:
        raise SystemExit(f"{spec['trainer']}: training ended before the budget ({clock.steps} steps); "
                         "raise the epochs")
    if spec.get("weights"):
        save_weights(spec, held)
    seconds = clock.t_end - clock.t0
    result = {
        "trainer": spec["trainer"], "steps": clock.steps, "steps_total": clock.calls,
        "batch_size": batch_size, "train_seconds": seconds, "samples_per_second": clock.steps * batch_size / seconds,
        "t_first_step": clock.t0, "t_import": T_START,
        "self_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(), "pid": os.getpid(),
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
