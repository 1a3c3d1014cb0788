"""Training throughput: jointspace vs open_clip_train on the same CLIP, data, batch, threads and budget.

The same open_clip architecture (a tiny ViT CLIP registered with open_clip as a model config, or
ViT-B-32) is trained by `open_clip_train` (open_clip_torch's trainer) and by jointspace (its
`openclip_image` + `openclip_text` towers of that config, CLIP's instance-level InfoNCE), each in its
own process, from the same samples written as shards for each (same PNG and caption bytes, same
order), with the same batch, threads, AdamW settings, warmup + constant LR, grad clip and precision (fp32 on
CPU unless `--precision bf16`, bf16 autocast on CUDA). jointspace runs twice: with its default data path (the train split decoded once
into memory at start-up) and with `data.streaming: true` (shards decoded and tokenised batch by
batch every epoch, no DataLoader workers), which does the same per-epoch data work as open_clip_train.

Two phases, so that a machine shared with other jobs (load drifting over minutes) biases no trainer:
1. speed: `--rounds` rounds; in each, every trainer runs `--probe-seconds` of timed steps, the order
   rotating from round to round. samples/s = the median over rounds.
2. quality: every trainer trains from scratch for the steps it makes in `--budget-seconds` at that
   speed, then both are evaluated on the held-out split with jointspace's retrieval code: Recall@1
   after the same wall-clock budget. With `--rounds 0` (a quiet machine) each trainer instead trains
   for exactly `--budget-seconds` (it stops at the first step starting later) and its speed is read
   off that run.

    .venv/bin/python bench/train_vs_openclip.py                      # CPU, tiny CLIP, shapes (~20 min)
    .venv/bin/python bench/train_vs_openclip.py --rounds 1 --probe-seconds 20 --budget-seconds 20 \
        --n-samples 1500                                              # a quick look
    .venv/bin/python bench/train_vs_openclip.py --device cuda --arch ViT-B-32 --batch-size 256 --oc-workers 4 8

See bench/train_bench_worker.py for how the steps are timed and stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import psutil
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench_data as bd

WORKER = Path(__file__).resolve().parent / "train_bench_worker.py"
TINY_NAME = "jointspace-bench-tiny"
TINY = {  # a CLIP small enough to train on 2 CPU cores
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}

TARGET_RATIO = 2.0  # issue 15: samples/s over the fastest open_clip_train row, with R@1 no worse


def model_config(work: Path, arch: str) -> tuple[str, Path | None, dict]:
    """(open_clip model name, folder to register with add_model_config or None, its config)."""
    import open_clip

    if arch == "tiny":
        folder = work / "model_configs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY, indent=2))
        open_clip.add_model_config(folder)
        return TINY_NAME, folder, TINY
    return arch, None, open_clip.get_model_config(arch)


def jointspace_config(args, name: str, cfg: dict, js_dir: Path, run_root: Path, streaming: bool = False) -> dict:
    """The jointspace run config matching open_clip_train's settings; `streaming`: decode the shards
    batch by batch every epoch (as open_clip_train does) instead of once into memory."""
    return {
        "name": "jointspace-streaming" if streaming else "jointspace", "seed": 0, "output_dir": str(run_root),
        "tracker": "none",
        "data": {"path": str(js_dir), "modalities": ["image", "text"],
                 "image_size": cfg["vision_cfg"]["image_size"], "context_length": cfg["text_cfg"]["context_length"],
                 **({"streaming": True, "num_workers": 0, "shuffle_buffer": 1000} if streaming else {})},
        "model": {"embed_dim": cfg["embed_dim"],
                  "towers": {"image": {"name": "openclip_image", "params": {"model": name}},
                             "text": {"name": "openclip_text", "params": {"model": name}}}},
        "loss": {"name": "infonce", "positives": "instance"},
        "train": {"epochs": 100_000, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.wd,
                  "betas": [0.9, 0.98], "warmup_steps": args.warmup, "min_lr_ratio": 1.0, "grad_clip": 1.0,
                  "amp": "none" if args.precision == "fp32" else "bf16", "device": args.device,
                  "num_threads": args.threads, "eval_every": 100_000, "checkpoint_every": 100_000},
    }


def variant(text: str) -> tuple[str, str, dict, dict]:
    """`LABEL:KEY=VALUE,...` -> (label, file tag, config overrides {section.field: value}, torch settings)."""
    label, _, settings = text.partition(":")
    overrides, torch_settings = {}, {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        (torch_settings if key.startswith("torch.") else overrides)[key.removeprefix("torch.")] = yaml.safe_load(value)
    return label, "jointspace-" + "".join(c if c.isalnum() else "-" for c in label), overrides, torch_settings


def open_clip_args(args, name: str, prepared: dict, workers: int, logs: Path, run_name: str) -> list[str]:
    """open_clip_train's command line for the same run."""
    n_train = prepared["n_train"] // args.batch_size * args.batch_size  # full batches, as jointspace
    return [
        "--train-data", prepared["oc_urls"], "--train-num-samples", str(n_train), "--dataset-type", "webdataset",
        "--batch-size", str(args.batch_size), "--workers", str(workers), "--epochs", "100000",
        "--lr", str(args.lr), "--wd", str(args.wd), "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-8",
        "--warmup", str(args.warmup), "--lr-scheduler", "const", "--grad-clip-norm", "1.0",
        "--precision", "fp32" if args.precision == "fp32" else "amp_bf16", "--device", args.device,
        "--model", name, "--force-custom-text", "--aug-cfg", "scale=(1.0,1.0)",  # no random crop: same pixels
        "--logs", str(logs), "--name", run_name, "--save-frequency", "0", "--seed", "0",
        "--log-every-n-steps", "100",
    ]


