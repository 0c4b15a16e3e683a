"""Runs across two Slurm nodes: the two-node cluster of tests/slurm/two_nodes.sh, node1 and node2,
each a slurmd with its own hostname and address (network and UTS namespaces) and 1 CPU, on the
one shared file system. What one host cannot show: MASTER_ADDR from the job's hostnames, ranks
meeting across addresses, two nodes building one cache, a node that dies, a rank that cannot
reach the rendezvous.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.status import collect

from . import test_horovod
from .conftest import TWO_NODES, tiny_sweep
from .running import held_after_an_epoch
from .test_horovod import horovod_venv  # noqa: F401 (the fixture)
from .test_slurm_integration import cli, finished, until

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("two_nodes")]

TWO = {"partition": "debug", "nodes": 2, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10}
# As tests/test_worker_distributed.py: the head on cached features, batch 8 = 4 + 4, SGD, so the two
# ranks' averaged gradient is the one process's up to rounding: test accuracy within one test image.
HEAD_ONLY = {"epochs": 30, "lr": 0.01, "optimizer": "sgd"}
# The whole network trains, a second or two an epoch: time for a node to die mid-run.
SLOW = {"freeze_backbone": False, "input_size": 64, "epochs": 8}


def sweep_yaml(folder: Path, data: Path, name: str, defaults: dict, resources: dict | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(tiny_sweep(data, name, defaults, executor="slurm", resources={**TWO, **(resources or {})}))
    return path


def one_process_result(folder: Path, data: Path, defaults: dict) -> dict:
    """The reference: the same run in one local process."""
    path = folder / "one.yaml"
    path.write_text(tiny_sweep(data, "one", defaults))
    assert main(["sweep", str(path), "--executor", "local", "--results", str(folder)]) == 0
    (run_dir,) = (p for p in (folder / "one").iterdir() if (p / rundir.RESULT).is_file())
    return rundir.read_result(run_dir)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_data) -> dict:
    return one_process_result(tmp_path_factory.mktemp("one"), tiny_data, HEAD_ONLY)


def task_logs(sweep_dir: Path) -> str:
    """What every task of the sweep's jobs printed (submitit's per-task logs)."""
    return "".join(p.read_text() for p in sorted(sweep_dir.rglob("*_log.out")))


def assert_matches(result: dict, one: dict, backend: str) -> None:
    assert result["status"] == "completed", result.get("error")
    assert (result["world_size"], result["params_in_sync"], result["backend"]) == (2, True, backend)
    assert result["n_test"] == one["n_test"] == 10
    assert abs(result["test_acc"] - one["test_acc"]) <= 0.1 + 1e-9  # one of the 10 test images
    assert result["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)


def test_ddp_across_two_nodes_matches_one_process_and_builds_each_cache_once(tmp_path, tiny_data, one_process):
    cli("sweep", sweep_yaml(tmp_path, tiny_data, "ddp", HEAD_ONLY), "--results", tmp_path)
    (run,) = finished(tmp_path / "ddp")
    result = rundir.read_result(tmp_path / "ddp" / run.run_id)
    assert_matches(result, one_process, "ddp")
    assert (result["hosts"], run.node) == (["node1", "node2"], "node[1-2]")
    # Both nodes asked for the image cache and the features at once, on the shared file system:
    # one built each, under the cache's lock, the other read it.
    logs = task_logs(tmp_path / "ddp")
    assert len(re.findall(r"\[rank [01]\] image cache ready", logs)) == 2
    assert sorted(re.findall(r"\[rank [01]\] features (computed|reused)", logs)) == ["computed", "reused"]
    cache = tmp_path / "ddp" / ".cache"
    assert len(list((cache / "images").glob("images-*.ok.npy"))) == 1
    assert len(list((cache / "features").glob("features-*.npy"))) == 1
    assert not list(cache.rglob(".*.tmp"))


def node(action: str, name: str = "node2") -> None:
    """`fail`: the node dies (its link goes down, then every process on it is killed: slurmd, the
    job's step, the rank); `revive`: it comes back (link up, slurmd started)."""
    subprocess.run(["bash", str(TWO_NODES), action, name], check=True, capture_output=True)


def slurm_states(job_id: str) -> list[str]:
    """Every state the job has had, requeued incarnations included (sacct --duplicates)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    return out.stdout.split()


def started_training(tmp_path: Path, tiny_data: Path, name: str, resources: dict | None = None):
    """A two-node run submitted by `crackhpc sweep`, held mid-training: rank 0 (on node1) is stopped
    (SIGSTOP) once its first epoch is checkpointed (held_after_an_epoch), so that however fast the
    machine, the run cannot end before the node dies; Slurm's SIGKILL ends it like any other process
    of the job."""
    path = sweep_yaml(tmp_path, tiny_data, name, SLOW, resources)
    cli("sweep", path, "--results", tmp_path)
    ((run_id, job),) = json.loads((tmp_path / name / "sweep.json").read_text())["runs"].items()
    run_dir = tmp_path / name / run_id
    held_after_an_epoch(run_dir)  # the nodes share this machine's process ids
    return path, run_dir, job["job_id"]


def assert_resumed_to_the_end(run, run_dir: Path) -> None:
    assert (run.state, run.epoch) == ("completed", "8/8"), run.note
    resumed = re.findall(r"resumed from checkpoint\.pt after epoch (\d+)", (run_dir / rundir.LOG).read_text())
    assert resumed and 1 <= int(resumed[-1]) < 8
    assert [row.split(",")[0] for row in (run_dir / rundir.METRICS).read_text().splitlines()[1:]] == [
        str(e) for e in range(1, 9)
    ]
    assert rundir.read_result(run_dir)["params_in_sync"] is True


def test_a_node_that_dies_mid_training_requeues_the_job_and_the_run_resumes(tmp_path, tiny_data):
    _, run_dir, job_id = started_training(tmp_path, tiny_data, "nodefail")
    node("fail")
    until(lambda: "NODE_FAIL" in slurm_states(job_id), "Slurm marking the job NODE_FAIL", 120)
    (run,) = collect(tmp_path / "nodefail")[0]
    # Requeued by Slurm (its steps on node1 stopping, then pending for two nodes): not ended, not resubmittable.
    assert run.live, run
    node("revive")
    (run,) = finished(tmp_path / "nodefail", 300)
    assert_resumed_to_the_end(run, run_dir)
    assert run.requeues >= 1 and slurm_states(job_id)[-1] == "COMPLETED"


def test_without_requeue_a_node_failure_fails_the_run_naming_the_node_and_retry_resumes(tmp_path, tiny_data):
    path, run_dir, job_id = started_training(tmp_path, tiny_data, "noreq", {"sbatch": {"no-requeue": True}})
    node("fail")
    (run,) = finished(tmp_path / "noreq", 180)
    assert (run.state, run.slurm_state, run.live) == ("node_fail", "NODE_FAIL", False)
    status = cli("status", tmp_path / "noreq")
    (line,) = [line for line in status.splitlines() if run.run_id in line]
    assert re.search(r"\bnode_fail\b.* node failure: node2 \(Not responding\) failed under job", line), status
    assert run.note.endswith(
        "which Slurm did not requeue; `crackhpc sweep --retry-failed` resumes it from its last checkpoint"
    )
    node("revive")
    cli("sweep", path, "--results", tmp_path, "--retry-failed")
    (run,) = finished(tmp_path / "noreq", 300)
    assert_resumed_to_the_end(run, run_dir)


def netns_processes(node_name: str) -> list[str]:
    """The command lines of the processes in a node's network namespace."""
    want = Path(f"/run/netns/crackhpc-{node_name}").stat().st_ino
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "ns" / "net").stat().st_ino == want:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            continue  # ended meanwhile
    return found


