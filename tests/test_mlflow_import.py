"""`crackhpc report --mlflow` (crackhpc/mlflow_import.py) into a real MLflow: a SQLite store, and a
real `mlflow server` on localhost; read back with MlflowClient."""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.mlflow_import import RUN_ID
from crackhpc.record import SweepFolder
from crackhpc.worker import run

mlflow = pytest.importorskip("mlflow", reason="the MLflow import needs mlflow: pip install 'crackhpc[tracking]'")


def report(*args) -> tuple[int, str, str]:
    """`crackhpc report ...`: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["report", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def sqlite(results) -> str:
    return f"sqlite:///{results / 'mlflow.db'}"


def copy_results(tracked, tmp_path):
    """A copy of the tracked sweep and its MLflow store (another folder: another sweep to MLflow)."""
    shutil.copytree(tracked.parent, tmp_path / "results", symlinks=True)
    return tmp_path / "results" / tracked.name


def imported(client, sweep_dir) -> tuple:
    """(the sweep's parent run, {crackhpc run id: MLflow run}) of a sweep folder."""
    experiment = client.get_experiment_by_name(sweep_dir.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("crackhpc.sweep_dir") == str(sweep_dir.resolve())]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_id = {r.data.tags[RUN_ID]: r for r in children}
    assert len(by_id) == len(children)  # never two MLflow runs for one crackhpc run
    return parent, by_id


def flat(config: dict) -> dict[str, str]:
    """config.yaml as the import's params should be: train's keys by name, the others `section.key`."""
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config["train"].items()}
    for section in ("data", "resources"):
        for key, value in config[section].items():
            if isinstance(value, dict) and value:
                text.update(
                    {f"{section}.{key}.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
                )
            else:
                text[f"{section}.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return text


def assert_run_matches_its_folder(client, mlflow_run, run_dir, changed: dict | None = None) -> None:
    """params = config.yaml (but for the `changed` settings, which keep their first values), each
    metric's history = metrics.csv, the final numbers and the tags."""
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    assert mlflow_run.data.params == {**flat(config), **(changed or {})}
    rows = list(csv.DictReader(open(run_dir / rundir.METRICS)))
    for column in rundir.METRIC_COLUMNS[1:]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, column))
        assert history == [(int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-12)) for r in rows], column
    result = rundir.read_result(run_dir)
    for key in ("test_acc", "test_loss", "best_val_acc"):  # the latest value: at the last epoch
        assert mlflow_run.data.metrics[key] == pytest.approx(result[key])
        assert max(m.step for m in client.get_metric_history(mlflow_run.info.run_id, key)) == len(rows)
    tags = mlflow_run.data.tags
    job = SweepFolder(run_dir.parent).load().runs[run_dir.name]
    assert (tags["crackhpc.state"], tags["crackhpc.job_id"], tags["crackhpc.host"]) == (
        "completed",
        job.job_id,
        result["provenance"]["host"],
    )
    assert tags["crackhpc.gpu"] == "none" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == run_dir.name


def assert_sweep_imported(client, sweep_dir) -> None:
    parent, runs = imported(client, sweep_dir)
    run_dirs = sorted(p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file())
    assert sorted(runs) == [p.name for p in run_dirs]
    for run_dir in run_dirs:
        assert_run_matches_its_folder(client, runs[run_dir.name], run_dir)
        artifacts = {a.path for a in client.list_artifacts(runs[run_dir.name].info.run_id)}
        figures = {p.name for p in (sweep_dir / "report").glob(f"*-{run_dir.name}.png")}  # the report drew them
        assert (
            artifacts == {"config.yaml", *figures}
            and {f"curves-{run_dir.name}.png", f"confusion-{run_dir.name}.png"} <= figures
        )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "comparison.csv", "report.md", "report.html", "report"} <= artifacts
    assert parent.info.status == "FINISHED" and parent.info.run_name == sweep_dir.name


def test_a_sweep_is_a_parent_run_with_a_run_per_run(tracked):
    """The fixture's `crackhpc sweep --then-report --mlflow` imported into results/mlflow.db."""
    client = mlflow.MlflowClient(sqlite(tracked.parent))
    assert_sweep_imported(client, tracked)


