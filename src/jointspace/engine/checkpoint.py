"""Atomic checkpoints: safetensors for tensors, JSON for the rest; `latest.json` moves last.

A checkpoint is a folder `checkpoints/<name>/` with `model.safetensors`, `optimizer.safetensors`
(optimizer moments + torch RNG state) and `state.json`. It is written into a temporary folder,
fsynced and renamed into place; only then is `latest.json` atomically replaced to point at it.
A crash (even kill -9) at any moment leaves `latest.json` naming a complete checkpoint. On a short disk,
older checkpoints go first to make room (`make_room`: never the newest), and a disk that still fills is
one DiskFull line with the bytes needed and free, the half-written folder removed.
`checksums.json` records each file's size and sha256: at resume, a checkpoint that fails its check (a
flipped byte, a truncated file) is set aside as `.corrupt-<name>` with one line, and the newest good one
before it is used. Nothing here unpickles: loading untrusted files cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from jointspace.outputs import (
    atomic_write_text,
    disk_guard,
    follow_umask,
    free_bytes,
    fsync_dir,
    make_temp_dir,
)

LATEST = "latest.json"
REPLACED = ".replaced-"  # a checkpoint being replaced by one of the same name, moved aside whole
CHECKSUMS = "checksums.json"
# crash tests only: seconds to wait between writing a checkpoint and moving it into place (it widens
# the window a kill can land in; the write itself is the same)
SLOW_WRITE_ENV = "JOINTSPACE_TEST_SLOW_CHECKPOINT_S"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors save of detached, contiguous CPU copies (with the permissions the umask gives, not
    safetensors' 0600)."""
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    follow_umask(Path(path))


def save_weights(tensors: dict[str, torch.Tensor], path: Path, ckpt_dir: Path | None = None) -> None:
    """A run's weights file, written atomically (a temporary file beside it, then renamed): after older
    checkpoints of `ckpt_dir` made room when the disk is short (never the newest); a full disk is one
    DiskFull line and leaves no partial file."""
    path = Path(path)
    needed = _bytes_of(tensors)
    if ckpt_dir is not None and ckpt_dir.exists():
        make_room(ckpt_dir, needed)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with disk_guard(path, needed):
            save_tensors(tensors, tmp)
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bytes_of(tensors: dict[str, torch.Tensor]) -> int:
    """About what safetensors writes for these tensors (data plus a header line per tensor)."""
    return sum(t.numel() * t.element_size() + 128 for t in tensors.values()) + 1024


def make_room(ckpt_dir: Path, needed: int) -> list[str]:
    """Remove older checkpoints, oldest first, until `needed` bytes (and 5 % more) are free: never the one
    latest.json names (nor the newest). Returns the names removed."""
    protect = {p.name for p in (latest_checkpoint(ckpt_dir),) if p is not None}
    removed = []
    for old in _kept(ckpt_dir)[:-1]:
        if free_bytes(ckpt_dir) >= needed * 1.05:
            break
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
    return removed


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{pid}.{name}"] = val
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of optimizer_to_flat: an optimizer state_dict."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, vals in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    # JSON turned tuples (betas) into lists; put them back so the state equals the saved one
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Current RNG states: torch's as tensors, python's and numpy's as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[int(x) if i != 2 else float(x) for i, x in enumerate(np_state[2:])]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, rank: int = 0) -> None:
    """Restore RNG states saved by rng_state; under torchrun each rank takes its own torch (and GPU) state
    where the checkpoint has every rank's (`rng.torch.rank<r>`, `rng.device.rank<r>`)."""
    torch.set_rng_state(tensors.get(f"rng.torch.rank{rank}", tensors["rng.torch"]))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if f"rng.device.rank{rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.device.rank{rank}"])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npm = meta["numpy"]
    np.random.set_state((npm[0], np.array(npm[1], dtype=np.uint32), int(npm[2]), int(npm[3]), float(npm[4])))


