"""The `jointspace` command line: demo, data, train, eval, report, classify, metric, compare, cilp, augment."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.augment.cli import augment_app
from jointspace.cli_errors import friendly
from jointspace.index.cli import index_app, search, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and search joint embedding spaces.")
data_app = typer.Typer(no_args_is_help=True, help="Make, pack and inspect WebDataset shards.")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(augment_app, name="augment")
app.command()(search)
app.command()(serve)
console = Console()
_friendly = friendly(console)


def builtin_config(name: str) -> Path:
    """Path of a config shipped with the package (configs/<name>.yaml)."""
    return Path(str(resources.files("jointspace") / "configs" / f"{name}.yaml"))


@data_app.command("synth")
@_friendly
def data_synth(
    name: Annotated[str, typer.Argument(help="digits (real: images + spoken digits + captions) or shapes (RGB + LiDAR)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
    n: Annotated[int | None, typer.Option(help="number of samples (default: the whole set / 3000)")] = None,
    maxcount: Annotated[int, typer.Option(help="samples per shard")] = 1000,
) -> None:
    """Write a built-in dataset as train/val/test WebDataset shards."""
    from jointspace.data.builtin import synthesize

    t0 = time.time()
    info = synthesize(name, out, seed=seed, n=n, maxcount=maxcount)
    counts = ", ".join(f"{s}: {v['n_samples']}" for s, v in info["splits"].items())
    console.print(f"wrote {out} ({counts}) in {time.time() - t0:.1f}s; modalities {info['modalities']}")


@data_app.command("pack")
@_friendly
def data_pack(
    source: Annotated[Path, typer.Argument(help="CSV/JSONL manifest, or a folder of class folders")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
    maxcount: int = 1000,
    max_bad_fraction: float = 0.01,
    label_map: Annotated[str | None, typer.Option(help="JSON {old: new} merging classes")] = None,
) -> None:
    """Pack user data (manifest or class folders) into shards."""
    from jointspace.data.manifest import pack_folder, pack_manifest

    mapping = json.loads(label_map) if label_map else None
    kw = {"label_map": mapping, "seed": seed, "maxcount": maxcount, "max_bad_fraction": max_bad_fraction}
    info = pack_folder(source, out, **kw) if source.is_dir() else pack_manifest(source, out, **kw)
    counts = ", ".join(f"{s}: {v['n_samples']}" for s, v in info["splits"].items())
    console.print(f"wrote {out} ({counts}); skipped {info.get('skipped', 0)} bad rows")


@data_app.command("subsample")
@_friendly
def data_subsample(
    root: Annotated[Path, typer.Argument(help="shard folder")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    keep: Annotated[list[str], typer.Option("--keep", help="CLASS=FRACTION of that class to keep, repeatable")],
    split: str = "train",
    seed: int = 0,
) -> None:
    """Copy a shard folder with some classes of one split thinned out (class-imbalance experiments)."""
    from jointspace.data.subsample import parse_keep, subsample_classes

    info = subsample_classes(root, out, parse_keep(keep), split, seed)
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


@app.command()
@_friendly
def train(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set train.epochs=5")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its latest checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
) -> None:
    """Train a joint space."""
    from jointspace.config import load_config
    from jointspace.tasks.contrastive import train as run_train

    cfg = load_config(config, set_ or [])
    run_dir = run_train(cfg, resume=resume, overwrite=overwrite)
    console.print(f"done: {run_dir}")


@app.command("eval")
@_friendly
def eval_(
    run: Annotated[Path, typer.Argument(help="run folder")],
    split: Annotated[str | None, typer.Option(help="split to evaluate (default: the config's)")] = None,
    data: Annotated[str | None, typer.Option(help="shard folder (default: the run's)")] = None,
    device: str = "auto",
) -> None:
    """Retrieval (every modality pair), zero-shot and linear-probe metrics -> eval.json."""
    from jointspace.evaluate.runner import evaluate_run
    from jointspace.viz.report import metrics_table

    result = evaluate_run(run, split, data, device)
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
) -> None:
    """Write embeddings (+ keys, labels) per modality of a shard folder's split."""
    from jointspace.evaluate.export import export_embeddings

    meta = export_embeddings(run, shards, out, split, format_, device)
    dims = ", ".join(f"{m}: {d}-d" for m, d in meta["dims"].items())
    console.print(f"wrote {out} ({meta['n_samples']} samples of {split}; {dims}; {format_})")


