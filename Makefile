# lpnode: `make run` starts a node, `make test` runs every check CI runs.
# Both create the virtual environment in .venv on first use (and refresh it when
# pyproject.toml changes); nothing is installed outside it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Empty: pip's configured index. On a normal machine pick the build explicitly, e.g.
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu     (no GPU: no CUDA wheels)
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cu128   (NVIDIA GPU)
TORCH_INDEX ?=
ARGS ?=

STAMP := $(VENV)/.lpnode-installed

.PHONY: setup run test lint typecheck pytest clean

setup: $(STAMP)

# torch goes first, from the chosen index: installed after the rest, pip would already
# have picked a (CUDA) torch from the default index to satisfy diffusers.
# trio-typing (pulled in by libp2p and multiaddr) ships trio-stubs written for old trio.
# Installed, they shadow the types trio now carries inline and mypy rejects valid code
# (trio.TaskStatus[...], what nursery.start returns, ...): remove them after every install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -rf $(VENV)/lib/python*/site-packages/trio-stubs
	touch $(STAMP)

run: setup
	$(BIN)/lpnode run $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy resolves lpnode.* through the .typecheck/ symlinks (see [tool.mypy] in pyproject.toml)
typecheck: setup
	$(BIN)/mypy -p lpnode

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