KERAS_HEAD_ONLY = {**HEAD_ONLY, "framework": "keras", "model": "vgg16"}


@pytest.mark.parametrize("defaults, backend", [(HEAD_ONLY, "ddp"), (KERAS_HEAD_ONLY, "tf-distribute")])
def test_a_rank_that_cannot_reach_the_rendezvous_fails_the_run_in_one_line(
    tmp_path, tiny_data, monkeypatch, defaults, backend
):
    # node2's name service sends node1's name to an address nobody has (a stale DNS entry): Slurm,
    # which goes by NodeAddr, still starts both tasks, but rank 1 cannot reach MASTER_ADDR=node1.
    hosts = Path("/etc/netns/crackhpc-node2/hosts")  # bind-mounted over node2's /etc/hosts: edit in place
    hosts.write_text(re.sub(r"^(\d+\.\d+\.\d+)\.\d+ node1$", r"\1.99 node1", hosts.read_text(), flags=re.M))
    monkeypatch.setenv("CRACKHPC_RENDEZVOUS_TIMEOUT_S", "5")  # sbatch passes the environment to the job
    cli("sweep", sweep_yaml(tmp_path, tiny_data, "unreachable", defaults), "--results", tmp_path)
    (run,) = finished(tmp_path / "unreachable", 240)
    assert (run.state, run.slurm_state) == ("failed", "FAILED")
    assert re.fullmatch(
        rf"BackendError: backend {backend}: rank 0 waited for the other ranks at node1:\d+ for 5 s "
        r"\(CRACKHPC_RENDEZVOUS_TIMEOUT_S\): .*; check that the job's nodes reach each other by their Slurm hostnames",
        run.note,
    )
    assert re.search(
        rf"backend {backend}: rank 1 did not meet rank 0 at node1:\d+ for 5 s", task_logs(tmp_path / "unreachable")
    )
    # Neither rank outlived the job: nothing but slurmd is left on either node.
    assert [p for n in ("node1", "node2") for p in netns_processes(n) if "slurmd" not in p] == []


