"""Pre-flight: missing ImageNet weights warn in a dry run and refuse a real submission; Slurm's
own answer to `sbatch --test-only` for each job shape, on the real local Slurm."""

import re

import pytest

from crackhpc.cli import main

from .conftest import tiny_sweep
from .test_slurm_integration import slurm_yaml


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    for var, value in (
        ("CRACKHPC_CACHE", tmp_path / "cache"),
        ("TORCH_HOME", tmp_path / "torch"),
        ("KERAS_HOME", tmp_path / "keras"),
    ):
        monkeypatch.setenv(var, str(value))


def test_dry_run_shows_the_plan_and_warns_of_missing_weights(no_weights, tmp_path, tiny_data, write_yaml, capsys):
    path = write_yaml(tiny_sweep(tiny_data, defaults={"pretrained": True}, grid={"model": ["resnet18", "vgg16"]}))
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"torch-resnet18-\w+ +submit", out) and re.search(r"torch-vgg16-\w+ +submit", out)
    assert "warning: pretrained weights for torch resnet18 not found: place resnet18-f37072fd.pth" in out
    assert out.rstrip().endswith("on the login node: crackhpc prefetch --models torch:resnet18,torch:vgg16")
    assert not (tmp_path / "tiny").exists()  # nothing written
    # A real submission refuses, in one line naming the fix.
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: pretrained weights not found for torch resnet18, torch vgg16: run `crackhpc prefetch "
        "--models torch:resnet18,torch:vgg16` on the login node, or set `pretrained: false`\n"
    )


@pytest.mark.slurm
def test_slurm_answers_test_only_for_each_job_shape(tmp_path, tiny_data, slurm_cluster, capsys):
    path = slurm_yaml(
        tmp_path,
        tiny_data,
        "pre",
        grid={"seed": [0, 1]},
        runs=[{"lr": 0.01, "resources": {"partition": "nope"}}, {"lr": 0.02, "resources": {"gpus_per_node": 1}}],
    )
    code = main(["sweep", str(path), "--executor", "slurm", "--results", str(tmp_path), "--dry-run"])
    captured = capsys.readouterr()
    answers = re.findall(r"^  sbatch --test-only: .*$", captured.out, re.M)
    assert len(answers) == 2, captured.out + captured.err
    assert "sbatch --test-only: REFUSED: error: invalid partition specified: nope" in answers[0]
    assert re.search(
        r"accepted: Job \d+ to start at \d{4}-\d\d-\d\dT[\d:]+ using 1 processors on nodes \S+ in partition debug",
        answers[1],
    )
    assert code == 2 and captured.err == "error: Slurm would refuse 2 run(s): see `sbatch --test-only` above\n"
    assert not (tmp_path / "pre").exists()
    # The real submission: sbatch's refusal in one line naming the sweep file (not submitit's copy of
    # sbatch's lines, nor a traceback).
    path = slurm_yaml(tmp_path, tiny_data, "bad", resources={"partition": "nope"})
    assert main(["sweep", str(path), "--executor", "slurm", "--results", str(tmp_path)]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(f"error: {path}: Slurm refused the job: error: invalid partition specified: nope")
