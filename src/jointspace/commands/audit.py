"""`jointspace audit`: parse and dispatch to jointspace.audit.run."""

from __future__ import annotations

import math
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly
from jointspace.commands.index import MilvusTokenOpt

console = Console()


@friendly(console)
def audit(
    run: Annotated[Path, typer.Argument(help="run folder (its joint space, or a classify run's classifier)")],
    data: Annotated[Path, typer.Argument(help="shard folder to audit")],
    out: Annotated[Path, typer.Option("--out", help="output folder (audit.json, audit.csv, samples.csv, audit.html)")],
    split: Annotated[list[str] | None, typer.Option("--split", help="split to audit, repeatable (default: all; "
                                                    "pairs across train and val/test are leaks)")] = None,
    finders: Annotated[str, typer.Option(help="comma-separated: exact,near,mismatch,label,outlier")] =
        "exact,near,mismatch,label,outlier",
    near_threshold: Annotated[float, typer.Option(help="near duplicates: cosine at least this in every modality")] = 0.95,
    near_ratio: Annotated[float, typer.Option(help="near duplicates: and a joint distance at most this times the "
                                              "pair's 10th-neighbour distance")] = 0.1,
    near_content: Annotated[float, typer.Option(help="near duplicates by content: content vectors (block means of "
                                                "images, scans, features) at least this cosine in every "
                                                "modality that has them, captions identical; the joint "
                                                "space's pairs must reach it too")] = 0.999,
    mismatch_margin: Annotated[float, typer.Option(help="mismatched pairs: 3 candidates beat the own partner by at "
                                                   "least this many nats of the run's logits, both ways "
                                                   "(ln 10: each 10 times likelier)")] = math.log(10),
    class_evidence: Annotated[float, typer.Option(help="mismatched pairs, where the data has labels: or the margin "
                                                  "plus the class margin (how many nats each modality's k-fold "
                                                  "probe prefers its likeliest class to the other modality's, "
                                                  "the smaller way) at least this many nats (ln 30; inf: off)")
                              ] = math.log(30),
    folds: Annotated[int, typer.Option(min=2, help="label issues and the mismatch finder's class margins: folds of "
                                       "the linear probes")] = 5,
    refit: Annotated[int, typer.Option(help="K >= 2: train K runs of RUN's config on DATA, each without one fold "
                                       "of its train split; a train sample's label is judged by the run that "
                                       "did not train on it, its pairs by the mean of that run's margin and "
                                       "RUN's and by that run's class margins (K trainings; 0: off)")] = 0,
    backend: Annotated[str, typer.Option(help="where the neighbour searches run: faiss (in this process) or milvus "
                                         "(a collection of the audit's own, dropped at the end)")] = "faiss",
    uri: Annotated[str | None, typer.Option(help="milvus: a Milvus Lite file (.db) or a server "
                                            "(http://host:19530); default: a temporary Lite file")] = None,
    milvus_token: MilvusTokenOpt = None,
    device: str = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an earlier audit in --out (never another folder)")] = False,
) -> None:
    """Find duplicates, leaks, label issues, mismatched pairs and outliers of a dataset through a run's joint space
    (a classify run: exact duplicates, near copies by content, label issues from its own classifier)."""
    from jointspace.audit.run import Settings, run_audit
    from jointspace.audit.search import NeighbourSearch
    from jointspace.tasks.refit import train_without

    own = _classifier_of(run)
    settings = Settings(finders=tuple(f.strip() for f in finders.split(",") if f.strip()), near_threshold=near_threshold,
                        near_ratio=near_ratio, near_content=near_content, mismatch_margin=mismatch_margin,
                        class_evidence=class_evidence, folds=folds, refit=refit)
    search = NeighbourSearch(backend, uri, milvus_token)
    classified = (lambda splits: own(run, data, splits, device)) if own is not None else None
    if refit:
        out.parent.mkdir(parents=True, exist_ok=True)
    # the fold runs go in a folder of this call's own beside --out, removed at the end
    with tempfile.TemporaryDirectory(prefix=".refit-", dir=out.parent) if refit else nullcontext() as work:
        retrain = (lambda held: train_without(run, data, held, work, device)) if refit and own is None else None
        result = run_audit(run, data, out, split, settings, overwrite=overwrite, device=device, search=search,
                           classified=classified, refit=retrain)
    _say_written(out, result, settings.finders)


def _classifier_of(run: Path):
    """A classify run's `class_probabilities` (its audit judges labels by its own classifier); None for a run
    with a joint space, or a clear error naming the runs that have one."""
    from jointspace.tasks import TASKS, require_verb, task_of_run

    task = TASKS.get(task_of_run(run))
    own = task.class_probabilities if task is not None and "embed" not in task.verbs else None
    if own is None:
        require_verb(run, "embed")
    return own


def _say_written(out: Path, result: dict, finders: tuple[str, ...]) -> None:
    """One line: where the audit went, its samples and counts, and the chosen finders that could not run."""
    counts = ", ".join(f"{k}: {v}" for k, v in result["counts"].items())
    skipped = [f for f in finders if f not in result["finders_run"]]
    note = f"; not run: {', '.join(skipped)} (they need a joint space, two modalities or labels)" if skipped else ""
    console.print(f"wrote {out} ({result['n_samples']} samples; {counts}){note}", soft_wrap=True, markup=False,
                  highlight=False)
