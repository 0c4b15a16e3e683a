"""Sweeps through the real single-node Slurm of tests/slurm/start.sh: job arrays, multi-task and
GPU jobs, preemption and requeue, failures, cancel, resubmission and plain sbatch scripts.

Runs are tiny (40 images of 32 px, random-init ResNet18, 1 CPU each) and the node has 2 CPUs.
"""

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit
from crackhpc.report.tables import RESOURCE_COLUMNS, write_reports
from crackhpc.slurm import ACTIVE_STATES
from crackhpc.status import collect

from .conftest import tiny_sweep
from .running import held_after_an_epoch, in_foreground, resumed_once_signalled

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

ON_SLURM = {"partition": "debug", "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10}
# About a second an epoch on one core: time to act while the run trains.
SLOW = {"freeze_backbone": False, "input_size": 96, "epochs": 6}
quiet = {"echo": lambda *_: None}


def slurm_yaml(folder, data, name, resources=None, **top):
    path = folder / f"{name}.yaml"
    path.write_text(tiny_sweep(data, name, resources={**ON_SLURM, **(resources or {})}, **{"executor": "slurm", **top}))
    return path


def until(condition, what: str, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout_s:.0f}s")
        time.sleep(0.5)
    return value


def finished(sweep_dir, timeout_s: float = 180):
    """The runs' statuses once they have ended and sacct has their jobs' final rows: a worker records
    its outcome (and submitit's wait returns) a moment before Slurm has ended the job, and slurmdbd
    gets the job's accounting a moment later still."""

    def done():
        runs, _ = collect(sweep_dir)
        return not any(r.live or r.slurm_state in ("", *ACTIVE_STATES) for r in runs) and runs

    return until(done, f"runs of {sweep_dir} finishing", timeout_s)


def told(sweep_dir, run) -> str:
    """What Slurm's accounting and the job's own logs say of a run whose state is not the one a test
    expects: each step's state and exit code, and the end of every log in its folder."""
    steps = subprocess.run(
        ["sacct", "-P", "-o", "JobID,State,ExitCode", "-j", run.job_id], capture_output=True, text=True
    ).stdout
    logs = sorted((sweep_dir / run.run_id).glob("*.out")) + sorted((sweep_dir / run.run_id).glob("*.err"))
    return "\n".join([f"sacct: {steps}", *(f"{log.name}: ...{log.read_text()[-3000:]}" for log in logs)])


def record_of(sweep_dir) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def cli(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(map(str, args))) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def array_sweep(tmp_path_factory, tiny_data, slurm_cluster):
    """Four runs submitted together and waited for, after a dry run of the same submission."""
    folder = tmp_path_factory.mktemp("array")
    path = slurm_yaml(folder, tiny_data, "array", resources={"array_parallelism": 2}, grid={"seed": [0, 1, 2, 3]})
    preview = cli("sweep", path, "--executor", "slurm", "--results", folder / "results", "--dry-run")
    cli("sweep", path, "--results", folder / "results")
    finished(folder / "results" / "array")
    record = record_of(folder / "results" / "array")
    array_id = record["runs"][next(iter(record["runs"]))]["job_id"].split("_")[0]
    return SimpleNamespace(
        path=path,
        results=folder / "results",
        sweep_dir=folder / "results" / "array",
        record=record,
        preview=preview,
        array_id=array_id,
    )


def test_sweep_goes_out_as_one_job_array_and_completes(array_sweep):
    assert sorted(e["job_id"] for e in array_sweep.record["runs"].values()) == [
        f"{array_sweep.array_id}_{i}" for i in range(4)
    ]
    script = (array_sweep.sweep_dir / "submitit" / f"{array_sweep.array_id}_submission.sh").read_text()
    assert "\n#SBATCH --array=0-3%2\n" in script and "\n#SBATCH --requeue\n" in script
    runs = finished(array_sweep.sweep_dir)
    assert [(r.state, r.slurm_state, r.epoch) for r in runs] == [("completed", "COMPLETED", "2/2")] * 4


def test_dry_run_prints_the_script_submitit_submits(array_sweep):
    script = (array_sweep.sweep_dir / "submitit" / f"{array_sweep.array_id}_submission.sh").read_text()
    sbatch_lines = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    previewed = {line for line in array_sweep.preview.splitlines() if line.startswith("#SBATCH")}
    assert previewed == sbatch_lines and len(sbatch_lines) > 10
    assert script in array_sweep.preview  # the whole script, setup and srun line included


def test_report_of_slurm_runs_matches_the_local_executors(array_sweep, tmp_path, tiny_data):
    slurm, _ = write_reports(array_sweep.sweep_dir)
    local_sweep = load_sweep(slurm_yaml(tmp_path, tiny_data, "array", grid={"seed": [0]}))
    submit(local_sweep, tmp_path / "results", Submission("local"), **quiet)
    local, _ = write_reports(tmp_path / "results" / "array")
    assert list(slurm.columns) == list(local.columns)
    # the same columns filled, and Slurm's accounting besides (crackhpc.report.tables.RESOURCE_COLUMNS)
    filled = [c for c in slurm.columns if slurm[c].notna().all() and c not in RESOURCE_COLUMNS]
    assert filled == [c for c in local.columns if local[c].notna().all()]
    seed0 = slurm[slurm["seed"] == 0].iloc[0]
    assert (seed0["test_acc"], seed0["best_val_acc"]) == (local.iloc[0]["test_acc"], local.iloc[0]["best_val_acc"])


def test_sweeping_again_skips_completed_runs(array_sweep):
    lines = []
    assert submit(load_sweep(array_sweep.path), array_sweep.results, Submission("slurm"), echo=lines.append) == {}
    assert "4 runs, 0 to submit" in lines[0] and record_of(array_sweep.sweep_dir)["runs"] == array_sweep.record["runs"]


def test_two_tasks_train_data_parallel(tmp_path, tiny_data):
    cli("sweep", slurm_yaml(tmp_path, tiny_data, "ddp", resources={"tasks_per_node": 2}), "--results", tmp_path)
    (run,) = finished(tmp_path / "ddp")
    assert run.state == "completed" and "cpu=2" in run.tres
    assert rundir.read_result(tmp_path / "ddp" / run.run_id)["world_size"] == 2


def test_gpu_job_is_scheduled_on_the_nodes_gpus(tmp_path, tiny_data):
    cli("sweep", slurm_yaml(tmp_path, tiny_data, "gpu", resources={"gpus_per_node": 1}), "--results", tmp_path)
    (run,) = finished(tmp_path / "gpu")
    assert run.state == "completed" and "gres/gpu=1" in run.tres
    assert rundir.read_result(tmp_path / "gpu" / run.run_id)["device"] == "cpu"  # placeholder GPUs: no CUDA


def test_preempted_run_is_requeued_and_resumes_from_its_checkpoint(tmp_path, tiny_data):
    submit(
        load_sweep(slurm_yaml(tmp_path, tiny_data, "preempt", defaults=SLOW)), tmp_path, Submission("slurm"), **quiet
    )
    ((run_id, job),) = record_of(tmp_path / "preempt")["runs"].items()
    run_dir = tmp_path / "preempt" / run_id
    held = held_after_an_epoch(run_dir)
    # Preemption as submitit's own tests simulate it: USR2 to the job's steps.
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)
    resumed_once_signalled(*held)
    (run,) = finished(tmp_path / "preempt")
    assert (run.state, run.epoch) == ("completed", "6/6") and run.requeues >= 1
    resumed = re.findall(r"resumed from checkpoint\.pt after epoch (\d+)", (run_dir / rundir.LOG).read_text())
    assert resumed and int(resumed[0]) >= 1
    with open(run_dir / rundir.METRICS) as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]


