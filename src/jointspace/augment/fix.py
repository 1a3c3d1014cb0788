"""`augment fix RUN`: find a run's worst classes on its validation split, generate images of them, pack
those as an extra shard source, retrain the same config with it mixed in, and compare before/after.

A run is judged by what its task predicts of each sample's class (`Task.predictions`): a classifier by
its predictions; a contrastive run by retrieval: each image query's nearest item of the paired modality
(text if there is one) counts as a hit when it is of the query's class, so a class's recall is its image
queries' class-level R@1 and "accuracy" is that R@1 over all queries.

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

from jointspace.augment.prompted import class_prompts, judge
from jointspace.augment.report import fix_table, image_grid, write_fix_report
from jointspace.augment.sample import class_ids, load_sampler, real_images
from jointspace.config import RunConfig, apply_overrides
from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls, write_dataset
from jointspace.diffusion.config import AugmentConfig
from jointspace.errors import UsageError, require
from jointspace.evaluate.classify import confusion_matrix
from jointspace.kinds import with_role
from jointspace.run_dir import RUN_INFO, RunDir, read_run_info
from jointspace.tasks import Task, config_for, get_task
from jointspace.tasks.common import read_done
from jointspace.tasks.diffusion import train_diffusion
from jointspace.tasks.registry import able, run_config

FIX_JSON, FIX_MD = "fix.json", "fix.md"


def fixable_task(run_dir: Path) -> Task:
    """The task of a finished run that augment fix can judge; anything else fails saying what is needed."""
    task = get_task(read_run_info(run_dir).task, f"{run_dir}: {RUN_INFO}: task")
    weights = RunDir(run_dir).weights
    if task.predictions is None or not weights.exists():
        raise UsageError(f"{run_dir}: augment fix needs a finished classifier run or contrastive run (`jointspace "
                         f"train`, task: {able(lambda t: t.predictions)}); this one is {task.name}"
                         + ("" if weights.exists() else f" without {weights.name}"))
    return task


def _val_split(cfg: RunConfig) -> str:
    """val, or train when there is none: the test split stays unseen until the before/after table."""
    return "val" if (Path(cfg.data.path) / "val").exists() else "train"


def analyse_run(run_dir: Path) -> dict:
    """Per-class recall, support and the most confused (true, predicted) pairs of a run on its val split."""
    return analyse_split(run_dir, _val_split(run_config(run_dir)))


def pick_targets(analysis: dict, worst: int, classes: list[str]) -> list[str]:
    """The named classes, else the `worst` classes by recall (ties: fewer samples first)."""
    if classes:
        unknown = [c for c in classes if c not in analysis["recall"]]
        if unknown:
            raise UsageError(f"fix.classes {unknown} not classes of the run (has: {', '.join(analysis['recall'])})")
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
                raise UsageError(f"{cfg.data.path}: no train sample of class {c!r} to pair generated images with")
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
    return config_for(apply_overrides(raw, overrides), f"retrain {name}")


def _run_metrics(run_dir: Path, split: str, targets: list[str]) -> dict:
    """Accuracy, macro recall and the targets' recall on `split` (the classifier's report, or retrieval)."""
    report = RunDir(run_dir).classification(split)
    if report.exists():  # a classifier's own report on `split`, written when it trained
        rep = json.loads(report.read_text())
        per = rep["per_class"]
        return {"run": str(run_dir), "accuracy": rep["top1"], "macro_recall": per["macro avg"]["recall"],
                "recall": {c: per[c]["recall"] for c in targets}}
    a = analyse_split(run_dir, split)
    found = [r for r in a["recall"].values() if r is not None]
    return {"run": str(run_dir), "accuracy": a["accuracy"], "macro_recall": float(np.mean(found)),
            "recall": {c: a["recall"][c] for c in targets}}


def analyse_split(run_dir: Path, split: str) -> dict:
    """Per-class recall, support, accuracy and most confused pairs of a run on `split`: the classifier's
    predictions, or for a contrastive run the class of each image query's top-1 retrieved item."""
    p = fixable_task(run_dir).predictions(run_dir, split)
    names = list(read_run_info(run_dir).class_names or p.class_names)
    cm = confusion_matrix(p.predicted, p.true, len(names))
    support = cm.sum(1)
    off = [(int(cm[t, p]), names[t], names[p]) for t in range(len(names)) for p in range(len(names)) if t != p and cm[t, p]]
    return {"split": split, "measure": p.measure, "overall": p.overall, "accuracy": float(np.trace(cm) / max(1, cm.sum())),
            "recall": {n: float(cm[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)},
            "support": dict(zip(names, support.tolist(), strict=True)),
            "most_confused": [{"true": t, "predicted": p, "count": c} for c, t, p in sorted(off, reverse=True)[:10]]}


def train_sampler_model(aug: AugmentConfig, cfg: RunConfig, out: Path, log: Callable[[str], None]) -> Path:
    """Train a diffusion model on the run's train images (unless one is finished there already)."""

    dcfg = aug.model_copy(update={"name": "diffusion", "output_dir": str(out),
                                  "data": aug.data.model_copy(update={"path": cfg.data.path, "split": "train"})})
    if read_done(dcfg.run_dir) is None:
        log(f"training the diffusion model on {cfg.data.path} -> {dcfg.run_dir}")
        train_diffusion(dcfg, overwrite=True, show_progress=False)
    return dcfg.run_dir


def _sampler_for(model_dir: Path, aug: AugmentConfig, cfg: RunConfig, run_dir: Path, analysis: dict,
                 targets: list[str], log: Callable[[str], None]):
    """The sampler of `model_dir`; a text-to-image pipeline gets each target's prompts (its name and its
    most confused captions), the negative prompt and, with fix.strength, its real images as starts."""
    f, names = aug.fix, read_info(cfg.data.path)["class_names"]
    if RunDir(model_dir).has_info():  # an `augment train` run: the class-conditional UNet, no prompts
        return load_sampler(model_dir, aug.train.device, class_names=names), {}
    init = None
    if f.strength:
        init = {names.index(targets[i]): v for i, v in real_images(cfg.data.path, targets).items()}
    sampler = load_sampler(model_dir, aug.train.device, class_names=names, prompt_template=f.prompts,
                           negative_prompt=f.negative_prompt, init_images=init, strength=f.strength or 0.6)
    if sampler.mode != "prompt":
        return sampler, {}
    prompts = class_prompts(run_dir, cfg.data.path, analysis, targets, f.prompts, f.confused_captions)
    sampler.class_prompts = {names.index(c): p for c, p in prompts.items()}
    log(f"prompts: {prompts}")
    return sampler, {"prompts": prompts, "negative_prompt": f.negative_prompt, "strength": f.strength}


def _generate(model_dir: Path, aug: AugmentConfig, cfg: RunConfig, run_dir: Path, analysis: dict,
              targets: list[str], log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict]:
    """fix.n_per_class images of each target (with fix.filter: those the run's joint space keeps) and
    what made them."""
    f, s = aug.fix, aug.sample
    sampler, gen_meta = _sampler_for(model_dir, aug, cfg, run_dir, analysis, targets, log)
    ids = class_ids(sampler, targets)
    log(f"generating {f.n_per_class} images of each of {targets} ({s.scheduler}, {s.steps} steps, guidance {s.guidance})")
    images = {c: sampler.sample_class(i, f.n_per_class, s.guidance, s.steps, s.scheduler, s.seed, s.batch_size)
              for c, i in zip(targets, ids, strict=True)}
    gen_meta.update({"generated": True, "model": str(model_dir), "guidance": s.guidance, "steps": s.steps,
                     "scheduler": s.scheduler, "seed": s.seed})
    if f.filter:
        images, gen_meta["filter"] = judge(run_dir, analysis, images)
        log(f"kept by the run's own judgement: {gen_meta['filter']}")
        if not any(len(a) for a in images.values()):
            raise UsageError(f"fix.filter: the run's joint space placed every generated image nearer the confused "
                             f"class ({gen_meta['filter']}); raise fix.n_per_class or set fix.filter=false")
        images = {c: a for c, a in images.items() if len(a)}
    return images, gen_meta


def run_fix(run_dir: str | Path, aug: AugmentConfig, diffusion: str | Path | None = None, out: str | Path | None = None,
            overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """The whole loop; writes `out/fix.json`, `fix.md` and `report.html`, returns fix.json's content."""
    require("augment", "diffusers", "jointspace augment fix")

    t0 = time.time()
    run_dir = Path(run_dir)
    task = fixable_task(run_dir)
    out = Path(out) if out else run_dir.parent / f"{run_dir.name}-fix"
    if (out / FIX_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out} holds a finished fix: pass --overwrite to redo it")
    out.mkdir(parents=True, exist_ok=True)
    cfg = run_config(run_dir)
    if cfg.data.label_map:
        raise UsageError(f"{run_dir}: data.label_map runs are not supported by augment fix yet")
    stored = read_info(cfg.data.path)["modalities"]
    image_key = with_role({m: stored[m] for m in cfg.data.modalities}, "picture")
    if image_key is None:
        raise UsageError(f"{run_dir}: data.modalities {cfg.data.modalities} hold no image modality to generate")
    analysis = analyse_run(run_dir)
    f = aug.fix
    targets = pick_targets(analysis, f.worst, f.classes)
    log(f"{analysis['split']} recall: " + ", ".join(f"{c} {analysis['recall'][c]:.3f}" for c in targets)
        + f"; most confused: {analysis['most_confused'][:3]}")

    model_dir = Path(diffusion) if diffusion else train_sampler_model(aug, cfg, out, log)
    images, gen_meta = _generate(model_dir, aug, cfg, run_dir, analysis, targets, log)
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
        task.train(rcfg, overwrite=True, show_progress=False)
        runs[label] = _run_metrics(rcfg.run_dir, cfg.eval.split, targets)

    result = {"run": str(run_dir), "task": task.name, "out": str(out), "split": cfg.eval.split, "targets": targets,
              "measure": analysis["measure"], "analysis": analysis,
              "n_generated": n_gen, "upsample": f.upsample, "samples_per_epoch": n_train, "generation": gen_meta,
              "runs": runs, "seconds": round(time.time() - t0, 1)}
    (out / FIX_JSON).write_text(json.dumps(result, indent=2))
    (out / FIX_MD).write_text(fix_table(result) + "\n")
    write_fix_report(out, result, grid)
    return result
