# Two commands do all set-up on a fresh machine:
#   make demo   install into .venv, then run the smoke sweep (synthetic data, local executor) and report it
#   make test   install, start the local Slurm used by the integration tests, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= torch,tf,dev,pretrained

.PHONY: demo install test slurm-up slurm-down bench

demo: install
	$(BIN)/crackhpc sweep jobs/smoke.yaml --executor local
	$(BIN)/crackhpc report results/smoke

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

slurm-up:
	bash tests/slurm/start.sh

slurm-down:
	bash tests/slurm/stop.sh

# The Slurm cluster is stopped whatever pytest's outcome; pytest's exit code is kept.
test: install slurm-up
	$(BIN)/python -m pytest -v -rs --durations=15 tests; rc=$$?; bash tests/slurm/stop.sh; exit $$rc

bench: install
	$(BIN)/python -m benchmarks.frozen_backbone
