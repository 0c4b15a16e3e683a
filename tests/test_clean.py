"""`crackhpc clean`: what a sweep's completed runs no longer need is removed and counted; live runs,
and runs that may resume, keep everything."""

from __future__ import annotations

import json

import pytest

from crackhpc import procs, rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit

from .conftest import tiny_sweep


@pytest.fixture
def two_runs(tmp_path, write_yaml, tiny_data):
    """A completed sweep of two one-epoch runs (debug executor: in this process, with submitit's logs)."""
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, defaults={"epochs": 1}, grid={"seed": [0, 1]})))
    states = submit(sweep, tmp_path / "r", Submission("debug"), echo=lambda *_: None)
    assert set(states.values()) == {"completed"}
    return tmp_path / "r" / "tiny", sorted((tmp_path / "r" / "tiny").glob("torch-*"))


def _files(sweep_dir):
    return sorted(p for p in sweep_dir.rglob("*") if p.is_file())


def test_clean_frees_completed_runs_only_and_predict_then_says_why(two_runs, tmp_path, capsys):
    sweep_dir, (done, live) = two_runs
    # `live` is running again: its worker is a process that is alive (this one)
    rundir.update_result(live, status="running", process=procs.identity(), finished=None)
    before = _files(sweep_dir)
    sizes = {p: p.stat().st_size for p in before}
    assert main(["clean", str(sweep_dir), "--checkpoints", "--logs", "--caches", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert _files(sweep_dir) == before and "1 completed run(s)" in dry and "1 live run(s) left alone" in dry
    assert main(["clean", str(sweep_dir), "--checkpoints", "--logs", "--caches"]) == 0
    out = capsys.readouterr().out
    gone = set(before) - set(_files(sweep_dir))
    # the completed run's checkpoint and its job's submitit logs; nothing of the live run, no cache
    assert {p.name for p in gone if p.parent == done} == {"checkpoint.pt"}
    job = json.loads((sweep_dir / "sweep.json").read_text())["runs"][done.name]["job_id"]
    assert {p.name for p in gone if p.parent.name == "submitit"} == {f"{job}_0_log.out", f"{job}_0_log.err"}
    assert len(gone) == 3 and not any(live in p.parents or ".cache" in p.parts for p in gone)
    freed = sum(sizes[p] for p in gone)
    assert out.splitlines()[-1].endswith(f" ({freed:,} bytes) in 3 file(s)")
    assert "caches: freed 0 B in 0 file(s); kept: 1 live run(s) read them" in out
    assert (live / "checkpoint.pt").is_file() and (done / "worker.log").is_file()
    # predict: one line saying what removed the weights
    assert main(["predict", str(done), str(sweep_dir / "summary.csv"), "--out", str(tmp_path / "p")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{done}: no checkpoint.pt: `crackhpc clean --checkpoints` removed its trained weights on" in line
    # once no run is live, the caches go too
    rundir.update_result(live, status="completed", process=None)
    assert main(["clean", str(sweep_dir), "--caches"]) == 0
    assert not (sweep_dir / ".cache").exists() and (live / "checkpoint.pt").is_file()


def test_clean_needs_to_be_told_what(tmp_path, capsys):
    assert main(["clean", str(tmp_path)]) == 2
    assert "say what to remove: --checkpoints, --logs and/or --caches" in capsys.readouterr().err


def test_a_file_clean_cannot_remove_is_not_said_freed(two_runs, capsys):
    """A checkpoint that cannot be removed (here a folder in its place, which unlink refuses, as a
    read-only file system would): one line, exit 2, and no "freed" for what is still there."""
    sweep_dir, (done, _) = two_runs
    (done / "checkpoint.pt").unlink()
    (done / "checkpoint.pt").mkdir()
    (done / "checkpoint.pt" / "inside").write_text("x")
    assert main(["clean", str(sweep_dir), "--checkpoints"]) == 2
    captured = capsys.readouterr()
    assert (done / "checkpoint.pt" / "inside").is_file() and "freed" not in captured.out
    (line,) = captured.err.strip().splitlines()
    assert str(done / "checkpoint.pt") in line


def test_a_run_whose_result_cannot_be_read_is_named_and_left_alone(two_runs, capsys):
    """A damaged result.json (a full disk, a hand edit): the run may have completed, so clean names
    it, with the file and the fix, instead of counting it among the runs that resume."""
    sweep_dir, (done, damaged) = two_runs
    (damaged / rundir.RESULT).write_text('{"status": "compl')
    assert main(["clean", str(sweep_dir), "--checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "1 completed run(s)" in out and "resume from their checkpoints" not in out
    (line,) = [x for x in out.splitlines() if damaged.name in x]
    assert line.startswith(f"  {damaged.name}: left alone: ") and str(damaged / rundir.RESULT) in line
    assert (damaged / "checkpoint.pt").is_file() and not (done / "checkpoint.pt").exists()
