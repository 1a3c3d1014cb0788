"""Write and read WebDataset `.tar` shards; corrupt shards and samples are skipped and counted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from jointspace.errors import JointspaceError, UsageError
from jointspace.kinds import decode_file, get_kind
from jointspace.outputs import OutputType, json_with

INFO_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
SHARD_FOLDER = OutputType("shard folder", ((INFO_FILE,),), json_with(INFO_FILE, "modalities", "splits"))


class DataError(JointspaceError, RuntimeError):
    """Input data is missing or too corrupt to use; the message names the files."""


# ---- encoding: one file per modality inside a sample; each kind says how its values are stored ----

def decode_value(ext: str, data: bytes) -> Any:
    """Decode one stored file by its extension: `cls` and `json` here, modality files by their kind."""
    if ext == "cls":
        return int(data.decode("ascii").strip())
    if ext == "json":
        return json.loads(data.decode("utf-8"))
    return decode_file(ext, data)


# ---- writing ----

def write_dataset(
    out_dir: str | Path,
    splits: dict[str, Iterable[dict]],
    modalities: dict[str, str],
    class_names: list[str],
    extra_info: dict | None = None,
    maxcount: int = 1000,
    overwrite: bool = False,
    sources: Iterable[str | Path] = (),
) -> dict:
    """Write samples per split into `out_dir/<split>/shard-NNNNNN.tar` plus `dataset.json`.

    A sample is a dict with `key`, one entry per modality (kinds: see `jointspace.kinds`),
    `label` (int) and optional `meta` (dict). The folder appears atomically when complete; an existing
    shard folder is replaced only with `overwrite`, anything else never (`SHARD_FOLDER.check`), nor the
    `sources` the samples are read from.
    """
    info: dict = {"modalities": modalities, "class_names": list(class_names), "splits": {}}
    info.update(extra_info or {})
    with SHARD_FOLDER.staged(out_dir, overwrite, sources) as tmp:
        for split, samples in splits.items():
            (tmp / split).mkdir()
            counts: dict[str, int] = {}
            n = 0
            pattern = str(tmp / split / "shard-%06d.tar")
            # whole-second mtimes: a float one costs every tar member a pax header, read back on every pass
            with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, mtime=int(time.time())) as sink:
                for sample in samples:
                    record = {"__key__": str(sample["key"]), "cls": str(int(sample["label"])).encode()}
                    for name, kind in modalities.items():
                        if name in sample and sample[name] is not None:
                            ext, data = get_kind(kind).encode(sample[name])
                            record[f"{name}.{ext}"] = data
                    if sample.get("meta") is not None:
                        record["json"] = json.dumps(sample["meta"]).encode()
                    sink.write(record)
                    label = int(sample["label"])
                    counts[str(label)] = counts.get(str(label), 0) + 1
                    n += 1
            shards = sorted(p.name for p in (tmp / split).glob("*.tar"))
            info["splits"][split] = {"n_samples": n, "shards": shards, "class_counts": counts}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def read_info(root: str | Path) -> dict:
    """Read `dataset.json` of a shard folder."""
    path = Path(root) / INFO_FILE
    if not path.exists():
        raise DataError(f"{root}: not a jointspace shard folder (no {INFO_FILE}); see `jointspace data synth`")
    return read_json(path)


def read_json(path: Path) -> dict:
    """A JSON object from a file that jointspace wrote; unreadable or not an object: DataError naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def split_urls(root: str | Path, split: str) -> list[str]:
    """Shard paths of one split."""
    folder = Path(root) / split
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    if not urls:
        raise DataError(f"{folder}: no .tar shards for split {split!r}")
    return urls


# ---- reading ----

@dataclass
class ReadStats:
    """Counts of what reading a split kept and skipped."""

    n_ok: int = 0
    n_bad: int = 0
    n_expected: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def n_missing(self) -> int:
        lost = (self.n_expected - self.n_ok) if self.n_expected is not None else self.n_bad
        return max(lost, self.n_bad)

    @property
    def bad_fraction(self) -> float:
        total = max(self.n_ok + self.n_missing, 1)
        return self.n_missing / total

    def record(self, what: str) -> None:
        self.n_bad += 1
        if len(self.errors) < 50:
            self.errors.append(what)

    def check(self, max_bad_fraction: float, where: str) -> None:
        """Raise DataError when the skipped fraction exceeds the threshold."""
        if self.bad_fraction > max_bad_fraction:
            shown = "\n  ".join(self.errors[:10])
            raise DataError(
                f"{where}: {self.n_missing} of {self.n_ok + self.n_missing} samples unreadable "
                f"({self.bad_fraction:.1%} > max_bad_fraction {max_bad_fraction:.1%}):\n  {shown}"
            )


def iter_raw(urls: list[str], stats: ReadStats) -> Iterator[dict]:
    """The raw samples ({member name: bytes, __key__, __url__}) of shards; unreadable shards are counted."""

    def handler(exn: Exception) -> bool:
        where = next((a for a in exn.args if isinstance(a, str) and a.endswith(".tar")), "?")
        stats.record(f"{where}: {type(exn).__name__}: {exn.args[0] if exn.args else ''}")
        return True

    yield from wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))


def decode_own(raw: dict, modalities: list[str] | None) -> dict:
    """A jointspace sample (`<modality>.<ext>`, `cls`, `json` members) as {key, label, meta, <modality>: value}."""
    sample: dict[str, Any] = {"key": raw.get("__key__", "?"), "meta": {}}
    for name, data in raw.items():
        if name.startswith("__"):
            continue
        base, _, ext = name.rpartition(".")
        if not base:  # "cls", "json"
            base, ext = name, name
        if base == "cls":
            sample["label"] = decode_value("cls", data)
        elif base == "json":
            sample["meta"] = decode_value("json", data)
        elif modalities is None or base in modalities:
            sample[base] = decode_value(ext, data)
    missing = [m for m in (modalities or []) if m not in sample]
    if missing or "label" not in sample:
        raise UsageError(f"missing {missing or ['label']}")
    return sample


def iter_samples(urls: list[str], stats: ReadStats, modalities: list[str] | None = None,
                 decode: Callable[[dict, list[str] | None], dict] | None = None) -> Iterator[dict]:
    """Yield decoded samples {key, label, meta, <modality>: value}; skips and counts corrupt ones.
    `decode` reads a raw sample (default: jointspace's own layout; foreign shards: their Layout's)."""
    decode = decode or decode_own
    for raw in iter_raw(urls, stats):
        try:
            sample = decode(raw, modalities)
        except Exception as exn:  # noqa: BLE001 - any undecodable sample is skipped and counted
            stats.record(f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}: {type(exn).__name__}: {exn}")
            continue
        stats.n_ok += 1
        yield sample