@app.command()
@_friendly
def report(run: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """Plots and one HTML report for an evaluated run."""
    from jointspace.viz.report import write_report

    console.print(f"report: {write_report(run)}")


@app.command()
@_friendly
def demo(
    name: str = "digits",
    output_dir: Annotated[str, typer.Option(help="where runs go")] = "runs",
    data_dir: Annotated[str, typer.Option(help="where the generated shards go")] = "data/digits",
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override")] = None,
) -> None:
    """Generate the digits set, train a joint space, evaluate it and write the report."""
    from jointspace.config import load_config
    from jointspace.evaluate.runner import evaluate_run
    from jointspace.tasks.contrastive import train as run_train
    from jointspace.viz.report import metrics_table, write_report

    t0 = time.time()
    overrides = [f"name={name}", f"output_dir={output_dir}", f"data.path={data_dir}", *(set_ or [])]
    cfg = load_config(builtin_config("digits"), overrides)
    run_dir = run_train(cfg, overwrite=True)
    result = evaluate_run(run_dir)
    path = write_report(run_dir)
    console.print(metrics_table(result))
    console.print(f"report: {path}   ({time.time() - t0:.0f}s in all)")


TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="tensorboard (default), wandb (offline) or none")]


def _overrides(set_: list[str] | None, tracker: str | None) -> list[str]:
    return [*(set_ or []), *([f"tracker={tracker}"] if tracker else [])]


def _print_table(text: str) -> None:
    """Print a Markdown / plain-text table as is (no wrapping, no markup)."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


@app.command()
@_friendly
def classify(
    config: Annotated[Path, typer.Argument(help="YAML config with a fusion section")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set fusion.kind=early")] = None,
    tracker: TrackerOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
) -> None:
    """Train and test a fusion classifier (early / intermediate / late / transformer) over data.modalities."""
    from jointspace.config import load_config
    from jointspace.tasks.classify import train_classifier

    cfg = load_config(config, _overrides(set_, tracker))
    run_dir = train_classifier(cfg, overwrite=overwrite)
    s = json.loads((run_dir / "done.json").read_text())
    _print_table((run_dir / f"classification_{cfg.eval.split}.txt").read_text())
    console.print(f"done: {run_dir}  test top-1 {s['test_accuracy']:.4f}, val loss {s['val_loss']:.4f}, "
                  f"{s['n_params']:,} parameters, {s['seconds_per_epoch']:.2f} s/epoch")


@app.command()
@_friendly
def metric(
    config: Annotated[Path, typer.Argument(help="YAML config with a metric section")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set metric.loss.name=ArcFaceLoss")] = None,
    tracker: TrackerOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
) -> None:
    """Metric learning of one tower (pytorch-metric-learning loss + miner), k-NN accuracy and a UMAP."""
    from jointspace.config import load_config
    from jointspace.tasks.metric import train_metric

    run_dir = train_metric(load_config(config, _overrides(set_, tracker)), overwrite=overwrite)
    s = json.loads((run_dir / "done.json").read_text())
    console.print(f"done: {run_dir}  k-NN accuracy {s['test_accuracy']:.4f}, precision@1 {s['precision_at_1']:.4f}, "
                  f"MAP@R {s['mean_average_precision_at_r']:.4f}, val loss {s['val_loss']:.4f}")


@app.command()
@_friendly
def compare(
    grid: Annotated[Path, typer.Argument(help="grid YAML: base config, variants, seeds")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for every run")] = None,
    tracker: TrackerOpt = None,
) -> None:
    """Run a grid of variants x seeds (finished runs are skipped) -> comparison.md/.csv/.png."""
    from jointspace.compare import run_grid

    try:
        grid_dir = run_grid(grid, _overrides(set_, tracker), log=console.print)
    except RuntimeError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    _print_table((grid_dir / "comparison.md").read_text())
    console.print(f"written: {grid_dir}/comparison.md, comparison.csv, comparison.png")


@app.command()
@_friendly
def cilp(
    config: Annotated[Path, typer.Argument(help="YAML config (contrastive image<->LiDAR + cilp section)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="seeds to run (repeat); default: the config's")] = None,
    tracker: TrackerOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing run folders")] = False,
) -> None:
    """CILP: contrastive RGB<->LiDAR pretraining, RGB->LiDAR projector (MSE), LiDAR classifier used from RGB."""
    from jointspace.config import load_config
    from jointspace.tasks.cilp import cilp_table, run_cilp

    cfg = load_config(config, _overrides(set_, tracker))
    rows = []
    for seed in seeds or [cfg.seed]:
        one = cfg.model_copy(update={"seed": seed, "name": f"{cfg.name}-s{seed}" if seeds else cfg.name})
        rows.append(run_cilp(one, overwrite=overwrite)["table"])
        _print_table(cilp_table(rows[-1:]))
    if len(rows) > 1:
        _print_table(cilp_table(rows))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
