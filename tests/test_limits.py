"""Cluster limits: a job shape with more runs than MaxArraySize goes out as several arrays."""

import json

import pytest

from crackhpc import slurm
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit

from .test_slurm_integration import finished, quiet, slurm_yaml


def test_groups_are_cut_at_the_limit():
    assert slurm.split_arrays([[1, 2, 3, 4, 5], [6]], 2) == [[1, 2], [3, 4], [5], [6]]
    assert slurm.split_arrays([[1, 2, 3]], None) == [[1, 2, 3]]


@pytest.mark.slurm
def test_shape_beyond_max_array_size_goes_out_as_several_arrays(tmp_path, tiny_data, slurm_cluster):
    """tests/slurm/slurm.conf.in sets MaxArraySize=5: six runs of one shape make two jobs."""
    assert slurm.max_array_size() == 5
    path = slurm_yaml(tmp_path, tiny_data, "split", grid={"seed": [0, 1, 2, 3, 4, 5]}, defaults={"epochs": 1})
    lines = []
    submit(load_sweep(path), tmp_path, Submission("slurm", dry_run=True), echo=lines.append)
    shapes = [line.split(":")[0].strip() for line in lines if line.startswith("  6 runs")]
    assert shapes == ["6 runs as 2 job arrays (MaxArraySize), runs 1-5, 6"]  # one shape: one script
    submit(load_sweep(path), tmp_path, Submission("slurm", wait=True), **quiet)
    jobs = sorted(e["job_id"] for e in json.loads((tmp_path / "split" / "sweep.json").read_text())["runs"].values())
    arrays = sorted({j.split("_")[0] for j in jobs if "_" in j})
    assert len(arrays) == 1 and sorted(j for j in jobs if "_" in j) == [f"{arrays[0]}_{i}" for i in range(5)]
    assert len([j for j in jobs if "_" not in j]) == 1
    assert [r.state for r in finished(tmp_path / "split")] == ["completed"] * 6
