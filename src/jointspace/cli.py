"""The `jointspace` command line: parses and dispatches. data, train (every task), eval, embed, report, demo,
compare, sweep, towers, export, index, search, serve, augment, audit, mine."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly
from jointspace.commands.audit import audit
from jointspace.commands.augment import augment_app
from jointspace.commands.export import export
from jointspace.commands.index import index_app, search
from jointspace.commands.mine import mine
from jointspace.commands.serve import serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and search joint embedding spaces.")
data_app = typer.Typer(no_args_is_help=True, help="Make, pack and inspect WebDataset shards.")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(augment_app, name="augment")
app.command()(search)
app.command()(serve)
app.command()(export)
app.command()(mine)
app.command()(audit)
console = Console()
_friendly = friendly(console)


def builtin_config(name: str) -> Path:
    """Path of a config shipped with the package (configs/<name>.yaml)."""
    return Path(str(resources.files("jointspace") / "configs" / f"{name}.yaml"))


@data_app.command("synth")
@_friendly
def data_synth(
    name: Annotated[str, typer.Argument(help="digits (real: images + spoken digits + captions), shapes (RGB + LiDAR) or moving (video clips)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
    n: Annotated[int | None, typer.Option(help="number of samples (default: the whole set / 3000)")] = None,
    maxcount: Annotated[int, typer.Option(help="samples per shard")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="replace an existing shard folder (never another folder)")] = False,
) -> None:
    """Write a built-in dataset as train/val/test WebDataset shards."""
    from jointspace.data.builtin import synthesize

    t0 = time.time()
    info = synthesize(name, out, seed=seed, n=n, maxcount=maxcount, overwrite=overwrite)
    counts = ", ".join(f"{s}: {v['n_samples']}" for s, v in info["splits"].items())
    console.print(f"wrote {out} ({counts}) in {time.time() - t0:.1f}s; modalities {info['modalities']}")


@data_app.command("pack")
@_friendly
def data_pack(
    source: Annotated[Path, typer.Argument(help="CSV/JSONL manifest, or a folder of class folders (of files, "
                                           "or of one subfolder per modality, paired by file stem)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
    maxcount: int = 1000,
    max_bad_fraction: float = 0.01,
    label_map: Annotated[str | None, typer.Option(help="JSON {old: new} merging classes")] = None,
    val_fraction: Annotated[float, typer.Option(help="a stratified val split of this share (seeded), "
                                                "when the source has none (carved from train)")] = 0.0,
    test_fraction: Annotated[float, typer.Option(help="a stratified test split of this share (seeded), "
                                                 "when the source has none (carved from train)")] = 0.0,
    allow_missing: Annotated[bool, typer.Option(help="class folders lacking a modality subfolder: keep the "
                                                "samples that have every modality (default: an error)")] = False,
    points_from: Annotated[str | None, typer.Option(help="also store each scan of this range modality as 3-D "
                                                    "points (hits only), made with azimuth.npy/zenith.npy")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing shard folder (never another folder)")] = False,
) -> None:
    """Pack user data (manifest or class folders) into shards."""
    from jointspace.data.manifest import pack_folder, pack_manifest
    from jointspace.data.pack_notes import pack_notes
    from jointspace.errors import UsageError

    mapping = json.loads(label_map) if label_map else None
    kw = {"label_map": mapping, "seed": seed, "maxcount": maxcount, "max_bad_fraction": max_bad_fraction,
          "val_fraction": val_fraction, "test_fraction": test_fraction, "overwrite": overwrite}
    if source.is_dir():
        info = pack_folder(source, out, **kw, allow_missing=allow_missing, points_from=points_from)
    elif allow_missing or points_from:
        raise UsageError("--allow-missing and --points-from read a folder of class folders, not a manifest")
    else:
        info = pack_manifest(source, out, **kw)
    counts = ", ".join(f"{s}: {v['n_samples']}" for s, v in info["splits"].items())
    console.print(f"wrote {out} ({counts}); modalities {info['modalities']}; skipped {info.get('skipped', 0)} "
                  "bad rows", soft_wrap=True, markup=False, highlight=False)
    for line in pack_notes(info):
        console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)


@data_app.command("subsample")
@_friendly
def data_subsample(
    root: Annotated[Path, typer.Argument(help="shard folder")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    keep: Annotated[list[str] | None, typer.Option("--keep", help="CLASS=FRACTION of that class to keep, "
                                                   "repeatable")] = None,
    split: str = "train",
    seed: int = 0,
    drop_from: Annotated[Path | None, typer.Option(help="an audit.csv (or audit folder): drop the samples it "
                                                   "flags with --issues")] = None,
    issues: Annotated[str, typer.Option(help="with --drop-from: the issue kinds to drop")] = "duplicate,leak,label",
    relabel: Annotated[bool, typer.Option(help="with --drop-from: give label issues cleanlab's suggested class "
                                          "instead of dropping them")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing shard folder (never the source, "
                                            "nor another folder)")] = False,
) -> None:
    """Copy a shard folder with some classes of one split thinned out, or without what an audit flagged."""
    from jointspace.data.subsample import clean_copy, parse_keep, subsample_classes
    from jointspace.errors import UsageError

    if drop_from is not None:
        if keep:
            raise UsageError("--keep and --drop-from make different copies: give one of them")
        from jointspace.audit.folder import cleaning_plan

        drop, new_labels = cleaning_plan(drop_from, issues, relabel)
        info = clean_copy(root, out, drop, new_labels, overwrite=overwrite)
        console.print(f"wrote {out}; dropped {info['cleaned']['dropped']}, relabelled {info['cleaned']['relabelled']}")
        return
    if not keep:
        raise UsageError("give --keep CLASS=FRACTION (thin classes out) or --drop-from audit.csv (clean a copy)")
    info = subsample_classes(root, out, parse_keep(keep), split, seed, overwrite=overwrite)
    counts = info["splits"][split]["class_counts"]
    console.print(f"wrote {out}; {split} class counts {counts}")


@data_app.command("inspect")
@_friendly
def data_inspect(
    root: Annotated[Path, typer.Argument(help="shard folder")],
    grid: Annotated[Path | None, typer.Option(help="also write a PNG grid of samples per class")] = None,
) -> None:
    """Counts per class and split, modality shapes, corrupt samples."""
    from jointspace.data.inspect import class_grid, format_inspection, inspect_shards

    result = inspect_shards(root)
    console.print(format_inspection(result))
    if grid is not None:
        class_grid(root, "train", grid)
        console.print(f"grid: {grid}")


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set train.epochs=5")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run from its latest checkpoint")]
OverwriteOpt = Annotated[bool, typer.Option(help="replace an existing run folder")]
TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="tensorboard, wandb (offline) or none "
                                                "(default: the config's)")]
SeedsOpt = Annotated[list[int] | None, typer.Option("--seed", help="train once per seed (repeat); runs are named "
                                                    "<name>-s<seed>")]


def _overrides(set_: list[str] | None, tracker: str | None) -> list[str]:
    return [*(set_ or []), *([f"tracker={tracker}"] if tracker else [])]


def _print_table(text: str) -> None:
    """Print a Markdown / plain-text table as is (no wrapping, no markup)."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def _train_task(config: Path, overrides: list[str], resume: bool, overwrite: bool, seeds: list[int] | None,
                task: str | None = None) -> list[Path]:
    """Train the config's task (or `task`) once, or once per seed; prints each run's summary."""
    from jointspace.tasks import get_task, load_task_config

    cfg = load_task_config(config, [*([f"task={task}"] if task else []), *overrides])
    spec = get_task(cfg.task)
    runs = []
    for seed in seeds or [cfg.seed]:
        one = cfg.model_copy(update={"seed": seed, "name": f"{cfg.name}-s{seed}"}) if seeds else cfg
        runs.append(spec.train(one, resume=resume, overwrite=overwrite))
        _print_table(spec.summary(runs[-1]))
    return runs


