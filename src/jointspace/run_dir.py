"""The run folder: the one owner of its file names and of reading and writing what is in it.

Every task, `report`, `compare`, `sweep` and `viz` reach a run's files through `RunDir`; nothing else in
`src/` spells these names. The engine keeps its own layout inside `checkpoints/` (`<name>/`, `latest.json`).
Below every module but `outputs` and `swap`: it imports no torch, no config, no engine.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from jointspace.errors import UsageError
from jointspace.outputs import OutputType, atomic_write_text

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
LAST_AUDIT = "last_audit.json"  # where `jointspace audit` last wrote its folder for this run, and its counts

RESUME_OR_OVERWRITE = "--resume to continue it or --overwrite"  # the flags that act on an existing run
# a run folder (any task's, a CILP or pipeline folder) holds its config and one of these from its first step on
RUN_FOLDER = OutputType("run folder", tuple((CONFIG, mark) for mark in (
    RUN_INFO, METRICS, DONE, f"{CHECKPOINTS}/{LATEST}", f"*/{CONFIG}", f"*/{METRICS}")))


class RunDirError(UsageError):
    """A run folder's file is not what jointspace writes there; the message names it."""


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


I = TypeVar("I", bound="RunInfo")


class RunInfo(BaseModel):
    """run.json: what rebuilds the model without the data. The fields every task records (an old run.json
    without one reads as its default) and the task's own part (`part`: the UNet and schedule of a
    diffusion run, a metric run's modality, ...), written back with the keys it had, in their order.
    Each task types its part in a subclass (`tasks.registry.Task.info`: `MetricInfo(RunInfo)` adds
    `modality`, ...); read through the base class, a part is kept as written."""

    model_config = ConfigDict(extra="allow", frozen=True)

    task: str = "contrastive"  # runs from before tasks were recorded are contrastive
    kinds: dict[str, str] = {}  # modality -> kind
    prep: dict[str, Any] | None = None  # Prep.to_json() (runs from before it was recorded: None)
    class_names: list[Any] | None = None
    data_path: str | None = None
    skipped: dict[str, Any] = {}  # split -> {n_skipped, reasons} of the samples that could not be read
    init_from: dict[str, str] | None = None  # source run -> fingerprint of the weights it started from
    _order: tuple[str, ...] = PrivateAttr(default=())

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self._order = tuple(fields)

    @property
    def part(self) -> dict[str, Any]:
        """The task's own fields (typed by the task's RunInfo subclass, or kept as written)."""
        return {k: v for k, v in self.to_json().items() if k not in RunInfo.model_fields}

    def as_type(self, info_type: type[I]) -> I:
        """This run.json read as a task's own RunInfo subclass (its part typed and checked)."""
        return self if isinstance(self, info_type) else info_type.from_json(self.to_json())

    def get(self, key: str, default: Any = None) -> Any:
        """A field as written (common or the task's own), or `default` when run.json lacks it."""
        return self.to_json().get(key, default)

    def __getitem__(self, key: str) -> Any:
        """A field as written (KeyError when run.json lacks it), as callers of the plain mapping read it."""
        return self.to_json()[key]

    def updated(self, **changes: Any) -> RunInfo:
        """A copy with `changes` (a new key goes last, an existing one keeps its place)."""
        return type(self)(**{**self.to_json(), **changes})

    def to_json(self) -> dict[str, Any]:
        """The mapping written to run.json: the keys given, in their order."""
        dumped = self.model_dump(mode="json")
        return {k: dumped[k] for k in self._order}

    @classmethod
    def of(cls, info: RunInfo | dict) -> RunInfo:
        """`info` as a RunInfo (callers may still hand over the plain mapping)."""
        return info if isinstance(info, RunInfo) else cls.from_json(info)

    @classmethod
    def from_json(cls, raw: Any, source: str = RUN_INFO) -> Self:
        if not isinstance(raw, dict):
            raise RunDirError(f"{source}: not a {RUN_INFO} (not a JSON object)")
        try:
            return cls(**raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise RunDirError(f"{source}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


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

    @property
    def last_audit(self) -> Path:
        return self.path / LAST_AUDIT

    def read_last_audit(self) -> dict | None:
        """The pointer to the run's last audit (its folder, data, splits, counts), or None when never audited."""
        try:
            value = json.loads(self.last_audit.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def write_last_audit(self, summary: dict) -> None:
        atomic_write_text(self.last_audit, json.dumps(summary, indent=2))

    def embeddings(self, split: str) -> Path:
        """Where evaluation writes a split's embeddings (eval/embeddings_<split>.npz)."""
        return self.path / EVAL_DIR / f"embeddings_{split}.npz"

    def classification(self, split: str, suffix: str = ".json") -> Path:
        """A classifier's report on a split (classification_<split>.json, .txt)."""
        return self.path / f"classification_{split}{suffix}"

    def stage(self, name: str) -> RunDir:
        """A run folder inside this one (a CILP stage, a pipeline stage)."""
        return RunDir(self.path / name)

    def create(self, resume: bool = False, overwrite: bool = False) -> RunDir:
        """Create the folder; an existing one is kept to resume, replaced with `overwrite` when it is a run
        folder, else refused; a folder that is not a run is never replaced. (Commands keep the old run
        until the new one stands in its place: tasks.lifecycle.keeping_old_run.)"""
        replace = self.path.exists() and not resume
        if replace and RUN_FOLDER.check(self.path, overwrite, flag=RESUME_OR_OVERWRITE):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def start_afresh(self) -> RunDir:
        """Empty the folder (a folder a run owns inside its own, as a CILP head stage): whatever is there goes."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self

    def has_info(self) -> bool:
        return self.run_info.exists()

    def read_info(self) -> RunInfo:
        """run.json; a folder without one is not a run."""
        if not self.run_info.exists():
            raise FileNotFoundError(f"{self.path}: not a jointspace run (no {RUN_INFO}); train one with "
                                    "`jointspace train`")
        return RunInfo.from_json(json.loads(self.run_info.read_text()), str(self.run_info))

    def write_info(self, info: RunInfo) -> None:
        """What is needed to rebuild the model without the data: modality kinds, channels, classes."""
        self.run_info.write_text(json.dumps(info.to_json(), indent=2))

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


def read_run_info(run_dir: str | Path) -> RunInfo:
    """run.json of a run folder."""
    return RunDir(run_dir).read_info()


def write_run_info(run_dir: str | Path, info: RunInfo) -> None:
    """Write run.json (a module function, so a benchmark can wrap it)."""
    RunDir(run_dir).write_info(info)
