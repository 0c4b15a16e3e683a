"""The Horovod backend for real: Keras runs in the Horovod environment of tests/horovod/build.sh
(tensorflow-cpu 2.15.1, Keras 2.15, Horovod 0.28.1 with Gloo), started the ways a user starts
them: horovodrun, a 2-task job on the local Slurm (submitit, srun), the plain sbatch template,
and a job that loses a rank.

The runs train a linear head on cached VGG16 features (as tests/test_worker_distributed.py): with
20 training images, batch 8 and 2 ranks, the ranks' halves make up the single process's global
batches, so Horovod's averaged gradient is the single process's up to float rounding.
"""

import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.grid import expand
from crackhpc.launcher import write_run_folders
from crackhpc.record import SweepFolder
from crackhpc.worker.backends import BackendError, gloo_env, rank_failures
from crackhpc.worker.distributed import DistEnv

from .conftest import tiny_sweep
from .test_slurm_integration import ON_SLURM, finished, told, until

ROOT = Path(__file__).resolve().parent.parent
HEAD_ONLY = {"framework": "keras", "model": "vgg16", "epochs": 30, "lr": 0.01, "optimizer": "sgd", "backend": "horovod"}
TWO_TASKS = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 5, "tasks_per_node": 2}


@pytest.fixture(scope="session")
def horovod_venv() -> Path:
    """The venv tests/horovod/build.sh built (`make horovod`; `make test` builds it first). Missing,
    the tests skip with the command to build it, except in CI (conftest.CI), where they fail."""
    venv = Path(os.environ.get("CRACKHPC_HOROVOD_VENV", ROOT / ".venv-horovod"))
    if not (venv / ".built").is_file() or not (venv / "bin" / "horovodrun").is_file():
        pytest.skip(f"no Horovod environment at {venv}: build it with tests/horovod/build.sh (make horovod)")
    return venv


def _env(venv: Path, **extra) -> dict:
    """The Horovod venv first on PATH; this checkout first on the import path (an editable install
    elsewhere, or none, must not shadow the code under test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "SLURM_", "SUBMITIT_"))}
    return {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}", "PYTHONPATH": str(ROOT), **extra}


def _sweep(folder: Path, data: Path, name: str, resources: dict, defaults: dict | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(tiny_sweep(data, name=name, defaults={**HEAD_ONLY, **(defaults or {})}, resources=resources))
    return path


def _run_folder(folder: Path, data: Path, name: str, resources: dict, defaults: dict | None = None) -> Path:
    sweep = load_sweep(_sweep(folder, data, name, resources, defaults))
    (spec,) = write_run_folders(expand(sweep), SweepFolder(folder / "results" / name), data, sweep)
    return folder / "results" / name / spec.run_id


def _completed(run_dir: Path) -> dict:
    result = rundir.read_result(run_dir)
    assert result["status"] == "completed", result.get("error")
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_data, horovod_venv) -> dict:
    """The same run in one plain process of the Horovod venv: the reference the 2-rank runs match."""
    return single_process_result(tmp_path_factory.mktemp("one"), tiny_data, horovod_venv)


def single_process_result(folder: Path, tiny_data: Path, horovod_venv: Path) -> dict:
    run_dir = _run_folder(folder, tiny_data, "one", {**TWO_TASKS, "tasks_per_node": 1}, {"backend": "auto"})
    subprocess.run(
        [horovod_venv / "bin" / "python", "-m", "crackhpc.worker", run_dir],
        env=_env(horovod_venv),
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = _completed(run_dir)
    assert (result["backend"], result["world_size"]) == ("single", 1)
    return result


def _matches_one_process(two: dict, one: dict) -> None:
    assert (two["backend"], two["world_size"], two["params_in_sync"]) == ("horovod", 2, True)
    assert abs(two["test_acc"] - one["test_acc"]) <= 1 / one["n_test"] + 1e-9
    assert two["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)


def test_gloo_variables_number_ranks_as_horovodrun_does():
    """Two nodes of two tasks, Slurm's block order: rank 3 is the second task of the second node."""
    env = DistEnv(rank=3, local_rank=1, world_size=4, master_addr="n1", master_port=23456, nodes=("n1", "n2"))
    assert gloo_env(env) == {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": "n1",
        "HOROVOD_GLOO_RENDEZVOUS_PORT": "23456",
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": "n2",
        "HOROVOD_RANK": "3",
        "HOROVOD_SIZE": "4",
        "HOROVOD_LOCAL_RANK": "1",
        "HOROVOD_LOCAL_SIZE": "2",
        "HOROVOD_CROSS_RANK": "1",
        "HOROVOD_CROSS_SIZE": "2",
    }
    three = [gloo_env(dataclasses.replace(env, rank=r, world_size=3)) for r in range(3)]  # 2 tasks on n1, 1 on n2
    assert [
        (
            v["HOROVOD_HOSTNAME"],
            v["HOROVOD_LOCAL_RANK"],
            v["HOROVOD_LOCAL_SIZE"],
            v["HOROVOD_CROSS_RANK"],
            v["HOROVOD_CROSS_SIZE"],
        )
        for v in three
    ] == [("n1", "0", "2", "0", "2"), ("n1", "1", "2", "0", "1"), ("n2", "0", "1", "1", "2")]