def test_a_second_import_updates_the_same_runs(tracked, tmp_path):
    """Pending runs are imported with their state and updated once they complete; a run that trains
    on gets its new epochs in the same MLflow run; one retrained from scratch replaces its own."""
    sweep_dir = copy_results(tracked, tmp_path)
    uri = sqlite(sweep_dir.parent)
    later, resumed = sorted(p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file())
    for name in (rundir.METRICS, rundir.CHECKPOINT["torch"], rundir.MISCLASSIFIED):
        (later / name).unlink()  # as the launcher leaves a run before its job starts
    rundir.reset_result(later, run_id=later.name, status="pending", epochs=2)
    assert report(sweep_dir, "--no-figures", "--mlflow", uri)[0] == 0
    client = mlflow.MlflowClient(uri)
    _, first = imported(client, sweep_dir)
    assert first[later.name].info.status == "SCHEDULED" and first[later.name].data.tags["crackhpc.state"] == "pending"
    assert client.get_metric_history(first[later.name].info.run_id, "val_acc") == []

    run(later)  # completes after the first import
    config = (resumed / rundir.CONFIG).read_text()
    (resumed / rundir.CONFIG).write_text(config.replace("epochs: 2", "epochs: 3"))
    run(resumed)  # trains a third epoch
    code, out, _ = report(sweep_dir, "--no-figures", "--mlflow", uri)
    assert code == 0 and "2 updated" in out
    # MLflow params cannot change: the run keeps the epochs it was first imported with, and says so
    assert (
        f"note: MLflow run {first[resumed.name].info.run_id} of {resumed.name} keeps its first value of epochs" in out
    )
    _, second = imported(client, sweep_dir)
    assert {k: r.info.run_id for k, r in second.items()} == {k: r.info.run_id for k, r in first.items()}
    assert_run_matches_its_folder(client, second[later.name], later)
    assert_run_matches_its_folder(client, second[resumed.name], resumed, changed={"epochs": "2"})

    code, out, _ = report(sweep_dir, "--no-figures", "--mlflow", uri)
    assert code == 0 and "2 unchanged" in out
    rows = (later / rundir.METRICS).read_text().splitlines()
    (later / rundir.METRICS).write_text("\n".join([rows[0], rows[1].replace(",", ",1", 1), *rows[2:]]) + "\n")
    code, out, _ = report(sweep_dir, "--no-figures", "--mlflow", uri)
    assert code == 0 and "1 replaced" in out and "1 unchanged" in out
    _, third = imported(client, sweep_dir)
    assert third[later.name].info.run_id != first[later.name].info.run_id
    assert_run_matches_its_folder(client, third[later.name], later)


def test_a_damaged_run_folder_is_skipped_with_the_reports_problem_line(tracked, tmp_path):
    sweep_dir = copy_results(tracked, tmp_path)
    damaged = sorted(p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file())[0]
    (damaged / rundir.RESULT).write_text('{"status": "compl')
    code, _, err = report(sweep_dir, "--no-figures")
    problems = [line for line in err.splitlines() if line.startswith("problem: ")]
    assert code == 1 and len(problems) == 1 and str(damaged / rundir.RESULT) in problems[0]
    code, out, err = report(sweep_dir, "--no-figures", "--mlflow", sqlite(sweep_dir.parent))
    assert code == 1 and [line for line in err.splitlines() if line.startswith("problem: ")] == problems
    assert "1 created" in out and "1 damaged run folder(s) skipped" in out
    _, runs = imported(mlflow.MlflowClient(sqlite(sweep_dir.parent)), sweep_dir)
    assert damaged.name not in runs and len(runs) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line_and_the_report_is_kept(tracked, tmp_path):
    sweep_dir = copy_results(tracked, tmp_path)
    (sweep_dir / "report.md").unlink()
    uri = f"http://127.0.0.1:{_free_port()}"
    code, _, err = report(sweep_dir, "--no-figures", "--mlflow", uri)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: --mlflow {uri}: no MLflow tracking server answers there")
    assert (sweep_dir / "report.md").is_file()


def test_a_refused_write_is_one_line_and_nothing_is_lost(tracked, tmp_path):
    """MLflow refuses runs in a deleted experiment; once it is restored the same command imports."""
    sweep_dir = copy_results(tracked, tmp_path)
    uri = sqlite(sweep_dir.parent)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep_dir.name)
    client.delete_experiment(experiment.experiment_id)
    (sweep_dir / "report.md").unlink()
    code, _, err = report(sweep_dir, "--no-figures", "--mlflow", uri)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --mlflow {uri}: MLflow refused the import (") and "'active' state" in err
    assert (sweep_dir / "report.md").is_file()
    client.restore_experiment(experiment.experiment_id)
    assert report(sweep_dir, "--no-figures", "--mlflow", uri)[0] == 0
    assert len(imported(client, sweep_dir)[1]) == 2


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free localhost port (SQLite store, artifacts proxied), started once
    per session for the tests that ask for it, stopped whatever their outcome."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "wb")
    # Without its job runner (GenAI evaluation jobs, seven more processes that each load MLflow): on
    # 2 cores they triple the start-up, and the import needs none of them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn and job-runner children
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_import_into_a_tracking_server(tracked, mlflow_server, tmp_path):
    sweep_dir = copy_results(tracked, tmp_path)
    code, out, _ = report(sweep_dir, "--mlflow", mlflow_server)
    assert code == 0 and "2 created" in out and f"{mlflow_server}/#/experiments/" in out
    client = mlflow.MlflowClient(mlflow_server)
    assert_sweep_imported(client, sweep_dir)  # artifacts too, through the server
    code, out, _ = report(sweep_dir, "--mlflow", mlflow_server)
    assert code == 0 and "2 unchanged" in out
    assert len(imported(client, sweep_dir)[1]) == 2