def launch(spec: dict, work: Path, tag: str, timeout_s: float) -> dict:
    """Run one trainer process; adds start-up time, peak memory (its own and its process tree's) and the
    machine's mean 1-minute load average while it ran (about `threads` of it is the trainer itself)."""
    Path(spec["result"]).unlink(missing_ok=True)
    spec_path = work / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    log = (work / f"{tag}.log").open("w")
    t_launch = time.time()
    proc = subprocess.Popen([sys.executable, str(WORKER), str(spec_path)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=Path(__file__).resolve().parent.parent)
    tree_peak, usage, loads = 0, None, []
    ps = psutil.Process(proc.pid)
    while usage is None:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # exited: its own rusage (ru_maxrss = its and its reaped children's high-water mark)
            proc.returncode, usage = os.waitstatus_to_exitcode(status), rusage
            break
        try:  # sum of RSS over the trainer and its data-loader processes
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        loads.append(os.getloadavg()[0])
        if time.time() - t_launch > timeout_s:
            proc.kill()
        time.sleep(0.25)
    log.close()
    result_path = Path(spec["result"])
    if proc.returncode != 0 or not result_path.exists():
        tail = (work / f"{tag}.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}); {work / f'{tag}.log'}:\n" + "\n".join(tail))
    res = json.loads(result_path.read_text())
    res["startup_seconds"] = res["t_first_step"] - t_launch
    res["weights"] = spec.get("weights")
    res["peak_rss_mb"] = max(usage.ru_maxrss / 1024, tree_peak / 2**20)
    res["load_during"] = sum(loads) / max(len(loads), 1)
    return res


def load_average() -> str:
    """1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--arch", default="tiny", choices=["tiny", "ViT-B-32"])
    ap.add_argument("--data", default="shapes", choices=["shapes", "digits"])
    ap.add_argument("--n-samples", type=int, default=6000, help="samples synthesised (70%% train, 15%% test)")
    ap.add_argument("--budget-seconds", type=float, default=180.0, help="training wall clock for Recall@1")
    ap.add_argument("--rounds", type=int, default=3, help="speed rounds (0: time the budget runs instead)")
    ap.add_argument("--probe-seconds", type=float, default=40.0, help="timed training per trainer per round")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each trainer")
    ap.add_argument("--oc-workers", type=int, nargs="+", default=[0, 1],
                    help="open_clip_train --workers values to run (one row each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench_train"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["jointspace", "jointspace-streaming", "open_clip"])
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                    help="another jointspace row with config overrides (train.compile=true) or torch settings "
                         "(torch.mkldnn=false, torch.interop_threads=1, torch.math_attention_max_tokens=0); "
                         "repeatable")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded" when building for evaluation
    args.precision = args.precision or ("fp32" if args.device == "cpu" else "bf16")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    name, cfg_dir, cfg = model_config(work, args.arch)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    prepared = bd.prepare(work, args.data, args.n_samples, size)
    print(f"data: {args.data}, {prepared['n_train']} train / {prepared['n_test']} test samples, {size}px RGB; "
          f"model {name}; batch {args.batch_size}, {args.threads} threads, {args.device}, {args.precision}; "
          f"load average {load_average()}", flush=True)

    common = {"model_config_dir": str(cfg_dir) if cfg_dir else None, "threads": args.threads,
              "device": args.device, "batch_size": args.batch_size}
    specs = {}  # label -> (file tag, spec builder: run tag -> spec)
    if "jointspace" not in args.skip:
        run_root = work / "runs"
        cfg_path = work / "jointspace.yaml"
        cfg_path.write_text(yaml.safe_dump(jointspace_config(args, name, cfg, prepared["js"], run_root), sort_keys=False))
        specs["jointspace"] = ("jointspace", lambda tag: {
            **common, "trainer": "jointspace", "config": str(cfg_path),
            "weights": str(run_root / "jointspace" / "model.safetensors")})
    for text in args.variant:
        label, tag, overrides, torch_settings = variant(text)
        js = jointspace_config(args, name, cfg, prepared["js"], work / "runs")
        js["name"] = tag
        for key, value in overrides.items():
            section, field = key.split(".", 1)
            js[section][field] = value
        path = work / f"{tag}.yaml"
        path.write_text(yaml.safe_dump(js, sort_keys=False))
        specs[f"jointspace [{label}]"] = (tag, lambda t, path=path, tag=tag, ts=torch_settings: {
            **common, "trainer": "jointspace", "config": str(path), "torch": ts,
            "weights": str(work / "runs" / tag / "model.safetensors")})
    if "jointspace-streaming" not in args.skip:
        run_root = work / "runs"
        stream_cfg = work / "jointspace-streaming.yaml"
        stream_cfg.write_text(yaml.safe_dump(
            jointspace_config(args, name, cfg, prepared["js"], run_root, streaming=True), sort_keys=False))
        specs["jointspace (streaming)"] = ("jointspace-streaming", lambda tag: {
            **common, "trainer": "jointspace", "config": str(stream_cfg),
            "weights": str(run_root / "jointspace-streaming" / "model.safetensors")})
    if "open_clip" not in args.skip:
        logs = work / "oc_logs"
        for w in args.oc_workers:
            specs[f"open_clip_train (workers={w})"] = (f"open_clip_train-workers{w}", lambda tag, w=w: {
                **common, "trainer": "open_clip", "weights": str(work / f"{tag}.pt"),
                "args": open_clip_args(args, name, prepared, w, logs, tag)})
    shutil.rmtree(work / "oc_logs", ignore_errors=True)
    timeout = max(args.budget_seconds, args.probe_seconds) * 10 + 900
    runs: dict[str, list[dict]] = {label: [] for label in specs}

    def run(label: str, tag: str, **stop) -> dict:
        print(f"  {tag} ... (load {load_average()})", flush=True)
        spec = {**specs[label][1](tag), **stop, "result": str(work / f"{tag}.result.json")}
        res = launch(spec, work, tag, timeout)
        runs[label].append(res)
        return res

    labels = list(specs)
    ceiling = []
    for r in range(args.rounds):
        print(f"speed round {r + 1}/{args.rounds}", flush=True)
        ceiling.append(bd.model_step_speed(name, args.batch_size, ctx, size, args.device, args.precision,
                                           seconds=min(args.probe_seconds, 15.0)))
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            run(label, f"{specs[label][0]}-speed{r}", budget_s=args.probe_seconds, weights=None)
    speed = {label: median([x["samples_per_second"] for x in runs[label]]) for label in labels if runs[label]}
    if ceiling:
        print(f"open_clip's model step alone (its forward, ClipLoss, default torch AdamW; random tensors, no data): "
              f"{median(ceiling):.1f} samples/s (median of {len(ceiling)}; {min(ceiling):.1f}-{max(ceiling):.1f})")
    print(f"quality: {args.budget_seconds:.0f} s of training each", flush=True)
    budget_runs = {}
    for label in labels:
        tag = specs[label][0]
        if args.rounds:
            steps = max(2, round(args.budget_seconds * speed[label] / args.batch_size))
            budget_runs[label] = run(label, tag, max_steps=steps)
            runs[label].pop()  # timed under whatever load there is now: not part of the speed figure
        else:
            budget_runs[label] = run(label, tag, budget_s=args.budget_seconds)
            speed[label] = budget_runs[label]["samples_per_second"]

    test, labels_test = bd.load_test(prepared, size, ctx, name)
    for label, res in budget_runs.items():
        emb = (bd.embed_jointspace(Path(res["weights"]).parent, test, args.device) if label.startswith("jointspace")
               else bd.embed_open_clip(res["weights"], name, test, args.device))
        res["recall"] = bd.recall_at_1(emb, labels_test)
    print_table(args, name, prepared, speed, runs, budget_runs)
    if ceiling:
        print(f"open_clip's model step alone, with no data at all (the most any loader could let open_clip_train "
              f"reach): {median(ceiling):.1f} samples/s")
    print(f"load average at the end: {load_average()}")
    (work / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "samples_per_second": speed,
         "model_step_alone_samples_per_second": ceiling, "speed_runs": runs,
         "budget_runs": budget_runs}, indent=2, default=str))


def print_table(args, name: str, prepared: dict, speed: dict, runs: dict, budget_runs: dict) -> None:
    """One markdown table, with the settings above it and the acceptance check below."""
    oc = [label for label in speed if not label.startswith("jointspace")]
    best_oc = max(oc, key=lambda label: speed[label]) if oc else None
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; {args.device}; "
          f"model {name}; data {args.data} ({prepared['n_train']} train, {prepared['n_test']} test); "
          f"batch {args.batch_size}; {args.threads} threads; {args.precision}; "
          + (f"speed: median of {args.rounds} rounds x {args.probe_seconds:.0f} s; " if args.rounds else "")
          + f"Recall@1 after {args.budget_seconds:.0f} s of training\nR@1: {bd.LEVEL[args.data]}\n")
    head = ["trainer", "samples/s", "vs open_clip_train", "start-up s", "peak RSS MB", "steps in budget",
            "R@1 image->text", "R@1 text->image", "load avg during"]
    if args.device == "cuda":
        head.insert(5, "CUDA peak MB")
    lines = [head]
    for label, q in budget_runs.items():
        every = runs[label] + ([q] if args.rounds else [])
        sps = [x["samples_per_second"] for x in runs[label]]
        spread = f" ({min(sps):.1f}-{max(sps):.1f})" if len(sps) > 1 else ""
        ratio = f"{speed[label] / speed[best_oc]:.2f}x" if best_oc else "-"
        cells = [label, f"{speed[label]:.1f}{spread}", ratio, f"{median([x['startup_seconds'] for x in every]):.1f}",
                 f"{max(x['peak_rss_mb'] for x in every):.0f}", str(q["steps_total"]),
                 f"{q['recall']['image->text']:.3f}", f"{q['recall']['text->image']:.3f}",
                 f"{sum(x['load_during'] for x in every) / len(every):.2f}"]
        if args.device == "cuda":
            cells.insert(5, f"{max(x['cuda_peak_mb'] for x in every):.0f}")
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    print("\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines[1:])]))
    print("\nsamples/s = timed steps x batch / their seconds (start-up and the first step excluded; median, "
          "range in brackets); vs open_clip_train: over the fastest open_clip_train row; start-up: launch to the "
          "second step (median); peak RSS: largest over the runs of the process's own high-water mark and of the "
          "sampled RSS sum over it and its data-loader workers; steps in budget: steps of the Recall@1 run; load "
          f"avg during: mean 1-minute load average (the trainer itself adds about {args.threads})")
    if "jointspace" in budget_runs and best_oc:
        def mean(label: str) -> float:
            return sum(budget_runs[label]["recall"].values()) / 2

        ratio = speed["jointspace"] / speed[best_oc]
        ok = ratio >= TARGET_RATIO and mean("jointspace") >= mean(best_oc)
        print(f"acceptance (>= {TARGET_RATIO}x samples/s, R@1 no worse): {ratio:.2f}x, mean R@1 {mean('jointspace'):.3f} vs "
              f"{mean(best_oc):.3f} -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