@pytest.mark.parametrize(
    "text, what",
    [
        (
            "{{function_node __inference_<lambda>_2806}} [/tmp/horovod/third_party/compatible17_gloo/gloo/transport/tcp/"
            "pair.cc:589] Read error [127.0.0.1]:52871: Connection reset by peer\n\t [[{{node HorovodAllreduce_x}}]]",
            "lost contact with another rank (Gloo: Read error [127.0.0.1]:52871: Connection reset by peer)",
        ),
        (
            "Horovod has been shut down. This was caused by an exception on one of the ranks or an attempt to allreduce\n"
            "\t [[{{node HorovodAllreduce_x}}]]",
            "Horovod shut down during the run",
        ),
    ],
)
def test_a_lost_rank_is_one_line(text, what):
    with pytest.raises(BackendError) as raised, rank_failures("horovod"):
        raise RuntimeError(text)
    assert str(raised.value) == (
        f"backend horovod: {what}: another rank ended, failed or stopped answering (killed, "
        "out of memory, node lost?); its own error, if any, is in the job's log"
    )
    with pytest.raises(ValueError, match="^unrelated$"), rank_failures("horovod"):
        raise ValueError("unrelated")


def test_horovodrun_two_ranks_match_one_process(tmp_path, tiny_data, horovod_venv, one_process):
    run_dir = _run_folder(tmp_path, tiny_data, "hvdrun", TWO_TASKS)
    out = subprocess.run(
        ["horovodrun", "-np", "2", "--gloo", "python", "-m", "crackhpc.worker", run_dir],
        env=_env(horovod_venv),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _matches_one_process(_completed(run_dir), one_process)


@pytest.mark.slurm
def test_two_task_slurm_job_matches_one_process(tmp_path, tiny_data, horovod_venv, one_process, slurm_cluster):
    """`crackhpc sweep` of the Horovod venv submits through submitit; srun starts the 2 tasks, which
    meet at rank 0's Gloo rendezvous (no horovodrun, no MPI)."""
    path = _sweep(tmp_path, tiny_data, "hvdslurm", {**ON_SLURM, **TWO_TASKS})
    subprocess.run(
        ["crackhpc", "sweep", path, "--executor", "slurm", "--results", tmp_path],
        env=_env(horovod_venv),
        check=True,
        capture_output=True,
        timeout=120,
    )
    (run,) = finished(tmp_path / "hvdslurm", 300)
    assert run.state == "completed" and "cpu=2" in run.tres, told(tmp_path / "hvdslurm", run)
    _matches_one_process(_completed(tmp_path / "hvdslurm" / run.run_id), one_process)


@pytest.mark.slurm
def test_plain_sbatch_template_trains_two_ranks(tmp_path, tiny_data, horovod_venv, one_process, slurm_cluster):
    path = _sweep(tmp_path, tiny_data, "hvdsbatch", {**ON_SLURM, **TWO_TASKS})
    out = subprocess.run(
        ["crackhpc", "sbatch", path, "--results", tmp_path, "--submit"],
        env=_env(horovod_venv),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ((run_id, job),) = json.loads((tmp_path / "hvdsbatch" / "sweep.json").read_text())["runs"].items()
    assert f"job {job['job_id']}" in out.stdout
    assert "srun --unbuffered --mpi=pmi2 " in (tmp_path / "hvdsbatch" / run_id / "job.sbatch").read_text()
    (run,) = finished(tmp_path / "hvdsbatch", 300)
    assert (run.state, run.slurm_state) == ("completed", "COMPLETED"), told(tmp_path / "hvdsbatch", run)
    _matches_one_process(_completed(tmp_path / "hvdsbatch" / run_id), one_process)


def job_id_with_a_free_port() -> str:
    """A Slurm job id whose rendezvous port (crackhpc.worker.distributed: 20000 + id % 20000) is
    free now: a job id P in 20000..39999 gives port P."""
    for port in random.sample(range(20000, 40000), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        return str(port)
    raise AssertionError("no free port in 20000..39999")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_run_that_loses_a_rank_fails_with_the_reason(tmp_path, tiny_data, horovod_venv, how):
    """Two tasks of a plain srun step, as their environment tells them (no launcher that would stop
    the survivor for us). Rank 1 is killed mid-training (its connections break), or stopped (they
    stay open, silent: only Gloo's timeout, 10 s here as a site could set it, ends the wait); either
    way rank 0 must end failed, not hang."""
    slow = {"freeze_backbone": False, "epochs": 100, "optimizer": "adam"}
    run_dir = _run_folder(tmp_path, tiny_data, how, TWO_TASKS, slow)
    job = {
        "SLURM_JOB_ID": job_id_with_a_free_port(),
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "localhost",
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "10",
    }
    ranks = [
        subprocess.Popen(
            [horovod_venv / "bin" / "python", "-m", "crackhpc.worker", run_dir],
            env=_env(horovod_venv, **job, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        until(lambda: rundir.read_result(run_dir).get("epochs_done"), "first epoch", 180)
        ranks[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        rc = ranks[0].wait(timeout=120)
        waited = time.monotonic() - start
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    log = ranks[0].stdout.read()
    result = rundir.read_result(run_dir)
    assert rc != 0 and result["status"] == "failed", log[-3000:]
    print(f"rank 0 ended {waited:.1f} s after rank 1 was {how}: {result['error']}")
    # Which rank notices first decides the wording: Gloo's broken connection, or Horovod's shutdown after it.
    cause = r"Connection|peer" if how == "killed" else r"Timed out waiting 10000ms"
    assert "\n" not in result["error"] and re.match(
        rf"BackendError: backend horovod: (lost contact with another rank \(Gloo: .*({cause}).*\)"
        r"|Horovod shut down during the run): another rank ended, failed or stopped answering",
        result["error"],
    )
