"""Provenance: the git state of the sweep file's repository, the worker's software and GPU, and
where they show up (result.json, sweep.json, summary.csv, report.md)."""

import json
import os
import subprocess
import sys

import pytest

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit
from crackhpc.provenance import git_state, gpus, submission
from crackhpc.report.build import write_document
from crackhpc.report.tables import write_reports

from .conftest import tiny_sweep


def git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


@pytest.fixture
def repo(tmp_path, tiny_data):
    """A git repository with a committed sweep file."""
    repo = tmp_path / "repo"
    (repo / "jobs").mkdir(parents=True)
    (repo / "jobs" / "tiny.yaml").write_text(tiny_sweep(tiny_data, defaults={"epochs": 1}))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "sweep")
    return repo


def test_git_state_says_whether_the_commit_alone_reproduces_the_sweep(repo, tmp_path):
    sweep = repo / "jobs" / "tiny.yaml"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(sweep) == {"git_commit": head, "git_dirty": False, "git_repo": str(repo)}
    (repo / "results").mkdir()
    (repo / "results" / "x").write_text("untracked output")
    assert git_state(sweep)["git_dirty"] is False  # untracked files elsewhere do not count
    other = repo / "jobs" / "new.yaml"
    other.write_text(sweep.read_text())
    assert git_state(other)["git_dirty"] is True  # the sweep file itself is not in the commit
    sweep.write_text(sweep.read_text() + "# edited\n")
    assert git_state(sweep)["git_dirty"] is True
    outside = tmp_path / "loose.yaml"
    outside.write_text("name: x\n")
    assert git_state(outside) == {"git_commit": None}
    info = submission(outside)
    assert info["git_commit"] is None and len(info["sweep_sha256"]) == 64 and info["submitted_from"]


@pytest.mark.parametrize("framework, absent", [pytest.param("keras", "torch", marks=pytest.mark.tf)])
def test_runtime_imports_only_the_runs_framework(framework, absent):
    code = (
        "import json, sys; from crackhpc.provenance import runtime; info = runtime(sys.argv[1]); "
        "print(json.dumps([info, sorted(m for m in ('torch', 'tensorflow') if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code, framework], capture_output=True, text=True, check=True)
    info, loaded = json.loads(out.stdout.splitlines()[-1])
    assert absent not in loaded
    expected = ("torch", "torchvision") if framework == "torch" else ("tensorflow", "keras")
    assert all(info[k] for k in (*expected, "crackhpc", "python", "submitit", "host"))
    assert not any(k in info for k in (("tensorflow", "keras") if framework == "torch" else ("torch", "torchvision")))


def test_gpus_are_the_visible_ones_nvidia_smi_lists(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\nprintf '0, GPU-aaa, NVIDIA A100-SXM4-40GB, 550.54\\n1, GPU-bbb, NVIDIA A100-SXM4-40GB, 550.54\\n"
        "2, GPU-ccc, NVIDIA H100 80GB HBM3, 550.54\\n'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpus() == {"gpu": "NVIDIA A100-SXM4-40GB", "gpu_count": 1, "nvidia_driver": "550.54"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb,GPU-ccc")
    assert gpus()["gpu"] == "NVIDIA A100-SXM4-40GB + NVIDIA H100 80GB HBM3" and gpus()["gpu_count"] == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus()["gpu_count"] == 3


def test_every_run_records_its_provenance_and_the_report_shows_it(repo, tmp_path):
    sweep = load_sweep(repo / "jobs" / "tiny.yaml")
    submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    sweep_dir = tmp_path / "results" / "tiny"
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["provenance"]["git_commit"] == head and record["provenance"]["git_dirty"] is False
    (run_id,) = record["runs"]
    prov = rundir.read_result(sweep_dir / run_id)["provenance"]
    import torch

    assert (
        prov["git_commit"] == head and prov["torch"] == torch.__version__ and prov["python"] == sys.version.split()[0]
    )
    assert prov["framework_version"] == f"torch {torch.__version__}" and "tensorflow" not in prov
    df, comp = write_reports(sweep_dir)
    assert df.iloc[0]["git_commit"] == head[:12] and not df.iloc[0]["git_dirty"]
    report = write_document(sweep_dir, df, comp, examples=0)
    section = report.split("## Provenance")[1]
    assert f"| 1 | {head[:12]} |" in section and f"torch {torch.__version__}" in section
