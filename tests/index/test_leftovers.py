"""What a killed build or save leaves beside an index (scratch and staging folders, an old version) is
removed by the next one, and nothing of a live process or of another host is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from jointspace.index.store import SCRATCH_PREFIX, IndexStore
from jointspace.swap import owned_prefix, remove_leftovers

KILLED_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from jointspace.index.store import IndexStore
    store = IndexStore.create(4, on_disk=True, scratch_dir=Path(sys.argv[1]))
    print(store.scratch, flush=True)
    time.sleep(60)
""")


def killed_scratch(folder) -> str:
    """The scratch folder of a build process killed with SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(folder)], stdout=subprocess.PIPE, text=True)
    scratch = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return scratch


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def named_for(prefix: str, pid: int) -> str:
    """owned_prefix(prefix) as process `pid` of this host and pid namespace would write it."""
    return owned_prefix(prefix).removesuffix(f"-{os.getpid()}-") + f"-{pid}-"


def test_a_killed_builds_scratch_folder_goes_with_the_next_build(tmp_path):
    left = killed_scratch(tmp_path)
    assert os.path.isdir(left) and os.listdir(left)  # the SQLite item table is in it
    dead = dead_pid()
    # host "<this host>-<ns>-<dead>" (a name that starts with ours), its own pid namespace and pid:
    # not ours to judge, though a loose parse would read <dead> as its pid
    other_host = tmp_path / f"{named_for(SCRATCH_PREFIX, dead)}{dead}-{dead}-abc"
    live = tmp_path / f"{owned_prefix(SCRATCH_PREFIX)}abc"  # this process: alive
    other_host.mkdir()
    live.mkdir()
    store = IndexStore.create(4, on_disk=True, scratch_dir=tmp_path)
    assert not os.path.exists(left)
    assert other_host.is_dir() and live.is_dir() and store.scratch.is_dir()
    assert remove_leftovers(tmp_path, SCRATCH_PREFIX) == []  # our own, still in use, stays


def test_a_killed_saves_staging_and_old_folders_go_with_the_next_save(tmp_path):
    path = tmp_path / "idx"
    store = IndexStore.create(4)
    store.add(np.eye(4, dtype=np.float32), [{"key": f"k{i}", "modality": "image"} for i in range(4)])
    store.save(path)
    staging = tmp_path / f"{named_for('.idx.tmp-', dead_pid())}xyz"
    old = tmp_path / ".idx.old-1234abcd"  # a save killed after both renames, before removing the old copy
    for folder in (staging, old):
        folder.mkdir()
        (folder / "index.faiss").write_bytes(b"x" * 1000)
    store.save(path)
    assert not staging.exists() and not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["idx"]
    assert IndexStore.open(path).n_items == 4