def test_run_that_raises_fails_once_with_its_error_in_status_and_report(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for image in data.rglob("*.jpg"):
        image.write_bytes(b"broken")
    cli("sweep", slurm_yaml(tmp_path, data, "broken"), "--results", tmp_path)
    (run,) = finished(tmp_path / "broken")
    assert (run.state, run.slurm_state, run.requeues) == ("failed", "FAILED", 0), told(tmp_path / "broken", run)
    assert run.note.startswith("DataError: ") and "no readable images" in run.note
    out = cli("status", tmp_path / "broken")
    assert re.search(rf"{run.run_id}\s+failed\s+{run.job_id}\s.*DataError: ", out)
    report = cli("report", tmp_path / "broken")
    assert f"failed: {run.run_id}: {run.note}" in report


def test_live_jobs_are_left_alone_until_cancelled(tmp_path, tiny_data):
    sweep = load_sweep(slurm_yaml(tmp_path, tiny_data, "cancel", defaults={**SLOW, "epochs": 30}))
    submit(sweep, tmp_path, Submission("slurm"), **quiet)
    ((run_id, job),) = record_of(tmp_path / sweep.name)["runs"].items()
    lines = []
    submit(sweep, tmp_path, Submission("slurm", dry_run=True), echo=lines.append)
    assert "1 runs, 0 to submit" in lines[0] and re.search(rf"skip: job {job['job_id']} (pending|running)", lines[1])
    # Cancelled mid-training: the worker, which ignores SIGTERM, must not outlive the cancel.
    until(lambda: rundir.read_result(tmp_path / "cancel" / run_id).get("epochs_done"), "first epoch", 120)

    assert "1 run(s) cancelled" in cli("cancel", tmp_path / "cancel")
    until(
        lambda: not subprocess.run(["squeue", "-h", "-j", job["job_id"]], capture_output=True, text=True).stdout,
        "job gone from the queue",
        60,
    )  # until then the worker could still write result.json
    (run,) = finished(tmp_path / "cancel")
    assert (run.state, run.slurm_state) == ("cancelled", "CANCELLED"), told(tmp_path / "cancel", run)
    assert rundir.read_result(tmp_path / "cancel" / run_id)["status"] == "cancelled"  # what report reads
    assert re.search(rf"{run_id}\s+cancelled\s+{job['job_id']}\s", cli("status", tmp_path / "cancel"))

    lines = []
    submit(sweep, tmp_path, Submission("slurm", dry_run=True), echo=lines.append)
    assert "skip: cancelled (use --retry-failed)" in lines[1]
    lines = []
    submit(sweep, tmp_path, Submission("slurm", dry_run=True, retry_failed=True), echo=lines.append)
    assert "1 runs, 1 to submit" in lines[0]


def test_plain_sbatch_script_trains_through_srun(tmp_path, tiny_data):
    path = slurm_yaml(tmp_path, tiny_data, "plain", resources={"tasks_per_node": 2})
    out = cli("sbatch", path, "--results", tmp_path, "--submit")
    ((run_id, job),) = json.loads((tmp_path / "plain" / "sweep.json").read_text())["runs"].items()
    assert f"job {job['job_id']}" in out
    (run,) = finished(tmp_path / "plain")
    assert (run.state, run.slurm_state, run.job_id) == ("completed", "COMPLETED", job["job_id"]), told(
        tmp_path / "plain", run
    )
    result = rundir.read_result(tmp_path / "plain" / run_id)
    assert result["world_size"] == 2 and result["job_id"] == job["job_id"]
    assert "completed: test acc" in (tmp_path / "plain" / run_id / f"slurm-{job['job_id']}.out").read_text()


def test_plain_sbatch_script_requeues_itself_on_usr2_and_resumes(tmp_path, tiny_data):
    path = slurm_yaml(tmp_path, tiny_data, "plainpre", defaults=SLOW)
    cli("sbatch", path, "--results", tmp_path, "--submit")
    ((run_id, job),) = json.loads((tmp_path / "plainpre" / "sweep.json").read_text())["runs"].items()
    run_dir = tmp_path / "plainpre" / run_id
    held = held_after_an_epoch(run_dir)
    # What Slurm sends before the time limit (--signal=B:USR2@90), here by hand: the script's trap requeues.
    subprocess.run(["scancel", "--signal=USR2", "--batch", job["job_id"]], check=True)
    resumed_once_signalled(*held)
    (run,) = finished(tmp_path / "plainpre")
    assert (run.state, run.epoch, run.requeues) == ("completed", "6/6", 1)
    assert re.search(r"resumed from checkpoint\.pt after epoch [1-5]", (run_dir / rundir.LOG).read_text())


def test_status_watch_follows_a_sweep_to_completion(tmp_path, tiny_data):
    # Held in the queue until the watcher has printed its first line: a progress line, not the end.
    path = slurm_yaml(tmp_path, tiny_data, "watch", grid={"seed": [0, 1]}, resources={"sbatch": {"begin": "now+1hour"}})
    cli("sweep", path, "--results", tmp_path)
    (array,) = {job["job_id"].split("_")[0] for job in record_of(tmp_path / "watch")["runs"].values()}
    watch = subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", "status", str(tmp_path / "watch"), "--watch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = watch.stdout.readline()
        subprocess.run(["scontrol", "update", f"JobId={array}", "StartTime=now"], check=True, capture_output=True)
        rest, err = watch.communicate(timeout=300)
    finally:
        watch.kill()
    assert watch.returncode == 0, rest + err
    # piped: plain lines
    assert re.match(r"\d\d:\d\d:\d\d 2 runs: 2 pending; epochs 0/4 \[-{20}\] 0%$", first), first
    lines = rest.splitlines()
    assert lines[-1] == "2 runs: 2 completed; epochs 4/4 [####################] 100%"
    assert sum(" completed " in line for line in lines) == 2  # the final table
    follow = json.loads(
        subprocess.run(
            [sys.executable, "-m", "crackhpc.cli", "status", str(tmp_path / "watch"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [r["state"] for r in follow["runs"]] == ["completed", "completed"]


def sacct_elapsed(job_id: str) -> dict[str, int]:
    """Each job's (or array task's) ElapsedRaw, in seconds, from sacct."""
    accounting = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,ElapsedRaw", "-j", job_id], capture_output=True, text=True, check=True
    ).stdout
    return {job: int(seconds) for job, seconds in (line.split("|") for line in accounting.split())}


def test_status_resources_of_a_finished_job(array_sweep):
    finished(array_sweep.sweep_dir)
    elapsed = sacct_elapsed(array_sweep.array_id)
    out = cli("status", array_sweep.sweep_dir, "--resources")
    header, *rows = out.splitlines()[:5]
    assert "mem peak/req" in header and "cpu eff" in header and "time used/limit" in header
    for row in rows:
        s = elapsed[array_sweep.record["runs"][row.split()[0]]["job_id"]]
        # 1 GB and one CPU asked for, a 10 minute limit: what the sweep's resources say
        assert re.search(rf"/1G\s+\d+% of 1\s+{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}/0:10:00\s+0 ", row), row


def squeue(*args: str) -> str:
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.timeout(420)  # a 1-minute time limit, and maybe the node busy with leftover jobs first
def test_what_only_slurm_can_tell_pending_reason_time_limit_and_a_job_that_ends_without_a_result(tmp_path, tiny_data):
    """Produced on the real cluster, concurrently, in one time limit (a minute or a little more):
    a run whose setup sleeps through its 1-minute limit holds every CPU of the node, so a second run
    waits with Slurm's reason, then is killed: TIMEOUT; the second run's setup exits 0 before its
    worker starts: a job that ended COMPLETED without a result. Ctrl-C of the waiting `crackhpc
    sweep --wait` leaves both jobs to Slurm (exit 130), and `status --watch` follows them to the end
    and exits 1."""
    until(lambda: not squeue("-t", "RUNNING,COMPLETING"), "the node free of earlier tests' jobs", 120)
    cpus = int(
        subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    runs = [
        {"seed": 0, "resources": {"setup": ["sleep 600"], "timeout_min": 1, "cpus_per_task": cpus}},
        {"seed": 1, "resources": {"setup": ["exit 0"]}},
    ]
    path = slurm_yaml(tmp_path, tiny_data, "ends", runs=runs)
    sweep_dir = tmp_path / "ends"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", "sweep", str(path), "--results", str(tmp_path), "--wait"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT below: where it hung
        preexec_fn=in_foreground,
    )
    try:
        jobs = until(
            lambda: (
                (sweep_dir / "sweep.json").is_file()
                and len(ids := [j["job_id"] for j in record_of(sweep_dir)["runs"].values()]) == 2
                and ids
            ),
            "both jobs submitted",
            60,
        )
        sweep.send_signal(signal.SIGINT)
        try:
            _, err = sweep.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sweep.send_signal(signal.SIGABRT)
            pytest.fail(f"`crackhpc sweep --wait` did not stop at SIGINT:\n{sweep.communicate(timeout=30)[1][-5000:]}")
        assert sweep.returncode == 130 and err.splitlines()[-1] == (
            f"interrupted: 2 Slurm job(s) left queued or running, ids in {sweep_dir / 'sweep.json'}; "
            f"`crackhpc status {sweep_dir}` follows them, `crackhpc cancel {sweep_dir}` stops them"
        ), err
        assert sorted(squeue("-j", ",".join(jobs), "-o", "%i").split()) == sorted(jobs)  # left to Slurm
        waiting = until(
            lambda: next((r for r in collect(sweep_dir)[0] if "waiting:" in r.note), None), "a pending reason", 60
        )
        reason = squeue("-j", waiting.job_id, "-o", "%r")  # Resources, or Priority behind another pending job
        assert waiting.state == "pending" and reason and waiting.note == f"waiting: {reason}"
        watch = subprocess.run(
            [sys.executable, "-m", "crackhpc.cli", "status", str(sweep_dir), "--watch", "5"],
            capture_output=True,
            text=True,
            timeout=240,  # the time limit, enforced by slurmctld every 30 s, and Slurm's KillWait
        )
    finally:
        if sweep.poll() is None:
            sweep.kill()
        subprocess.run(["scancel", "--name", f"crackhpc-{sweep_dir.name}"])  # whatever a failure left queued
    assert watch.returncode == 1, watch.stdout + watch.stderr  # not every run completed
    last = watch.stdout.splitlines()[-1]
    assert last.startswith("2 runs: ") and "1 timeout" in last and "1 failed" in last, last
    sleeper, quitter = sorted(finished(sweep_dir), key=lambda r: "-s1-" in r.run_id)  # seed 0 sleeps
    assert (sleeper.state, sleeper.slurm_state) == ("timeout", "TIMEOUT")
    assert (quitter.state, quitter.slurm_state) == ("failed", "COMPLETED")
    for run in (sleeper, quitter):
        assert f"job {run.job_id} ended {run.slurm_state} before the worker recorded a result; see " in run.note


def test_report_resources_and_device_hours_come_from_slurms_accounting(array_sweep):
    finished(array_sweep.sweep_dir)
    df, _ = write_reports(array_sweep.sweep_dir)
    elapsed = sacct_elapsed(array_sweep.array_id)
    record = record_of(array_sweep.sweep_dir)
    for row in df.to_dict("records"):
        seconds = float(elapsed[record["runs"][row["run_id"]]["job_id"]])
        assert row["slurm_elapsed_s"] == seconds and row["compute_hours"] == seconds * 1 / 3600  # one CPU each
        assert row["mem_requested_gb"] == 1.0
    cli("report", array_sweep.sweep_dir, "--no-figures")
    md = (array_sweep.sweep_dir / "report.md").read_text()
    assert "## Resources" in md and "| memory peak / requested (GB) |" in md