@app.command()
@_friendly
def train(
    config: Annotated[Path, typer.Argument(help="YAML config; its `task:` (contrastive, classify, metric, cilp, "
                                           "diffusion) says what it trains")],
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    tracker: TrackerOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """Train any task: a joint space, a fusion classifier, a metric-learning tower, CILP or a diffusion model."""
    _train_task(config, _overrides(set_, tracker), resume, overwrite, seeds)


def _require(run: Path, verb: str) -> None:
    from jointspace.tasks import require_verb

    require_verb(run, verb)


@app.command("eval")
@_friendly
def eval_(
    run: Annotated[Path, typer.Argument(help="run folder")],
    split: Annotated[str | None, typer.Option(help="split to evaluate (default: the config's)")] = None,
    data: Annotated[str | None, typer.Option(help="shard folder (default: the run's)")] = None,
    device: str = "auto",
    zero_shot_prompts: Annotated[Path | None, typer.Option(help="YAML/JSON file {class: [prompt, ...]} (default: "
                                                           "eval.zero_shot_prompts, else the data's captions)")] = None,
) -> None:
    """Retrieval (every modality pair), zero-shot and linear-probe metrics -> eval.json."""
    _require(run, "eval")
    from jointspace.evaluate.runner import evaluate_run
    from jointspace.viz.report import metrics_table

    result = evaluate_run(run, split, data, device, zero_shot_prompts)
    console.print(metrics_table(result))


@app.command()
@_friendly
def embed(
    run: Annotated[Path, typer.Argument(help="run folder")],
    shards: Annotated[Path, typer.Argument(help="shard folder to embed")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    split: Annotated[str, typer.Option(help="split of the shard folder")] = "test",
    format_: Annotated[str, typer.Option("--format", help="npy or parquet")] = "npy",
    device: str = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace earlier embeddings in --out (never another folder)")] = False,
) -> None:
    """Write embeddings (+ keys, labels) per modality of a shard folder's split."""
    _require(run, "embed")
    from jointspace.evaluate.embeddings_folder import embed_to_folder

    meta = embed_to_folder(run, shards, out, split, format_, device, overwrite=overwrite)
    dims = ", ".join(f"{m}: {d}-d" for m, d in meta["dims"].items())
    console.print(f"wrote {out} ({meta['n_samples']} samples of {split}; {dims}; {format_})")


@app.command()
@_friendly
def report(run: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """Plots and one HTML report for an evaluated run."""
    _require(run, "report")
    from jointspace.viz.report import write_report

    console.print(f"report: {write_report(run)}")


@app.command()
@_friendly
def demo(
    name: str = "digits",
    output_dir: Annotated[str, typer.Option(help="where runs go")] = "runs",
    data_dir: Annotated[str, typer.Option(help="where the generated shards go")] = "data/digits",
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the run folder of an earlier demo")] = False,
) -> None:
    """Generate the digits set, train a joint space, evaluate it and write the report."""
    from jointspace.config import load_config
    from jointspace.evaluate.runner import evaluate_run
    from jointspace.run_dir import RUN_FOLDER
    from jointspace.tasks.contrastive import train as run_train
    from jointspace.viz.report import metrics_table, write_report


    t0 = time.time()
    overrides = [f"name={name}", f"output_dir={output_dir}", f"data.path={data_dir}", *(set_ or [])]
    cfg = load_config(builtin_config("digits"), overrides)
    RUN_FOLDER.check(cfg.run_dir, overwrite, flag="--overwrite (make demo DEMO_FLAGS=--overwrite)")
    run_dir = run_train(cfg, overwrite=overwrite)
    result = evaluate_run(run_dir)
    path = write_report(run_dir)
    console.print(metrics_table(result))
    console.print(f"report: {path}   ({time.time() - t0:.0f}s in all)")


@app.command(hidden=True)
@_friendly
def classify(config: Annotated[Path, typer.Argument()], set_: SetOpt = None, resume: ResumeOpt = False,
             overwrite: OverwriteOpt = False, tracker: TrackerOpt = None, seeds: SeedsOpt = None) -> None:
    """Alias of `jointspace train CONFIG` with task: classify."""
    _train_task(config, _overrides(set_, tracker), resume, overwrite, seeds, task="classify")


@app.command(hidden=True)
@_friendly
def metric(config: Annotated[Path, typer.Argument()], set_: SetOpt = None, resume: ResumeOpt = False,
           overwrite: OverwriteOpt = False, tracker: TrackerOpt = None, seeds: SeedsOpt = None) -> None:
    """Alias of `jointspace train CONFIG` with task: metric."""
    _train_task(config, _overrides(set_, tracker), resume, overwrite, seeds, task="metric")


@app.command(hidden=True)
@_friendly
def cilp(config: Annotated[Path, typer.Argument()], set_: SetOpt = None, resume: ResumeOpt = False,
         overwrite: OverwriteOpt = False, tracker: TrackerOpt = None, seeds: SeedsOpt = None) -> None:
    """Alias of `jointspace train CONFIG` with task: cilp (several seeds: one table of all)."""
    from jointspace.tasks.cilp import cilp_table
    from jointspace.tasks.common import read_done

    runs = _train_task(config, _overrides(set_, tracker), resume, overwrite, seeds, task="cilp")
    if len(runs) > 1:
        _print_table(cilp_table([read_done(r) for r in runs]))


@app.command()
@_friendly
def compare(
    grid: Annotated[Path, typer.Argument(help="grid YAML: base config, variants, seeds")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for every run")] = None,
    tracker: TrackerOpt = None,
) -> None:
    """Run a grid of variants x seeds of any task (finished runs are skipped) -> comparison.md/.csv/.png."""
    from jointspace.compare import run_grid

    grid_dir = run_grid(grid, _overrides(set_, tracker), log=console.print)
    _print_table((grid_dir / "comparison.md").read_text())
    console.print(f"written: {grid_dir}/comparison.md, comparison.csv, comparison.png")


@app.command()
@_friendly
def sweep(
    file: Annotated[Path, typer.Argument(help="sweep file: base config, search space, objective")],
    jobs: Annotated[int | None, typer.Option(min=1, help="trials at a time (processes; default: the file's)")] = None,
) -> None:
    """Search hyperparameters of any task with Optuna (resumable: rerun the same command)."""
    from jointspace.sweep import run_sweep

    run_sweep(file, jobs, log=console.print)


@app.command()
@_friendly
def towers() -> None:
    """List the registered modality kinds and towers, with each tower's parameters and defaults."""
    from rich.table import Table

    from jointspace.kinds import describe
    from jointspace.towers import list_towers, tower_parameters, tower_pretrained, tower_summary

    kinds = Table(title="modality kinds")
    for col in ("kind", "stored as", "query words", "default tower", "roles"):
        kinds.add_column(col)
    for k in describe():
        kinds.add_row(k["name"], ", ".join(k["extensions"]), ", ".join(k["aliases"]), k["default_tower"],
                      ", ".join(k["roles"]))
    console.print(kinds)
    table = Table(title="towers (model.towers.<modality>: {name, params})")
    for col in ("tower", "parameters (defaults)", "what"):
        table.add_column(col)
    for name in list_towers():
        params = tower_parameters(name)
        shown = "any" if params is None else ", ".join(f"{k}={v!r}" for k, v in params.items())
        table.add_row(name, shown, " ".join(filter(None, [tower_summary(name), tower_pretrained(name)])))
    console.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
