"""The launcher through real submitit executors (local processes and debug)."""

import json

import pytest

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.data.split import manifest_hash, read_manifest
from crackhpc.launcher import Submission, submit

from .conftest import tiny_sweep

TWO_SEEDS = {"seed": [0, 1]}


def test_local_sweep_runs_every_config_and_skips_completed_on_resubmission(tmp_path, write_yaml, tiny_data):
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, grid=TWO_SEEDS)))
    states = submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    sweep_dir = tmp_path / "results" / "tiny"
    assert list(states.values()) == ["completed", "completed"]
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert saved["executor"] == "local" and saved["finished"]
    assert sorted(saved["current_runs"]) == sorted(saved["runs"])
    splits = list((sweep_dir / "splits").iterdir())
    assert len(splits) == 1 and splits[0].stem == manifest_hash(read_manifest(splits[0]))
    for run_id, entry in saved["runs"].items():
        assert rundir.read_result(sweep_dir / run_id)["status"] == "completed"
        # one manifest for the sweep, named by its hash and by each run's config.yaml
        assert rundir.manifest_of(sweep_dir / run_id) == sweep_dir / run_id / "../splits" / splits[0].name
        assert not (sweep_dir / run_id / "split.csv").exists()
        assert entry["job_id"]
    lines = []
    assert submit(sweep, tmp_path / "results", Submission("local"), echo=lines.append) == {}
    assert "2 runs, 0 to submit" in lines[0]
    assert json.loads((sweep_dir / "sweep.json").read_text())["runs"] == saved["runs"]


def test_failed_run_is_recorded_and_resubmitted_only_on_request(tmp_path, write_yaml, tiny_data, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for image in data.rglob("*.jpg"):
        image.write_bytes(b"broken")
    path = write_yaml(tiny_sweep(data))
    sweep = load_sweep(path)
    # the run it waited for raised: exit 1, and one line naming it
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path / "results")]) == 1
    sweep_dir = tmp_path / "results" / "tiny"
    (run_id,) = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert f"1 of 1 runs did not complete: {run_id} failed" in capsys.readouterr().err
    result = rundir.read_result(sweep_dir / run_id)
    assert result["status"] == "failed" and "no readable images" in result["error"]
    lines = []
    submit(sweep, tmp_path / "results", Submission("debug", dry_run=True), echo=lines.append)
    assert "skip: failed (use --retry-failed)" in "\n".join(lines)
    lines = []
    assert submit(sweep, tmp_path / "results", Submission("local"), echo=lines.append) == {}
    assert lines[1] == f"  not resubmitted without --retry-failed: {run_id} (failed)"
    lines = []
    submit(sweep, tmp_path / "results", Submission("debug", dry_run=True, retry_failed=True), echo=lines.append)
    assert "1 to submit" in lines[0]


def test_dry_run_submits_nothing(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data, grid=TWO_SEEDS))
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 to submit" in out and "tasks/node=1" in out and "2 local processes, at most" in out
    assert not (tmp_path / "r").exists()


def test_cli_reports_bad_config_in_one_line(tmp_path, write_yaml, capsys):
    path = write_yaml("name: x\ndata: {synthetic: {n: 10}}\ndefaults: {model: resnet19}\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: defaults.model: unknown value 'resnet19'")


def test_synthetic_sweep_makes_its_data(tmp_path, write_yaml):
    path = write_yaml(
        """\
        name: syn
        data: {synthetic: {n: 24, size: 32}, split: [0.5, 0.25, 0.25]}
        defaults: {pretrained: false, epochs: 1, batch_size: 8, input_size: 32}
        resources: {gpus_per_node: 0, cpus_per_task: 1}
        """.replace("        ", "")
    )
    submit(load_sweep(path), tmp_path / "results", Submission("debug"), echo=lambda *_: None)
    assert len(list((tmp_path / "results" / ".data").glob("synth-n24-32px-seed0/*/*.jpg"))) == 24
    (run_id,) = json.loads((tmp_path / "results" / "syn" / "sweep.json").read_text())["runs"]
    assert rundir.read_result(tmp_path / "results" / "syn" / run_id)["status"] == "completed"


@pytest.mark.tf
def test_debug_executor_runs_a_mixed_sweep_in_one_process(tmp_path, write_yaml, tiny_data):
    """TensorFlow then torchvision in one process segfaults: the debug executor must order the runs."""
    import subprocess
    import sys

    pytest.importorskip("tensorflow", reason="the Keras run needs TensorFlow: pip install 'crackhpc[tf]'")
    path = write_yaml(
        tiny_sweep(
            tiny_data, defaults={"epochs": 1}, runs=[{"framework": "keras", "model": "vgg16"}, {"framework": "torch"}]
        )
    )
    argv = ["sweep", str(path), "--executor", "debug", "--results", str(tmp_path / "r")]
    out = subprocess.run([sys.executable, "-m", "crackhpc.cli", *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    states = [rundir.read_result(d)["status"] for d in sorted((tmp_path / "r" / "tiny").glob("*-*-*"))]
    assert states == ["completed", "completed"]
