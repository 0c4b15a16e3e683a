from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from crackhpc.data.synth import synthesize
from crackhpc.worker.fastpath import ENV_BF16

# `precision: auto` as on a CPU without bf16 units, for every test and the workers they start:
# the suite's numbers must not hang on a probe's timing nor on the machine it runs on. The tests of
# the other branch (tests/test_worker_fastpath.py) set it to 1.
os.environ[ENV_BF16] = "0"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """40 synthetic 32 px images in the original Positive/ Negative/ layout."""
    root = tmp_path_factory.mktemp("data") / "concrete"
    synthesize(root, 40, size=32, seed=0)
    return root


@pytest.fixture
def write_yaml(tmp_path):
    """Write a sweep file from an indented YAML string; returns its path."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def tiny_sweep(data_root: Path, name: str = "tiny", defaults: dict | None = None, **top) -> str:
    """A sweep YAML of 32 px random-init runs that take about a second each."""
    sweep = {
        "name": name,
        "executor": "local",
        "data": {"root": str(data_root), "split": [0.5, 0.25, 0.25]},
        "defaults": {
            "framework": "torch",
            "model": "resnet18",
            "pretrained": False,
            "epochs": 2,
            "batch_size": 8,
            "input_size": 32,
            **(defaults or {}),
        },
        "resources": {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
        **top,
    }
    return yaml.safe_dump(sweep, sort_keys=False)


LEARNED_SIZE = 64


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, dataset) of a run that learned: ResNet18 trained end to end at 64 px on 400
    synthetic crops, 5 epochs (test accuracy about 0.65), trained once per session for the tests
    that need a model whose maps mean something. One torch thread: on 2 busy cores a second one
    spins and triples the CPU time (30 CPU s here against 110)."""
    from crackhpc import rundir
    from crackhpc.cli import main

    folder = tmp_path_factory.mktemp("learned")
    s = LEARNED_SIZE
    sweep = {
        "name": "learned",
        "executor": "local",
        "data": {"synthetic": {"n": 400, "size": s, "seed": 0}, "split": [0.6, 0.2, 0.2]},
        "defaults": {
            "framework": "torch",
            "model": "resnet18",
            "pretrained": False,
            "freeze_backbone": False,
            "epochs": 5,
            "batch_size": 32,
            "input_size": s,
        },
        "resources": {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 20},
    }
    (folder / "learned.yaml").write_text(yaml.safe_dump(sweep))
    assert (
        main(["sweep", str(folder / "learned.yaml"), "--executor", "debug", "--results", str(folder / "results")]) == 0
    )
    run = next(p for p in (folder / "results" / "learned").iterdir() if (p / rundir.CONFIG).is_file())
    return run, folder / "results" / ".data" / f"synth-n400-{s}px-seed0"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The single-node Slurm cluster of tests/slurm/start.sh, started (or found up) once per session;
    the Slurm tests are skipped, with the reason, where there is none."""
    import shutil
    import subprocess

    if not shutil.which("sbatch"):
        pytest.skip(
            "sbatch not found: the Slurm tests need the cluster of tests/slurm/start.sh (`make slurm-up`, as root)"
        )
    out = subprocess.run(["bash", str(Path(__file__).parent / "slurm" / "start.sh")], capture_output=True, text=True)
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        reason = next((line for line in lines if "ERROR" in line), lines[-1])
        pytest.skip(f"tests/slurm/start.sh could not start Slurm: {reason}")
    return out.stdout.strip()


# Under pytest-xdist (`make test` runs two workers) the tests that share the one Slurm cluster, and
# the multi-process Horovod runs, go to one worker in turn; the others spread over both.
SERIAL = {"slurm_cluster": "slurm", "horovod_venv": "slurm", "learned": "learned"}


def pytest_collection_modifyitems(items):
    for item in items:
        group = next((g for f, g in SERIAL.items() if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
