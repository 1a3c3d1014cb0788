"""The run folder: the one owner of its file names and of reading and writing what is in it.

Every task, `report`, `compare`, `sweep` and `viz` reach a run's files through `RunDir`; nothing else in
`src/` spells these names. The engine keeps its own layout inside `checkpoints/` (`<name>/`, `latest.json`).
Below every module but `outputs` and `swap`: it imports no torch, no config, no engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jointspace.outputs import OutputKind, atomic_write_text

CONFIG = "config.yaml"
RUN_INFO = "run.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
REPORT = "report.html"
DONE = "done.json"
TRAIN_SUMMARY = "train_summary.json"  # a contrastive run's last file (steps, seconds, throughput)
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"  # the engine's pointer in checkpoints/ (engine.checkpoint.LATEST; a test ties them)
EVAL_DIR = "eval"  # embeddings_<split>.npz
PLOTS = "plots"

# a run folder (any task's, a CILP or pipeline folder) holds its config and one of these from its first step on
RUN_FOLDER = OutputKind("run folder", tuple((CONFIG, mark) for mark in (
    RUN_INFO, METRICS, DONE, f"{CHECKPOINTS}/{LATEST}", f"*/{CONFIG}", f"*/{METRICS}")))


def parse_jsonl(text: str) -> list[dict]:
    """The JSON objects of a .jsonl text; blank or malformed lines (a torn last line: the writer was
    killed mid-append) are skipped."""
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


@dataclass(frozen=True)
class RunDir:
    """A run folder's paths and its small JSON files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def done(self) -> Path:
        return self.path / DONE

    @property
    def train_summary(self) -> Path:
        return self.path / TRAIN_SUMMARY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def embeddings(self, split: str) -> Path:
        """Where evaluation writes a split's embeddings (eval/embeddings_<split>.npz)."""
        return self.path / EVAL_DIR / f"embeddings_{split}.npz"

    def classification(self, split: str, suffix: str = ".json") -> Path:
        """A classifier's report on a split (classification_<split>.json, .txt)."""
        return self.path / f"classification_{split}{suffix}"

    def stage(self, name: str) -> RunDir:
        """A run folder inside this one (a CILP stage, a pipeline stage)."""
        return RunDir(self.path / name)

    def has_info(self) -> bool:
        return self.run_info.exists()

    def read_info(self) -> dict:
        """run.json; a folder without one is not a run."""
        if not self.run_info.exists():
            raise FileNotFoundError(f"{self.path}: not a jointspace run (no {RUN_INFO}); train one with "
                                    "`jointspace train`")
        return json.loads(self.run_info.read_text())

    def write_info(self, info: dict) -> None:
        """What is needed to rebuild the model without the data: modality kinds, channels, classes."""
        self.run_info.write_text(json.dumps(info, indent=2))

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's records in order ([] when missing; a torn last line is skipped)."""
        if not self.metrics.is_file():
            return []
        return parse_jsonl(self.metrics.read_text(encoding="utf-8", errors="replace"))

    def write_done(self, summary: dict) -> None:
        """The run's summary as its done marker (atomically: present only when the run finished)."""
        atomic_write_text(self.done, json.dumps(summary, indent=2))

    def read_done(self) -> dict | None:
        """The summary of a finished run, or None when it has not finished."""
        return json.loads(self.done.read_text()) if self.done.exists() else None

    def read_eval(self) -> dict:
        """eval.json ({} when the run was not evaluated)."""
        return json.loads(self.eval.read_text(encoding="utf-8")) if self.eval.is_file() else {}

    def write_eval(self, result: dict) -> None:
        self.eval.write_text(json.dumps(result, indent=2))

    def read_train_summary(self) -> dict:
        return json.loads(self.train_summary.read_text())

    def write_train_summary(self, summary: dict) -> None:
        self.train_summary.write_text(json.dumps(summary))


def read_run_info(run_dir: str | Path) -> dict:
    """run.json of a run folder."""
    return RunDir(run_dir).read_info()


def write_run_info(run_dir: str | Path, info: dict) -> None:
    """Write run.json (a module function, so a benchmark can wrap it)."""
    RunDir(run_dir).write_info(info)
