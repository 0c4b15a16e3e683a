"""The Slurm adapter: one source of sbatch options for submitit and the plain templates, and the
submitit internals the dry-run preview relies on."""

import os
import subprocess
import time
from pathlib import Path

import pytest
import submitit

from crackhpc import slurm
from crackhpc.config import DataConfig, Resources, RunSpec, TrainConfig
from crackhpc.engine import make_executor
from crackhpc.sbatch import sbatch_lines

RES = Resources(
    nodes=2,
    gpus_per_node=2,
    cpus_per_task=8,
    mem_gb=16,
    timeout_min=90,
    partition="gpu",
    account="proj",
    qos="high",
    constraint="a100|h100",
    sbatch={"mail-type": "END"},
)


def sbatch_options(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value.strip("'")
    return out


def test_submitit_and_the_templates_ask_slurm_for_the_same_resources(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # a login node, for make_executor
    params = slurm.submitit_parameters(RES, "slurm", "crackhpc-s")
    script = slurm.preview(make_executor("slurm", tmp_path, params), 3)
    submitted = sbatch_options(script.splitlines())
    spec = RunSpec(run_id="r", sweep="s", train=TrainConfig(), data=DataConfig(root="/d"), resources=RES)
    templated = sbatch_options(sbatch_lines(spec, Path("/run")))
    for option, value in slurm.options(RES).items():
        expected = "" if value is True else str(value)
        assert submitted[option] == expected and templated[option] == expected, option


def test_the_submitit_internals_of_the_preview_are_still_there(tmp_path, monkeypatch):
    """crackhpc.slurm.preview reaches into submitit: this fails loudly when an upgrade moves them."""
    from submitit.slurm import slurm as submitit_slurm

    assert callable(submitit_slurm._make_sbatch_string), "submitit.slurm.slurm._make_sbatch_string is gone"
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    submitter = make_executor("slurm", tmp_path, slurm.submitit_parameters(Resources(), "slurm", "x"))
    assert isinstance(submitter._executor, submitit.SlurmExecutor)
    assert "submitit.core._submit" in submitter._executor._submitit_command_str
    script = slurm.preview(submitter, 2)
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --requeue" in script


def test_local_parameters_keep_to_this_machine():
    params = slurm.submitit_parameters(Resources(gpus_per_node=0, cpus_per_task=2), "local", "x")
    assert params == {
        "timeout_min": 120,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 2,
        "gpus_per_node": 0,
        "name": "x",
    }


def fake_command(tmp_path, monkeypatch, name: str, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_hung_slurm_command_is_stopped_with_what_it_started(tmp_path, monkeypatch):
    """A site's wrapper script whose child hangs: after CRACKHPC_SLURM_TIMEOUT both are gone."""
    fake_command(tmp_path, monkeypatch, "sacct", "sleep 71.25 & wait")
    monkeypatch.setenv("CRACKHPC_SLURM_TIMEOUT", "1")
    with pytest.raises(slurm.SlurmUnavailable, match=r"^`sacct` did not answer in 1 s \(set CRACKHPC_SLURM_TIMEOUT"):
        slurm.sacct(["1"])
    time.sleep(0.5)
    assert not subprocess.run(["pgrep", "-f", "sleep 71.25"], capture_output=True).stdout


def test_hostnames_of_a_plain_list_need_no_scontrol_and_a_range_asks_it(tmp_path, monkeypatch):
    assert slurm.hostnames("node7,gpu2") == ("node7", "gpu2")
    fake_command(tmp_path, monkeypatch, "scontrol", 'test "$1 $2" = "show hostnames" && printf "n1\\nn2\\n"')
    assert slurm.hostnames("n[1-2]") == ("n1", "n2")
