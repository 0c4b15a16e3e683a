"""Cluster profiles: merging into a sweep, errors naming the file and key, the cluster Slurm names,
and a profile chosen by --cluster on the real local Slurm."""

import json
import os
import subprocess
import textwrap

import pytest
import yaml

from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.errors import ConfigError
from crackhpc.profiles import apply_profile, cache_line, select_profile, slurm_cluster_name

from .conftest import tiny_sweep
from .test_slurm_integration import until

PROFILES = """\
    big:
      partition: gpu
      account: proj42
      qos: normal
      constraint: a100
      setup: [module load cuda]
      sbatch: {reservation: training, nice: 10}
      cache: ~/weights
    small:
      partition: debug
"""


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    def write(text: str = PROFILES):
        path = tmp_path / "clusters.yaml"
        path.write_text(textwrap.dedent(text))
        monkeypatch.setenv("CRACKHPC_CLUSTERS", str(path))
        return path

    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    return write


def test_the_sweeps_own_resources_win_over_the_profile(profiles, tiny_data, write_yaml, monkeypatch):
    profiles()
    monkeypatch.setenv("HOME", "/home/u")
    path = write_yaml(
        tiny_sweep(
            tiny_data,
            resources={"partition": "a100", "setup": ["export A=1"], "sbatch": {"nice": "5"}, "gpus_per_node": 2},
        )
    )
    profile = select_profile("big")
    res = load_sweep(path, edit=lambda raw: apply_profile(raw, profile)).resources
    assert (res.partition, res.account, res.qos, res.constraint, res.gpus_per_node) == (
        "a100",
        "proj42",
        "normal",
        "a100",
        2,
    )
    assert res.sbatch == {"reservation": "training", "nice": "5"}
    assert res.setup == (cache_line("/home/u/weights"), "module load cuda", "export A=1")
    assert load_sweep(path, edit=lambda raw: apply_profile(raw, None)).resources.account is None
    # A --set edit is the sweep's own too.
    res = load_sweep(path, overrides=["resources.qos=high"], edit=lambda raw: apply_profile(raw, profile)).resources
    assert res.qos == "high"


def test_cache_reaches_the_job_unless_the_shell_sets_one():
    line = cache_line("/scratch/$USER/cache")

    def run(env):
        return subprocess.run(
            ["bash", "-c", line + '; echo "$CRACKHPC_CACHE"'], env=env, capture_output=True, text=True
        ).stdout.strip()

    assert run({"USER": "ann"}) == "/scratch/ann/cache"
    assert run({"USER": "ann", "CRACKHPC_CACHE": "/mine"}) == "/mine"


@pytest.mark.parametrize(
    "text, error",
    [
        ("big: {partition: 'a b'}", "clusters.yaml: big.partition: 'a b' has characters Slurm names cannot hold"),
        ("big: {partitio: gpu}", "clusters.yaml: big.partitio: unknown key (allowed: partition, account"),
        ("big: {sbatch: {time: 10}}", "clusters.yaml: big.sbatch.time: not an sbatch option crackhpc passes through"),
        ("big: {setup: module load x}", "clusters.yaml: big.setup: expected a list"),
        ("big: {cache: '/a\"b'}", "clusters.yaml: big.cache: expected a folder path"),
        ("big: [gpu]", "clusters.yaml: big: expected a mapping of partition, account"),
        ("big: {partition: gpu\n", "clusters.yaml: not valid YAML at line 2"),
    ],
)
def test_profile_errors_name_the_file_and_key(profiles, text, error, tiny_data, write_yaml, capsys):
    path = profiles(text)
    with pytest.raises(ConfigError) as info:
        select_profile("big")
    assert str(info.value).startswith(str(path)) and error in str(info.value)
    # On the command line: one line, no traceback.
    assert main(["sweep", str(write_yaml(tiny_sweep(tiny_data))), "--cluster", "big", "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: {info.value}\n"


def test_unknown_cluster_and_missing_file(profiles, tmp_path, monkeypatch):
    profiles()
    with pytest.raises(ConfigError, match=r"clusters.yaml: nope: no such cluster profile \(profiles: big, small\)"):
        select_profile("nope")
    monkeypatch.setenv("CRACKHPC_CLUSTERS", str(tmp_path / "none.yaml"))
    assert select_profile() is None
    with pytest.raises(ConfigError, match="--cluster big: no cluster profile file .*none.yaml"):
        select_profile("big")


def test_without_cluster_the_profile_of_slurms_cluster_name_is_used(profiles, monkeypatch):
    profiles()
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "small")
    assert select_profile().name == "small"
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "elsewhere")
    assert select_profile() is None


