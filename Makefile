# Two commands do all set-up on a fresh machine:
#   make demo   install into .venv, then run the smoke and damage sweeps (synthetic data, local executor) and report them
#   make test   install, build the Horovod venv, start the local Slurm used by the integration tests, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= torch,tf,onnx,dev,pretrained,tracking,search
# The second venv, for the Horovod tests: tensorflow-cpu 2.15.1 + Horovod 0.28.1 (tests/horovod/build.sh)
HOROVOD_VENV ?= $(CURDIR)/.venv-horovod

.PHONY: demo install horovod lint test slurm-up slurm-down bench

demo: install
	$(BIN)/crackhpc sweep jobs/smoke.yaml --executor local
	$(BIN)/crackhpc report results/smoke
	$(BIN)/crackhpc sweep jobs/damage.yaml --executor local
	$(BIN)/crackhpc report results/damage

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Built once (the compiled wheel is cached in ~/.cache/crackhpc/horovod), then reused while its inputs are unchanged.
horovod:
	CRACKHPC_HOROVOD_VENV=$(HOROVOD_VENV) bash tests/horovod/build.sh

slurm-up:
	bash tests/slurm/start.sh

slurm-down:
	bash tests/slurm/stop.sh

# Lint, format and types (pyproject.toml): `make test` stops here on the first error.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# After the install, lint, the Horovod venv and the local Slurm are made side by side: they do not
# depend on each other, and slurm-up mostly waits for daemons (a fresh clone's set-up was 3 minutes
# of 15). The Slurm cluster is stopped whatever pytest's outcome; pytest's exit code is kept. Two
# pytest-xdist workers: many tests wait on Slurm or on other processes, and tests/conftest.py keeps
# those that share the cluster on one worker.
test: install
	$(MAKE) -j3 --output-sync=target lint horovod slurm-up
	CRACKHPC_HOROVOD_VENV=$(HOROVOD_VENV) $(BIN)/python -m pytest -v -rs --durations=15 -n 2 --dist loadgroup tests; rc=$$?; bash tests/slurm/stop.sh; exit $$rc

bench: install
	$(BIN)/python -m benchmarks.frozen_backbone
