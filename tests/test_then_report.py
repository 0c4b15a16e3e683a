"""`crackhpc sweep --then-report` (crackhpc/then_report.py) on the real local Slurm: a report job after
the submission's arrays writes the report and the MLflow import with nobody waiting; status shows
it, cancel cancels it. (With the local executor the report comes after the wait: the `tracked`
fixture of tests/conftest.py, checked here too.)"""

import json
import subprocess

import pytest

from crackhpc.status import report_job

from .test_slurm_integration import cli, slurm_yaml, until


def test_a_sweep_that_waits_reports_after_the_wait(tracked):
    """The fixture's `crackhpc sweep --executor local --then-report --mlflow`."""
    mlflow = pytest.importorskip("mlflow")
    assert (tracked / "report.md").is_file() and (tracked / "report" / "test-accuracy.png").is_file()
    assert "report_job" not in json.loads((tracked / "sweep.json").read_text())  # no job: it ran in the sweep
    client = mlflow.MlflowClient(f"sqlite:///{tracked.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    assert len(client.search_runs([experiment.experiment_id], "tags.`crackhpc.run_id` != ''")) == 2


def _slurm_times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(start, end) of each allocation, from sacct (ISO times, which sort as strings)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,Start,End", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {row.split("|")[0]: tuple(row.split("|")[1:]) for row in out.splitlines()}


@pytest.mark.slurm
def test_the_report_job_reports_and_imports_after_the_arrays(tmp_path, tiny_data, slurm_cluster):
    mlflow = pytest.importorskip("mlflow")
    path = slurm_yaml(tmp_path, tiny_data, "later", grid={"seed": [0, 1]})
    results = tmp_path / "results"
    out = cli("sweep", path, "--executor", "slurm", "--results", results, "--then-report", "--mlflow")
    sweep_dir = results / "later"
    # back at once: the jobs are queued or running, and the report is the report job's to write
    assert not (sweep_dir / "report.md").exists()
    record = json.loads((sweep_dir / "sweep.json").read_text())
    job = record["report_job"]
    arrays = sorted({run["job_id"].split("_")[0] for run in record["runs"].values()})
    assert len(arrays) == 1 and job["after"] == arrays and f"report job {job['job_id']}" in out
    dependency = subprocess.run(
        ["squeue", "-h", "-o", "%E", "-j", job["job_id"]], capture_output=True, text=True
    ).stdout
    assert not dependency.strip() or f"afterany:{arrays[0]}" in dependency  # gone already: it may have run
    assert f"report job {job['job_id']}" in cli("status", sweep_dir)

    ended = until(
        lambda: (r := report_job(sweep_dir)) and not r.active and r.state != "unknown" and r, "report job", 300
    )
    assert ended.state == "COMPLETED", (sweep_dir / f"report-job-{job['job_id']}.err").read_text()[-2000:]
    times = _slurm_times([*arrays, job["job_id"]])
    tasks = [t for j, t in times.items() if j != job["job_id"]]
    assert len(tasks) == 2 and times[job["job_id"]][0] >= max(end for _, end in tasks)
    assert (sweep_dir / "report.md").is_file() and "completed" in (sweep_dir / "summary.csv").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("later").experiment_id], "tags.`crackhpc.run_id` != ''")
    assert sorted(r.data.tags["crackhpc.state"] for r in runs) == ["completed", "completed"]
    assert "mlflow: 2 runs in experiment 'later'" in (sweep_dir / f"report-job-{job['job_id']}.out").read_text()


@pytest.mark.slurm
def test_cancel_cancels_the_report_job(tmp_path, tiny_data, slurm_cluster):
    path = slurm_yaml(tmp_path, tiny_data, "dropped", defaults={"epochs": 20})  # still training when cancelled
    cli("sweep", path, "--executor", "slurm", "--results", tmp_path, "--then-report")
    sweep_dir = tmp_path / "dropped"
    job_id = json.loads((sweep_dir / "sweep.json").read_text())["report_job"]["job_id"]
    assert "report job" in cli("cancel", sweep_dir)
    ended = until(lambda: (r := report_job(sweep_dir)) and not r.active and r.state != "unknown" and r, "cancel", 120)
    assert ended.state == "CANCELLED" and not (sweep_dir / f"report-job-{job_id}.out").exists()
