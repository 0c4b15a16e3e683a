"""Data-parallel torch runs: two processes of one job through submitit's local executor (gloo on CPU)."""

import json
import socket
import threading
import time

import pytest

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.errors import CrackhpcError
from crackhpc.grid import expand
from crackhpc.launcher import Submission, submit, write_run_folders
from crackhpc.record import SweepFolder
from crackhpc.worker import run
from crackhpc.worker.backends import BackendError, meet, resolve
from crackhpc.worker.distributed import DistEnv, from_environment

from .conftest import tiny_sweep

# Frozen backbone, head trained on cached features: both runs train on identical features, and
# with 20 training images and batch 8 the two ranks' halves (4 + 4) make up the same global
# batches as the single process's, so DDP's averaged gradient is the single process's up to
# float rounding. Tolerance: test accuracy within one of the 10 test images, test loss within 1e-4.
# SGD, not Adam: Adam's update ignores the gradient's scale and would hide a wrong batch split.
HEAD_ONLY = {"epochs": 30, "lr": 0.01, "optimizer": "sgd"}


def _tasks(n: int) -> dict:
    return {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 3, "tasks_per_node": n}


def _submit(tmp_path, write_yaml, data, name, tasks, defaults) -> dict:
    sweep = load_sweep(
        write_yaml(tiny_sweep(data, name=name, defaults=defaults, resources=_tasks(tasks)), f"{name}.yaml")
    )
    submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    sweep_dir = tmp_path / "results" / name
    (run_id,) = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    return rundir.read_result(sweep_dir / run_id)


def test_two_process_ddp_run_stays_in_sync_and_matches_one_process(tmp_path, write_yaml, tiny_data):
    one = _submit(tmp_path, write_yaml, tiny_data, "one", 1, HEAD_ONLY)
    two = _submit(tmp_path, write_yaml, tiny_data, "two", 2, HEAD_ONLY)
    assert two["status"] == "completed", two.get("error")
    assert (two["world_size"], two["backend"], two["params_in_sync"]) == (2, "ddp", True)
    assert (one["world_size"], one["backend"]) == (1, "single") and "params_in_sync" not in one
    assert two["n_test"] == one["n_test"] == 10 and two["epochs_done"] == 30
    assert abs(two["test_acc"] - one["test_acc"]) <= 0.1 + 1e-9
    assert two["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)


def test_torch_horovod_backend_without_horovod_is_one_clear_line(tmp_path, write_yaml, tiny_data):
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, defaults={"backend": "horovod"})))
    (spec,) = write_run_folders(expand(sweep), SweepFolder(tmp_path / "results" / sweep.name), tiny_data, sweep)
    run_dir = tmp_path / "results" / sweep.name / spec.run_id
    with pytest.raises(CrackhpcError, match=r"HOROVOD_WITH_PYTORCH=1"):
        run(run_dir)
    error = rundir.read_result(run_dir)["error"]
    assert (
        error.startswith(
            "BackendError: backend horovod: horovod is not installed; build it with tests/horovod/build.sh"
        )
        and "\n" not in error
    )


def test_dry_run_shows_tasks_per_node(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data, resources=_tasks(2)))
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tasks/node=2" in out and "tasks_per_node=2" in out


def test_backend_resolution():
    assert resolve("torch", "auto", 1) == resolve("keras", "tf-distribute", 1) == "single"
    assert resolve("torch", "auto", 4) == "ddp" and resolve("keras", "auto", 2) == "tf-distribute"
    assert resolve("torch", "horovod", 1) == "horovod"


def test_tf_config_gives_each_rank_its_node_and_port():
    env = DistEnv(rank=3, world_size=4, master_addr="n1", master_port=30000, nodes=("n1", "n2"))
    config = json.loads(env.tf_config())
    assert config["cluster"]["worker"] == ["n1:30000", "n1:30001", "n2:30002", "n2:30003"]
    assert config["task"] == {"type": "worker", "index": 3}
    local = json.loads(DistEnv(rank=1, world_size=2, master_port=20000).tf_config())
    assert local["cluster"]["worker"] == ["127.0.0.1:20000", "127.0.0.1:20001"]


def test_ranks_under_horovodrun(monkeypatch):
    for var in ("SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_JOB_ID", "SLURM_PROCID", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOROVOD_RANK", "1")
    monkeypatch.setenv("HOROVOD_LOCAL_RANK", "1")
    monkeypatch.setenv("HOROVOD_SIZE", "2")
    env = from_environment()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (1, 1, 2, False)


def test_ranks_and_restarts_under_a_plain_srun_step(monkeypatch):
    for var in ("SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is split as written
    for var, value in {
        "SLURM_PROCID": "3",
        "SLURM_STEP_ID": "0",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_ID": "123",
        "SLURM_JOB_NODELIST": "n1,n2",
        "SLURM_RESTART_COUNT": "2",
    }.items():
        monkeypatch.setenv(var, value)
    env = from_environment()
    assert (env.rank, env.local_rank, env.world_size, env.job_id, env.nodes, env.restarts) == (
        3,
        1,
        4,
        "123",
        ("n1", "n2"),
        2,
    )
    assert env.master_addr == "n1" and env.host_of(3) == "n2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meet_all(ranks: list[int], world_size: int, monkeypatch) -> dict:
    """`meet` of tf-distribute run by each of `ranks` (threads, as the tasks of one job on one node);
    each rank's outcome: the seconds it took, or its error."""
    monkeypatch.setenv("CRACKHPC_RENDEZVOUS_TIMEOUT_S", "3")
    port, out = _free_port(), {}

    def rank(r):
        t0 = time.monotonic()
        try:
            meet("tf-distribute", DistEnv(rank=r, world_size=world_size, master_port=port - world_size), port)
            out[r] = time.monotonic() - t0
        except BackendError as exc:
            out[r] = str(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in ranks]
    for t in reversed(threads):  # the others before rank 0: they wait for it to listen
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(30)
    return out


def test_the_ranks_of_a_tf_distribute_job_meet_before_tensorflow_wires_them(monkeypatch):
    out = _meet_all([0, 1, 2], 3, monkeypatch)
    assert sorted(out) == [0, 1, 2] and all(isinstance(v, float) for v in out.values()), out


def test_a_missing_rank_fails_every_rank_that_came_in_one_line(monkeypatch):
    """Rank 2 never comes: rank 0 gives up at the rendezvous timeout and so does rank 1, which had
    reached rank 0 but was never let go on (tf.distribute's own start would wait for ever)."""
    out = _meet_all([0, 1], 3, monkeypatch)
    assert out[0].startswith("backend tf-distribute: rank 0 waited for the other ranks at 127.0.0.1:")
    assert "for 3 s (CRACKHPC_RENDEZVOUS_TIMEOUT_S): 2/3 ranks joined; check that" in out[0]
    assert out[1].startswith("backend tf-distribute: rank 1 did not meet rank 0 at 127.0.0.1:")
    assert "\n" not in out[0] + out[1]
