"""`augment fix RUN`: find a classifier run's worst classes on its validation split, generate images of them,
pack those as an extra shard source, retrain the same config with it mixed in, and compare before/after.

The retrained runs keep the original number of samples per epoch (so the same number of steps); the
generated source gets `fix.upsample` x its size of the sampling mass. A control run mixes in the real
training images of the targeted classes with the same mass instead, so the table separates what the
generated images add from what plain rebalancing does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jointspace.augment.config import AugmentConfig
from jointspace.augment.report import fix_table, image_grid, write_fix_report
from jointspace.augment.sample import class_ids, load_sampler
from jointspace.config import RunConfig, apply_overrides, config_from_dict, load_config
from jointspace.data.dataset import load_split
from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls, write_dataset
from jointspace.evaluate.classify import confusion_matrix
from jointspace.runs import CONFIG, WEIGHTS, read_run_info

FIX_JSON, FIX_MD = "fix.json", "fix.md"


def classifier_info(run_dir: Path) -> dict:
    """run.json of a classifier run; other runs fail saying what is needed."""
    info = read_run_info(run_dir)
    if info.get("task") != "classify":
        raise ValueError(f"{run_dir}: augment fix needs a classifier run (`jointspace classify`), "
                         f"this one is {info.get('task') or 'a contrastive run'}")
    return info


def analyse_run(run_dir: Path) -> dict:
    """Per-class recall and the most confused (true, predicted) pairs of a classifier run on its val split
    (train when it has none: the test split stays unseen until the before/after table)."""
    from safetensors.torch import load_file

    from jointspace.train.classifier import build_classifier, predict
    from jointspace.train.loop import split_kwargs

    info = classifier_info(run_dir)
    cfg = load_config(run_dir / CONFIG)
    split = "val" if (Path(cfg.data.path) / "val").exists() else "train"
    data = load_split(cfg.data.path, split, **split_kwargs(cfg))
    model = build_classifier(cfg, data)
    model.load_state_dict(load_file(str(run_dir / WEIGHTS)))
    preds = predict(model, data, torch.device("cpu")).argmax(1)
    names = list(info["class_names"])
    cm = confusion_matrix(preds, data.labels, len(names))
    support = cm.sum(1)
    recall = {n: float(cm[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)}
    off = [(int(cm[t, p]), names[t], names[p]) for t in range(len(names)) for p in range(len(names)) if t != p and cm[t, p]]
    confused = [{"true": t, "predicted": p, "count": c} for c, t, p in sorted(off, reverse=True)[:10]]
    return {"split": split, "recall": recall, "support": dict(zip(names, support.tolist(), strict=True)),
            "accuracy": float(np.trace(cm) / max(1, cm.sum())), "most_confused": confused}


def pick_targets(analysis: dict, worst: int, classes: list[str]) -> list[str]:
    """The named classes, else the `worst` classes by recall (ties: fewer samples first)."""
    if classes:
        unknown = [c for c in classes if c not in analysis["recall"]]
        if unknown:
            raise ValueError(f"fix.classes {unknown} not classes of the run (has: {', '.join(analysis['recall'])})")
        return list(classes)
    scored = [(r, analysis["support"][n], n) for n, r in analysis["recall"].items() if r is not None]
    return [n for _, _, n in sorted(scored)[:worst]]


def _partners(root: Path, modalities: list[str], classes: list[int]) -> dict[int, list[dict]]:
    """Real train samples of the given classes (their non-image modalities accompany generated images)."""
    pools: dict[int, list[dict]] = {c: [] for c in classes}
    for s in iter_samples(split_urls(root, "train"), ReadStats(), modalities):
        if s["label"] in pools:
            pools[s["label"]].append(s)
    return pools


def write_generated(out: Path, images: dict[str, np.ndarray], cfg: RunConfig, image_key: str, meta: dict) -> int:
    """Generated images as a train-only shard folder with the run's modalities (others borrowed from real
    samples of the same class, as digits pairs its modalities by class); returns the number of samples."""
    info = read_info(cfg.data.path)
    names = list(info["class_names"])
    labels = {c: names.index(c) for c in images}
    pools = _partners(Path(cfg.data.path), cfg.data.modalities, list(labels.values()))

    def samples():
        for c, arr in images.items():
            pool = pools[labels[c]]
            if not pool and len(cfg.data.modalities) > 1:
                raise ValueError(f"{cfg.data.path}: no train sample of class {c!r} to pair generated images with")
            for i, img in enumerate(arr):
                partner = pool[i % len(pool)] if pool else {}
                sample = {m: partner[m] for m in cfg.data.modalities if m != image_key}
                yield {**sample, "key": f"generated-{c}-{i:05d}", image_key: img, "label": labels[c],
                       "meta": {**meta, "partner": partner.get("key")}}

    kinds = {m: info["modalities"][m] for m in cfg.data.modalities}
    written = write_dataset(out, {"train": samples()}, kinds, names, {"name": "generated", **meta})
    return written["splits"]["train"]["n_samples"]


def write_real_subset(out: Path, cfg: RunConfig, classes: list[str]) -> int:
    """The real train samples of `classes` as their own shard folder (the oversampling control's source)."""
    info = read_info(cfg.data.path)
    ids = [info["class_names"].index(c) for c in classes]
    pools = _partners(Path(cfg.data.path), cfg.data.modalities, ids)
    kinds = {m: info["modalities"][m] for m in cfg.data.modalities}
    written = write_dataset(out, {"train": (s for c in ids for s in pools[c])}, kinds, info["class_names"],
                            {"name": "real-targets"})
    return written["splits"]["train"]["n_samples"]


def retrain_config(cfg: RunConfig, name: str, out: Path, extra: Path, weight: float, n_train: int,
                   overrides: list[str]) -> RunConfig:
    """The run's config training on its data plus `extra` (sampling mass weight x size), same samples per epoch."""
    raw = cfg.model_dump(mode="json")
    raw["name"], raw["output_dir"] = name, str(out)
    sources = raw["data"]["sources"] or [{"path": cfg.data.path, "weight": 1.0}]
    raw["data"].update(sources=[*sources, {"path": str(extra), "weight": weight}], resampled=True,
                       samples_per_epoch=cfg.data.samples_per_epoch or n_train, synth=None)
    return config_from_dict(apply_overrides(raw, overrides), f"retrain {name}")


def _run_metrics(run_dir: Path, split: str, targets: list[str]) -> dict:
    rep = json.loads((run_dir / f"classification_{split}.json").read_text())
    per = rep["per_class"]
    return {"run": str(run_dir), "accuracy": rep["top1"], "macro_recall": per["macro avg"]["recall"],
            "recall": {c: per[c]["recall"] for c in targets}}


def train_sampler_model(aug: AugmentConfig, cfg: RunConfig, out: Path, log: Callable[[str], None]) -> Path:
    """Train a diffusion model on the run's train images (unless one is finished there already)."""
    from jointspace.augment.train import train_diffusion
    from jointspace.train.common import read_done

    dcfg = aug.model_copy(update={"name": "diffusion", "output_dir": str(out),
                                  "data": aug.data.model_copy(update={"path": cfg.data.path, "split": "train"})})
    if read_done(dcfg.run_dir) is None:
        log(f"training the diffusion model on {cfg.data.path} -> {dcfg.run_dir}")
        train_diffusion(dcfg, overwrite=True, show_progress=False)
    return dcfg.run_dir


def run_fix(run_dir: str | Path, aug: AugmentConfig, diffusion: str | Path | None = None, out: str | Path | None = None,
            overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """The whole loop; writes `out/fix.json`, `fix.md` and `report.html`, returns fix.json's content."""
    from jointspace.train.classifier import train_classifier

    t0 = time.time()
    run_dir = Path(run_dir)
    classifier_info(run_dir)
    out = Path(out) if out else run_dir.parent / f"{run_dir.name}-fix"
    if (out / FIX_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out} holds a finished fix: pass --overwrite to redo it")
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run_dir / CONFIG)
    if cfg.data.label_map:
        raise ValueError(f"{run_dir}: data.label_map runs are not supported by augment fix yet")
    image_key = next((m for m in cfg.data.modalities if read_info(cfg.data.path)["modalities"][m] == "image"), None)
    if image_key is None:
        raise ValueError(f"{run_dir}: data.modalities {cfg.data.modalities} hold no image modality to generate")
    analysis = analyse_run(run_dir)
    f = aug.fix
    targets = pick_targets(analysis, f.worst, f.classes)
    log(f"{analysis['split']} recall: " + ", ".join(f"{c} {analysis['recall'][c]:.3f}" for c in targets)
        + f"; most confused: {analysis['most_confused'][:3]}")

    model_dir = Path(diffusion) if diffusion else train_sampler_model(aug, cfg, out, log)
    sampler = load_sampler(model_dir, aug.train.device, class_names=read_info(cfg.data.path)["class_names"])
    ids = class_ids(sampler, targets)
    s = aug.sample
    log(f"generating {f.n_per_class} images of each of {targets} ({s.scheduler}, {s.steps} steps, guidance {s.guidance})")
    images = {c: sampler.sample_class(i, f.n_per_class, s.guidance, s.steps, s.scheduler, s.seed, s.batch_size)
              for c, i in zip(targets, ids, strict=True)}
    gen_meta = {"generated": True, "model": str(model_dir), "guidance": s.guidance, "steps": s.steps,
                "scheduler": s.scheduler, "seed": s.seed}
    n_gen = write_generated(out / "generated", images, cfg, image_key, gen_meta)
    grid = image_grid({c: a[:8] for c, a in images.items()}, out / "generated_grid.png")

    n_train = int(read_info(cfg.data.path)["splits"]["train"]["n_samples"])
    runs = {"before": _run_metrics(run_dir, cfg.eval.split, targets)}
    plans = [("generated", out / "generated", f.upsample)]
    if f.oversample_control:
        n_real = write_real_subset(out / "real_targets", cfg, targets)
        if n_real:
            plans.insert(0, ("oversampled", out / "real_targets", f.upsample * n_gen / n_real))
    for label, extra, weight in plans:
        rcfg = retrain_config(cfg, f"{run_dir.name}-{label}", out, extra, weight, n_train, f.retrain_set)
        log(f"retraining with {extra.name} (weight {weight:.3g}) -> {rcfg.run_dir}")
        train_classifier(rcfg, overwrite=True, show_progress=False)
        runs[label] = _run_metrics(rcfg.run_dir, cfg.eval.split, targets)

    result = {"run": str(run_dir), "out": str(out), "split": cfg.eval.split, "targets": targets, "analysis": analysis,
              "n_generated": n_gen, "upsample": f.upsample, "samples_per_epoch": n_train, "generation": gen_meta,
              "runs": runs, "seconds": round(time.time() - t0, 1)}
    (out / FIX_JSON).write_text(json.dumps(result, indent=2))
    (out / FIX_MD).write_text(fix_table(result) + "\n")
    write_fix_report(out, result, grid)
    return result
