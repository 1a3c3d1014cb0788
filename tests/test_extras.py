"""Optional extras (pyproject's [project.optional-dependencies]): the core commands run with the modules of
every extra missing, and a command that needs a missing extra says which one, in one line (exit 2, no
traceback). Nothing is uninstalled: the command runs in a subprocess whose import finders do not see the
modules left out, so `import name` raises ModuleNotFoundError and `importlib.util.find_spec(name)` is None,
as if they were not installed (`sys.modules[name] = None` is not enough: scikit-learn reads sys.modules)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jointspace
from jointspace.errors import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(jointspace.__file__).resolve().parents[1]
OPTIONAL = sorted(m for modules in EXTRAS.values() for m in modules)
END = "@@ exit"

# argv[1]: the modules to hide (comma-separated); then one command line per further argument (a JSON list),
# each run as `jointspace ...` would run it (its exit code caught), one after the other in this process;
# after each, a line `@@ exit CODE` on stdout and on stderr
RUN = """
import json, sys, traceback

HIDDEN = set(filter(None, sys.argv[1].split(",")))


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
from jointspace.cli import app

for line in sys.argv[2:]:
    try:
        app(json.loads(line), prog_name="jointspace")
        code = 0
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        traceback.print_exc()
        code = "exception"
    for out in (sys.stdout, sys.stderr):
        print(f"\\n@@ exit {code}", file=out, flush=True)
"""


def jointspace_without(modules: list[str], *commands: list) -> list[tuple[str, str, str]]:
    """Run `jointspace COMMAND` for each command in turn, in a fresh interpreter where `modules` cannot be
    imported; returns (exit code, stdout, stderr) of each."""
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    argv = [sys.executable, "-c", RUN, ",".join(modules), *(json.dumps([str(a) for a in c]) for c in commands)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
    outs, errs = (re.split(r"\n@@ exit (\S+)\n", text) for text in (done.stdout, done.stderr))
    assert len(outs) == len(errs) == 2 * len(commands) + 1, done.stderr[-3000:]
    return list(zip(outs[1::2], outs[0::2], errs[0::2]))


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def test_pyproject_declares_the_extras_the_code_names():
    """errors.EXTRAS (what the code says to install) and pyproject's extras agree; `all` is every extra but
    dev; no extra's package is also a core dependency; `make` installs dev and all."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = dict(project["optional-dependencies"])
    dev, every = extras.pop("dev"), extras.pop("all")
    assert set(extras) == set(EXTRAS)
    for extra, requirements in extras.items():
        assert {_name(r) for r in requirements} == set(EXTRAS[extra].values()), extra
    (line,) = every
    listed = re.fullmatch(r"jointspace\[([a-z,]+)\]", line.replace(" ", "")).group(1).split(",")
    assert sorted(listed) == sorted(extras)
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {_name(r) for reqs in extras.values() for r in reqs}
    assert dev and "pip install -q -e '.[dev,all]'" in (ROOT / "Makefile").read_text()


def _tiny(digits_dir: Path, out: Path, name: str) -> list:
    """`jointspace train` of a digits model that trains in seconds."""
    from jointspace.cli import builtin_config

    overrides = [f"name={name}", f"output_dir={out}", f"data.path={digits_dir}", "data.synth=null",
                 "train.epochs=1", "train.batch_size=16", "train.warmup_steps=2", "model.embed_dim=16",
                 "model.towers.image.params.channels=[8, 16]", "model.towers.text.params.width=16",
                 "model.towers.text.params.layers=1", "model.towers.audio.params.channels=[16, 16]"]
    return ["train", builtin_config("digits"), *[x for o in overrides for x in ("--set", o)]]


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory, digits_dir):
    """One interpreter with no extra at all (a plain `pip install jointspace`): the core commands (train a tiny
    digits run, evaluate it, index it, search the index), then one command per extra; by name, each one's
    (exit code, stdout, stderr), and the folders."""
    base = tmp_path_factory.mktemp("core")
    run, index = base / "runs" / "core", base / "index"
    core = {"train": _tiny(digits_dir, base / "runs", "core"), "eval": ["eval", run],
            "index": ["index", "build", run, digits_dir, "--out", index],
            "search": ["search", index, "--text", "the digit three", "--k", "3", "--json"]}
    extras = {
        "serve": ["serve", index],
        "augment": ["augment", "train", "--data", digits_dir, "--set", f"output_dir={base / 'aug'}"],
        "sweep": ["sweep", base / "sweep.yaml"],
        "export": ["export", run, "--format", "onnx", "--out", base / "onnx"],
        "parquet": ["embed", run, digits_dir, "--out", base / "emb", "--format", "parquet"],
        "wandb": [*_tiny(digits_dir, base / "runs", "wandb"), "--tracker", "wandb"],
        "milvus": ["index", "build", run, digits_dir, "--out", base / "mil", "--backend", "milvus"],
        "audit": ["audit", run, digits_dir, "--out", base / "aud"],
    }
    assert set(extras) == set(EXTRAS)
    done = jointspace_without(OPTIONAL, *core.values(), *extras.values())
    return dict(zip([*core, *extras], done)), base


def test_the_core_needs_no_extra(without_extras):
    done, base = without_extras
    for name in ("train", "eval", "index", "search"):
        code, _, err = done[name]
        assert code == "0", f"{name}: {err[-3000:]}"
    assert (base / "runs/core/model.safetensors").exists() and (base / "runs/core/eval.json").exists()
    assert (base / "index/meta.json").exists() and '"score"' in done["search"][1]


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_a_missing_extra_is_one_line_naming_it(extra, without_extras):
    done, base = without_extras
    code, _, err = done[extra]
    assert code == "2" and "Traceback" not in err, err[-3000:]
    (line,) = err.strip().splitlines()
    assert line.startswith("error: MissingExtra: ") and f"needs the optional extra '{extra}'" in line, line
    assert line.endswith(f"pip install 'jointspace[{extra}]'"), line
    assert not any((base / name).exists() for name in ("aug", "onnx", "emb", "runs/wandb", "mil", "aud",
                                                                  "mil.milvus.db"))  # nothing left behind