@pytest.mark.slurm
def test_scontrol_names_the_local_cluster(slurm_cluster, monkeypatch):
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    assert slurm_cluster_name() == "crackhpc"  # ClusterName of tests/slurm/slurm.conf.in


@pytest.mark.slurm
@pytest.mark.timeout(240)  # it waits for its jobs (--wait)
def test_profile_chosen_by_cluster_on_the_real_slurm(tmp_path, tiny_data, profiles, slurm_cluster, capsys):
    """A sweep that names no partition and no setup gets both from the profile --cluster picks."""
    profiles(f"""\
        crackhpc: {{partition: nope}}
        test:
          partition: debug
          setup: ['echo "profile setup ran, cache $CRACKHPC_CACHE"']
          cache: {tmp_path / "cache"}
        """)
    sweep = yaml.safe_load(tiny_sweep(tiny_data, "prof"))
    sweep["resources"] = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10}
    path = tmp_path / "prof.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert (
        main(["sweep", str(path), "--executor", "slurm", "--results", str(tmp_path), "--cluster", "test", "--wait"])
        == 0
    )
    ((run_id, job),) = json.loads((tmp_path / "prof" / "sweep.json").read_text())["runs"].items()

    def accounted():  # slurmdbd records the job's end a moment after the worker has recorded its own
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "Partition,State", "-j", job["job_id"]], capture_output=True, text=True
        ).stdout
        return out if out.startswith("debug|COMPLETED") else None

    until(accounted, "sacct's row of the completed job", 60)
    assert f"profile setup ran, cache {tmp_path / 'cache'}\n" in open(job["stdout"]).read()
    # Without --cluster, the profile of Slurm's ClusterName (crackhpc) applies: its partition does not exist.
    assert main(["sweep", str(path), "--executor", "slurm", "--results", str(tmp_path / "auto")]) == 2
    assert "Slurm refused the job: error: invalid partition specified: nope" in capsys.readouterr().err


def test_predict_on_another_cluster_takes_that_clusters_profile_over_the_runs(profiles):
    from crackhpc.config import Resources
    from crackhpc.predict.shards import prediction_resources

    profiles()
    trained = Resources(
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=8,
        mem_gb=32,
        partition="old",
        account="oldproj",
        qos="long",
        setup=("module load old-cuda",),
        sbatch={"exclusive": True},
    )
    own = prediction_resources(trained, [])
    assert (own.nodes, own.gpus_per_node, own.partition, own.account, own.setup) == (
        1,
        1,
        "old",
        "oldproj",
        ("module load old-cuda",),
    )
    big = prediction_resources(trained, [], select_profile("big"))
    assert (big.partition, big.account, big.qos, big.constraint) == ("gpu", "proj42", "normal", "a100")
    assert big.setup == (cache_line(os.path.expanduser("~/weights")), "module load cuda")
    assert big.sbatch == {"reservation": "training", "nice": "10"}  # the trained run's exclusive is gone
    assert (big.nodes, big.gpus_per_node, big.cpus_per_task, big.mem_gb) == (1, 1, 8, 32)  # the job's shape stays
    small = prediction_resources(trained, ["resources.partition=gpu-small"], select_profile("small"))
    assert (small.partition, small.account, small.qos, small.setup) == ("gpu-small", None, None, ())