def test_plain_sbatch_template_trains_across_two_nodes(tmp_path, tiny_data, one_process):
    """slurm_templates/torch_srun.sbatch: srun starts a task per node, each finds its rank, the
    master's address and port from Slurm's variables."""
    cli("sbatch", sweep_yaml(tmp_path, tiny_data, "plain2", HEAD_ONLY), "--results", tmp_path, "--submit")
    (run,) = finished(tmp_path / "plain2")
    result = rundir.read_result(tmp_path / "plain2" / run.run_id)
    assert_matches(result, one_process, "ddp")
    assert (result["hosts"], run.node, run.slurm_state) == (["node1", "node2"], "node[1-2]", "COMPLETED")


def test_keras_tf_distribute_across_two_nodes_matches_one_process(tmp_path, tiny_data):
    """MultiWorkerMirroredStrategy with TF_CONFIG naming node1 and node2 (a worker each)."""
    cli("sweep", sweep_yaml(tmp_path, tiny_data, "tfdist", KERAS_HEAD_ONLY), "--results", tmp_path)
    one = one_process_result(tmp_path, tiny_data, KERAS_HEAD_ONLY)
    (run,) = finished(tmp_path / "tfdist", 300)
    assert_matches(rundir.read_result(tmp_path / "tfdist" / run.run_id), one, "tf-distribute")
    assert run.node == "node[1-2]"


def test_keras_horovod_across_two_nodes_matches_one_process(tmp_path, tiny_data, two_nodes, horovod_venv):
    """The Horovod venv's `crackhpc sweep`; srun starts a task on each node, which meet at rank 0's
    Gloo rendezvous on node1 (no horovodrun, no MPI)."""
    path = test_horovod._sweep(tmp_path, tiny_data, "hvd2", TWO)
    env = test_horovod._env(horovod_venv, SLURM_CONF=two_nodes)  # it leaves out the SLURM_* variables
    subprocess.run(
        ["crackhpc", "sweep", path, "--executor", "slurm", "--results", tmp_path],
        env=env,
        check=True,
        capture_output=True,
    )
    one = test_horovod.single_process_result(tmp_path, tiny_data, horovod_venv)
    (run,) = finished(tmp_path / "hvd2", 300)
    assert run.node == "node[1-2]"
    test_horovod._matches_one_process(test_horovod._completed(tmp_path / "hvd2" / run.run_id), one)
