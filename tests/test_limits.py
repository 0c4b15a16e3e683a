"""Cluster limits: a job shape with more runs than MaxArraySize goes out as several arrays."""

import json
import subprocess

import pytest

from crackhpc import slurm
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit
from crackhpc.status import collect

from .test_slurm_integration import cli, slurm_yaml, squeue


def test_groups_are_cut_at_the_limit():
    assert slurm.split_arrays([[1, 2, 3, 4, 5], [6]], 2) == [[1, 2], [3, 4], [5], [6]]
    assert slurm.split_arrays([[1, 2, 3]], None) == [[1, 2, 3]]


@pytest.mark.slurm
def test_shape_beyond_max_array_size_goes_out_as_several_arrays(tmp_path, tiny_data, slurm_cluster):
    """tests/slurm/slurm.conf.in sets MaxArraySize=5: six runs of one shape make two jobs."""
    assert slurm.max_array_size() == 5
    # Held in the queue: what is tested is how Slurm took them, not the runs (other tests run arrays)
    held = {"sbatch": {"begin": "now+1hour"}}
    path = slurm_yaml(tmp_path, tiny_data, "split", grid={"seed": [0, 1, 2, 3, 4, 5]}, resources=held)
    lines = []
    submit(load_sweep(path), tmp_path, Submission("slurm", dry_run=True), echo=lines.append)
    shapes = [line.split(":")[0].strip() for line in lines if line.startswith("  6 runs")]
    assert shapes == ["6 runs as 2 job arrays (MaxArraySize), runs 1-5, 6"]  # one shape: one script
    cli("sweep", path, "--results", tmp_path)
    try:
        jobs = sorted(e["job_id"] for e in json.loads((tmp_path / "split" / "sweep.json").read_text())["runs"].values())
        arrays = sorted({j.split("_")[0] for j in jobs if "_" in j})
        assert len(arrays) == 1 and sorted(j for j in jobs if "_" in j) == [f"{arrays[0]}_{i}" for i in range(5)]
        assert len([j for j in jobs if "_" not in j]) == 1
        assert sorted(squeue("-r", "-j", ",".join(jobs), "-o", "%i").split()) == jobs  # Slurm's own view
        assert [r.state for r in collect(tmp_path / "split")[0]] == ["pending"] * 6
    finally:
        cli("cancel", tmp_path / "split")


def test_a_whole_sweep_is_cancelled_array_by_array():
    assert slurm.whole_arrays(["7_0", "7_1", "8_0", "8_1", "9"]) == ["7", "8", "9"]


@pytest.mark.slurm
def test_a_sweep_of_hundreds_of_held_runs_in_many_arrays_keeps_status_and_cancel_right(
    tmp_path, tiny_data, slurm_cluster, monkeypatch, capsys
):
    """300 runs at MaxArraySize 5: 60 arrays, asked about in batches of 7 ids per Slurm command (as
    10,000 runs are in batches of MAX_IDS_PER_CALL), so sacct, squeue and scancel each take several calls."""
    monkeypatch.setattr(slurm, "MAX_IDS_PER_CALL", 7)
    held = {"sbatch": {"begin": "now+1hour"}}
    path = slurm_yaml(tmp_path, tiny_data, "many", grid={"seed": list(range(300))}, resources=held)
    submit(load_sweep(path), tmp_path, Submission("slurm"), echo=lambda *_: None)
    sweep_dir = tmp_path / "many"
    try:
        record = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
        arrays = {e["job_id"].split("_")[0] for e in record.values()}
        assert len(record) == 300 and len(arrays) == 60
        statuses = collect(sweep_dir)[0]
        assert [(s.state.value, s.live) for s in statuses] == [("pending", True)] * 300
        assert all("waiting: BeginTime" in s.note for s in statuses)  # Slurm's reason, for every run
        # clean touches no live run
        files = sorted(sweep_dir.rglob("*"))
        assert main(["clean", str(sweep_dir), "--checkpoints", "--logs", "--caches"]) == 0
        assert sorted(sweep_dir.rglob("*")) == files and "0 completed run(s)" in capsys.readouterr().out
        # three runs of one array, by name: the array's other tasks stay queued
        array = sorted(arrays)[0]
        named = sorted(r for r, e in record.items() if e["job_id"].startswith(f"{array}_"))[:3]
        assert main(["cancel", str(sweep_dir), *named]) == 0
        states = {s.run_id: s.state.value for s in collect(sweep_dir)[0]}
        assert sorted(r for r, s in states.items() if s == "cancelled") == named
        assert sum(s == "pending" for s in states.values()) == 297
        assert len(squeue("-r", "-j", array, "-o", "%i").split()) == 2
    finally:
        assert main(["cancel", str(sweep_dir)]) == 0
    assert "297 run(s) cancelled" in capsys.readouterr().out
    assert {s.state.value for s in collect(sweep_dir)[0]} == {"cancelled"}
    queued = subprocess.run(["squeue", "-h", "-j", ",".join(sorted(arrays))], capture_output=True, text=True)
    assert not queued.stdout.strip()  # (squeue fails once it knows none of them: gone too)
