"""`crackhpc logs`: attempts cut from hand-made log files, and from the real logs of requeued
submitit and plain sbatch jobs on the local Slurm."""

import json
import os
import re
import subprocess
import sys

import pytest

from crackhpc import atomic, rundir
from crackhpc.attempts import START_SHELL, worker_start
from crackhpc.cli import main
from crackhpc.logs import Following, attempts, follow, show
from crackhpc.record import SweepFolder


def start_line(job: str, restart: int | None, array: str = "") -> str:
    """What the job script's start line prints, run by bash with Slurm's variables."""
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": job}
    if restart:
        env["SLURM_RESTART_COUNT"] = str(restart)
    if array:
        env["SLURM_ARRAY_JOB_ID"], env["SLURM_ARRAY_TASK_ID"] = array.split("_")
    out = subprocess.run(["bash", "-c", START_SHELL], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == out.stderr  # the same line in both logs
    return out.stdout


@pytest.fixture
def sweep_dir(tmp_path):
    """Run `r1`: job 7_1 (array task; unique id 12) started twice, after an earlier job 5 that started once."""
    sweep, logs = tmp_path / "s", tmp_path / "s" / "submitit"
    logs.mkdir(parents=True)
    (sweep / "r1").mkdir()
    (logs / "5_0_log.out").write_text(start_line("5", 0) + "epoch 1 of job 5\n")
    (logs / "5_0_log.err").write_text(start_line("5", 0) + "Traceback: job 5 failed\n")
    (logs / "7_1_0_log.out").write_text(
        start_line("12", 0, "7_1")
        + "epoch 1\nRequeued job 7_1\n"
        + start_line("12", 1, "7_1")
        + "resumed after epoch 1\n"
    )
    (logs / "7_1_0_log.err").write_text(start_line("12", 0, "7_1") + "caught USR2\n" + start_line("12", 1, "7_1"))
    (sweep / "r1" / rundir.LOG).write_text(
        "".join(
            f"2026-01-01T00:00:0{i}+00:00 {worker_start('r1', j, r)}\nline {i}\n"
            for i, (j, r) in enumerate([("5", 0), ("7_1", 0), ("7_1", 1)])
        )
    )
    atomic.write_json(
        sweep / "sweep.json",
        {
            "runs": {
                "r1": {
                    "job_id": "7_1",
                    "executor": "slurm",
                    "history": ["5"],
                    "stdout": str(logs / "7_1_0_log.out"),
                    "stderr": str(logs / "7_1_0_log.err"),
                }
            }
        },
    )
    return sweep


def text_of(sweep, *args) -> tuple[str, str]:
    out = []
    notes = []
    show(sweep, "r1", *args, write=out.append, note=notes.append)
    return "".join(out), "\n".join(notes)


def test_attempts_run_over_the_jobs_history_then_each_requeue(sweep_dir):
    folder = SweepFolder(sweep_dir)
    found = attempts(folder, "r1", folder.load())
    assert [(a.number, a.job_id, a.restart) for a in found] == [(1, "5", 0), (2, "7_1", 0), (3, "7_1", 1)]
    assert found[0].files["out"] == sweep_dir / "submitit" / "5_0_log.out"

    out, notes = text_of(sweep_dir)  # the latest
    assert out.startswith("crackhpc: start of job 7_1, restart 1, on ") and out.endswith("resumed after epoch 1\n")
    assert "attempt 3 of 3: job 7_1, restart 1" in notes
    out, _ = text_of(sweep_dir, "out", 2)
    assert "restart 0" in out and "Requeued job 7_1\n" in out and "resumed" not in out
    assert text_of(sweep_dir, "err", 1)[0].endswith("Traceback: job 5 failed\n")
    assert text_of(sweep_dir, "err", 2)[0].endswith("caught USR2\n")
    assert text_of(sweep_dir, "worker", 2)[0] == f"2026-01-01T00:00:01+00:00 {worker_start('r1', '7_1', 0)}\nline 1\n"


def test_bad_input_is_one_line(sweep_dir, capsys):
    assert main(["logs", str(sweep_dir), "r1x"]) == 2
    assert capsys.readouterr().err == f"error: {sweep_dir}: no run 'r1x'; did you mean r1?\n"
    assert main(["logs", str(sweep_dir), "r1", "--attempt", "4"]) == 2
    assert capsys.readouterr().err == (
        "error: --attempt 4: the run has 3 attempts: 1 (job 5, restart 0); "
        "2 (job 7_1, restart 0); 3 (job 7_1, restart 1)\n"
    )
    assert main(["logs", str(sweep_dir / "nope"), "r1"]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    assert main(["logs", str(sweep_dir), "r1", "-f", "--attempt", "1"]) == 2
    assert "leave out --attempt" in capsys.readouterr().err


def test_follow_prints_what_the_log_gains_until_the_run_ends(sweep_dir):
    log = sweep_dir / "submitit" / "7_1_0_log.out"
    out, polls = [], []

    def is_live(_sweep, _run):
        polls.append(1)
        if len(polls) == 1:
            with open(log, "a") as fh:
                fh.write("epoch 2 — done\n")
        return len(polls) < 2

    follow(sweep_dir, "r1", how=Following(out.append, lambda _: None, poll_s=0.01, check_s=0, is_live=is_live))
    assert "".join(out).endswith("resumed after epoch 1\nepoch 2 — done\n") and len(polls) == 3


@pytest.mark.slurm
def test_logs_of_requeued_slurm_runs_show_each_attempt(tmp_path, tiny_data, slurm_cluster):
    """A submitit run and a plain sbatch run, each requeued once by USR2 after its first epoch."""
    from crackhpc.config import load_sweep
    from crackhpc.launcher import Submission, submit

    from .running import held_after_an_epoch, resumed_once_signalled
    from .test_slurm_integration import SLOW, finished, quiet, slurm_yaml

    slow = {**SLOW, "epochs": 4}
    submit(load_sweep(slurm_yaml(tmp_path, tiny_data, "sub", defaults=slow)), tmp_path, Submission("slurm"), **quiet)
    ((sub_run, sub_job),) = json.loads((tmp_path / "sub" / "sweep.json").read_text())["runs"].items()
    assert (
        main(
            [
                "sbatch",
                str(slurm_yaml(tmp_path, tiny_data, "plain", defaults=slow)),
                "--results",
                str(tmp_path),
                "--submit",
            ]
        )
        == 0
    )
    ((plain_run, plain_job),) = json.loads((tmp_path / "plain" / "sweep.json").read_text())["runs"].items()
    # Followed from submission on, in another process, as a user would.
    follower = subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", "logs", "-f", str(tmp_path / "sub"), sub_run],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held = held_after_an_epoch(tmp_path / "sub" / sub_run, tmp_path / "plain" / plain_run)
    for job, flags in ((sub_job, []), (plain_job, ["--batch"])):
        subprocess.run(["scancel", "--signal=USR2", *flags, job["job_id"]], check=True)
    resumed_once_signalled(*held)
    finished(tmp_path / "sub")
    finished(tmp_path / "plain")
    followed, notes = follower.communicate(timeout=60)  # ends by itself once the run has ended
    assert follower.returncode == 0, notes

    def logs(sweep, run, *args):
        out = subprocess.run(
            [sys.executable, "-m", "crackhpc.cli", "logs", str(tmp_path / sweep), run, *args],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout, out.stderr

    for sweep, run, job in (("sub", sub_run, sub_job["job_id"]), ("plain", plain_run, plain_job["job_id"])):
        first, notes = logs(sweep, run, "--attempt", "1")
        assert f"attempt 1 of 2: job {job}, restart 0" in notes
        assert first.startswith(f"crackhpc: start of job {job}, restart 0, on ") and "epoch 1/4" in first
        assert "restart 1" not in first and "resumed from checkpoint" not in first
        assert ("submitit INFO" in first) == (sweep == "sub")
        second, notes = logs(sweep, run)
        assert f"attempt 2 of 2: job {job}, restart 1" in notes
        assert second.startswith(f"crackhpc: start of job {job}, restart 1, on ") and "epoch 1/4" not in second
        assert re.search(r"resumed from checkpoint\.pt after epoch \d", second) and "completed: test acc" in second
        err, _ = logs(sweep, run, "--err", "--attempt", "1")
        # (srun's "DUE TO JOB REQUEUE" is there only if the step was still alive at the requeue: not asked)
        assert err.startswith(f"crackhpc: start of job {job}, restart 0") and "restart 1" not in err
        worker, _ = logs(sweep, run, "--worker", "--attempt", "2")
        assert worker_start(run, job, 1) in worker.splitlines()[0] and "completed: test acc" in worker
        provenance = rundir.read_result(tmp_path / sweep / run)["provenance"]
        assert (provenance["slurm_cluster"], provenance["slurm_partition"], provenance["host"]) == (
            "crackhpc",
            "debug",
            first.split()[8],
        )
    # The follower saw the first attempt, the requeue and the second attempt through to the end.
    assert followed.count("crackhpc: start of job") == 2 and "Requeued job" in followed
    assert "completed: test acc" in followed