def save_checkpoint(ckpt_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, keep: int = 2, rank_rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `name` atomically, point latest.json at it, prune to the newest `keep`
    (`rank_rng`: every rank's RNG states under torchrun, saved beside this process's)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights, extra, meta = model.state_dict(), {}, {}
    if optimizer is not None:
        extra, meta["optimizer"] = optimizer_to_flat(optimizer)
    rng_t, meta["rng"] = rng_state()
    extra.update(rng_t)
    extra.update(rank_rng or {})
    needed = _bytes_of(weights) + _bytes_of(extra) + 64 * 1024  # + state.json and checksums
    make_room(ckpt_dir, needed)
    tmp = make_temp_dir(ckpt_dir, f".{name}.tmp-")
    try:
        with disk_guard(ckpt_dir / name, needed):
            save_tensors(weights, tmp / "model.safetensors")
            save_tensors(extra, tmp / "optimizer.safetensors")
            (tmp / "state.json").write_text(json.dumps({**state, **meta}))
            (tmp / CHECKSUMS).write_text(json.dumps({f.name: _file_sum(f) for f in sorted(tmp.iterdir())}))
            for f in tmp.iterdir():
                _fsync_file(f)
        if os.environ.get(SLOW_WRITE_ENV):
            time.sleep(float(os.environ[SLOW_WRITE_ENV]))
        final, replaced = ckpt_dir / name, ckpt_dir / f"{REPLACED}{name}"
        if final.exists():  # the same name again: moved aside whole (latest_checkpoint moves it back after a crash)
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_dir / LATEST, json.dumps({"name": name}))
    _prune(ckpt_dir, keep, protect=name)
    return final


def _file_sum(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` fails its checksums (None: it passes; one written before checksums: trusted)."""
    sums_file = path / CHECKSUMS
    if not sums_file.exists():
        return None
    try:
        sums = json.loads(sums_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{CHECKSUMS} unreadable ({err})"
    for name, want in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} is {f.stat().st_size} bytes, {want['size']} were written"
        if _file_sum(f)["sha256"] != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


def good_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that passes its check, from the one latest.json names back: each that fails is
    set aside as `.corrupt-<name>` (one line on stderr) and latest.json is pointed at the one used."""
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        return None
    older = [p for p in reversed(_kept(ckpt_dir)) if p != latest and p.stat().st_mtime <= latest.stat().st_mtime]
    for path in [latest, *older]:
        problem = checkpoint_problem(path)
        if problem is None:
            if path != latest:
                atomic_write_text(ckpt_dir / LATEST, json.dumps({"name": path.name}))
            return path
        aside = ckpt_dir / f".corrupt-{path.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        print(f"warning: checkpoint {path} fails its check ({problem}); set aside as {aside.name}",
              file=sys.stderr)
    return None


def _kept(ckpt_dir: Path) -> list[Path]:
    """The complete checkpoints of a folder, oldest first."""
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)


def _prune(ckpt_dir: Path, keep: int, protect: str) -> None:
    for old in _kept(ckpt_dir)[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".*.tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in ckpt_dir.glob(f"{REPLACED}*"):  # left by a crash after its replacement was in place
        if (ckpt_dir / stale.name[len(REPLACED):]).is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint latest.json names, or None. Where a crash came while a checkpoint of the same name was
    being replaced (the old one moved aside, the new one not yet in), the old one is moved back first."""
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return None
    path = ckpt_dir / json.loads(pointer.read_text())["name"]
    replaced = ckpt_dir / f"{REPLACED}{path.name}"
    if not path.exists() and replaced.is_dir():
        os.replace(replaced, path)
    return path if path.exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True, rank: int = 0) -> dict:
    """Load weights (strict), optimizer and RNG state; returns state.json's content."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    state = json.loads((path / "state.json").read_text())
    extra = load_file(str(path / "optimizer.safetensors"))
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(optimizer_from_flat(extra, state["optimizer"]))
    if restore_rng and "rng" in state:
        set_rng_state(extra, state["rng"], rank)
    return state


def resume_latest(ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                  rank: int = 0) -> dict:
    """Restore model, optimizer, RNG and LR scheduler from the checkpoint latest.json names (checked and,
    if it failed, repointed by `good_checkpoint` before, on one rank); returns its state.json."""
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint to resume from that passes its check")
    state = load_checkpoint(latest, model, optimizer, rank=rank)
    scheduler.load_state_dict(state["scheduler"])
    return state
