"""What crackhpc survives: a catalogue of faults, each done for real (signals, damaged files on disk,
two processes at once, a full file system), and what `status`, `report` and the exit codes say after.

    a worker killed by SIGKILL          → failed ("died without recording an outcome"), sweep exits 1,
                                          --retry-failed resumes it from its checkpoint
    Ctrl-C or kill of `crackhpc sweep`  → its local jobs stop, runs recorded cancelled, exit 130, one line
    two `crackhpc sweep` at once        → the second refuses in one line; a dry run sees the live run
    kill -9 of `crackhpc sweep`         → its running workers are shown orphaned; a new sweep leaves them
                                          running and says so; `crackhpc cancel` stops them
    damaged result.json, metrics.csv,   → one line each naming the file and the fix; every other run shown
      config.yaml, sweep.json
    a damaged checkpoint                → the run fails naming the file and what to do
    a dataset changed before a resume   → refused, not trained on a re-drawn split
    sacct that hangs or talks garbage   → status answers anyway, with a note
    --results a file, a full disk       → one line, exit 2
    a killed writer's temporary file    → removed when the run starts again
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crackhpc import procs, rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.launcher import Submission, submit

from .conftest import killed_writer, tiny_sweep
from .running import crackhpc, in_foreground, send, stepped_until, training, wait_until

LONG = {"epochs": 40}  # caught mid-training by stepped_until
ENDLESS = {"epochs": 2000}  # for runs that are stopped before they end


def status_of(sweep_dir: Path, capsys) -> tuple[str, str]:
    assert main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_a_killed_worker_is_failed_and_resumes_on_retry(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data, defaults=LONG))
    sweep_dir = tmp_path / "tiny"
    proc = crackhpc("sweep", str(path), "--executor", "local", "--results", str(tmp_path))
    run, held = stepped_until(proc, lambda: training(sweep_dir), "an epoch")
    os.kill(run["process"]["pid"], signal.SIGKILL)
    send(held, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "1 of 1 runs did not complete" in err
    out, _ = status_of(sweep_dir, capsys)
    assert " failed " in out and "died without recording an outcome" in rundir.read_result(run["run_dir"])["error"]
    assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path), "--retry-failed"]) == 0
    log = (run["run_dir"] / rundir.LOG).read_text()
    assert "resumed from checkpoint.pt after epoch" in log
    assert rundir.read_result(run["run_dir"])["status"] == "completed"


def _in_background():  # as `crackhpc sweep … &` from a script: SIGINT ignored, inherited by the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    "sig, background",
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["ctrl-c", "kill", "kill-in-background"],
)
def test_ctrl_c_stops_the_local_jobs_and_records_them(tmp_path, write_yaml, tiny_data, sig, background):
    one_at_a_time = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, "array_parallelism": 1}
    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS, grid={"seed": [0, 1, 2, 3]}, resources=one_at_a_time))
    sweep_dir = tmp_path / "tiny"
    proc = crackhpc(
        "sweep",
        str(path),
        "--executor",
        "local",
        "--results",
        str(tmp_path),
        preexec_fn=_in_background if background else in_foreground,
    )
    run = wait_until(lambda: training(sweep_dir), what="an epoch")
    # sweep.json is saved after every job: the first job is in it while the others wait for it
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert list(record["runs"]) == [run["run_dir"].name] and record["runs"][run["run_dir"].name]["job_id"]
    proc.send_signal(sig)  # to the command alone: it must stop what it started itself
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert (
        line
        == "interrupted: 4 run(s) recorded cancelled; `crackhpc sweep --retry-failed` resumes them from their checkpoints"
    )
    wait_until(lambda: not Path(f"/proc/{run['process']['pid']}").exists(), 30, "the worker to end")
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["runs"] and all(job["job_id"] for job in record["runs"].values())
    # Each worker stopped at the signal and recorded itself (one that ignored it would have been killed
    # after procs.stop's 10 s, and recorded cancelled by the sweep instead); the others never started.
    result = rundir.read_result(run["run_dir"])
    assert (result["status"], result["error"]) == ("cancelled", "interrupted"), result
    states = {d.name: rundir.read_result(d)["status"] for d in sweep_dir.glob("torch-*")}
    assert set(states.values()) == {"cancelled"}, states  # the one that ran and the three that waited


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crackhpc.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_second_sweep_of_a_busy_folder_refuses_and_a_dry_run_sees_the_live_run(
    tmp_path, write_yaml, tiny_data, capsys
):
    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS))
    sweep_dir = tmp_path / "tiny"
    first = crackhpc("sweep", str(path), "--executor", "local", "--results", str(tmp_path))
    try:
        wait_until(lambda: training(sweep_dir), what="an epoch")
        since = json.loads((sweep_dir / "sweep.json").read_text())["owner"]["since"]
        holder = f"another `crackhpc sweep` (pid {first.pid} on {procs.HOST}, since {since}) is submitting or running"
        second = run_cli("sweep", str(path), "--executor", "local", "--results", str(tmp_path))
        assert second.returncode == 2 and second.stderr.count("\n") == 1 and holder in second.stderr
        dry = run_cli("sweep", str(path), "--executor", "local", "--results", str(tmp_path), "--dry-run")
        assert "0 to submit" in dry.stdout and "skip: job" in dry.stdout and "running" in dry.stdout
        # cancelled from another shell: the run the sweep waited for did not complete, exit 1
        assert main(["cancel", str(sweep_dir)]) == 0
        _, err = first.communicate(timeout=60)
        assert first.returncode == 1 and "1 of 1 runs did not complete" in err, err
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=60)


def test_ctrl_c_of_a_debug_sweep_records_its_run_cancelled_and_retry_resumes_it(tmp_path, write_yaml, tiny_data):
    path = write_yaml(tiny_sweep(tiny_data, defaults=LONG))
    sweep_dir = tmp_path / "tiny"
    proc = crackhpc("sweep", str(path), "--executor", "debug", "--results", str(tmp_path))  # in its own process
    run, held = stepped_until(proc, lambda: training(sweep_dir), "an epoch")
    proc.send_signal(signal.SIGINT)
    send(held, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert line == (
        "interrupted: 1 run(s) recorded cancelled; `crackhpc sweep --retry-failed` resumes them from their checkpoints"
    )
    result = rundir.read_result(run["run_dir"])
    assert (result["status"], result["error"]) == ("cancelled", "interrupted")
    argv = ["sweep", str(path), "--executor", "debug", "--results", str(tmp_path)]
    assert main(argv) == 0  # cancelled runs wait for --retry-failed
    assert rundir.read_result(run["run_dir"])["status"] == "cancelled"
    assert main([*argv, "--retry-failed"]) == 0
    log = (run["run_dir"] / rundir.LOG).read_text()
    (resumed,) = re.findall(r"resumed from checkpoint\.pt after epoch (\d+)", log)
    assert int(resumed) >= run["epochs_done"]
    with open(run["run_dir"] / rundir.METRICS) as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == list(range(1, LONG["epochs"] + 1))
    assert rundir.read_result(run["run_dir"])["status"] == "completed"


def test_workers_left_by_a_killed_sweep_are_named_orphans_and_cancel_stops_them(
    tmp_path, write_yaml, tiny_data, capsys
):
    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS))
    sweep_dir = tmp_path / "tiny"
    # Not piped: the orphans would hold the pipes open.
    first = subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", "sweep", str(path), "--executor", "local", "--results", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = wait_until(lambda: training(sweep_dir), what="an epoch")
        first.kill()
        first.wait(timeout=30)
        out, _ = status_of(sweep_dir, capsys)
        assert " running " in out and f"orphaned: its `crackhpc sweep` (pid {first.pid} on " in out
        assert main(["sweep", str(path), "--executor", "local", "--results", str(tmp_path)]) == 0
        said = capsys.readouterr().out
        assert (
            "0 to submit" in said
            and f"still running from a `crackhpc sweep` that has gone: {run['run_dir'].name};" in said
        )
        assert procs.alive(run["process"])  # left alone: it records its own outcome
        assert main(["cancel", str(sweep_dir)]) == 0
        assert procs.alive(run["process"]) is False and rundir.read_result(run["run_dir"])["status"] == "cancelled"
    finally:
        first.kill()
        for pid in [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]:
            try:  # whatever the test left of the sweep's processes
                if str(sweep_dir) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def make_runs(tmp_path, tiny_data, n: int = 3) -> tuple[Path, list[Path]]:
    """A finished local sweep of `n` one-epoch runs (debug executor: in this process)."""
    sweep = load_sweep(tiny_sweep_file(tmp_path, tiny_data, n))
    submit(sweep, tmp_path / "r", Submission("debug"), echo=lambda *_: None)
    sweep_dir = tmp_path / "r" / "tiny"
    return sweep_dir, sorted(p for p in sweep_dir.glob("torch-*"))


def tiny_sweep_file(tmp_path: Path, tiny_data: Path, n: int) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_sweep(tiny_data, defaults={"epochs": 1}, grid={"seed": list(range(n))}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data):
    return make_runs(tmp_path_factory.mktemp("finished"), tiny_data, 5)


@pytest.mark.parametrize(
    "damage, file, expected",
    [
        (lambda p: p.write_text(p.read_text()[:20]), rundir.RESULT, "not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), rundir.RESULT, "expected a JSON object, got list"),
        (lambda p: p.write_bytes(os.urandom(300)), rundir.METRICS, "not a metrics table"),
        (lambda p: p.write_text("a,b\n1,2\n"), rundir.METRICS, "not a metrics table"),
        (lambda p: p.write_text("run_id: [unclosed\n"), rundir.CONFIG, "not valid YAML"),
        (lambda p: p.write_text("run_id: x\n"), rundir.CONFIG, "sweep: required"),
    ],
)
def test_a_damaged_run_file_is_one_line_and_the_other_runs_stay(tmp_path, finished, capsys, damage, file, expected):
    import shutil

    sweep_dir = tmp_path / "tiny"
    shutil.copytree(finished[0], sweep_dir)
    victim = sorted(sweep_dir.glob("torch-*"))[1]
    damage(victim / file)
    out, err = status_of(sweep_dir, capsys)
    still_completed = 4 if file == rundir.RESULT else 5  # a damaged config or curve does not undo a result
    assert out.count(" completed ") == still_completed and victim.name in out and "Traceback" not in out + err
    if file != rundir.CONFIG:  # status needs no config.yaml: the report names it, below
        (line,) = err.splitlines()
        assert line.startswith(f"warning: {victim / file}: {expected}") and "crackhpc sweep" in line
    assert main(["report", str(sweep_dir), "--format", "csv", "--misclassified", "0"]) == 1  # 1: a problem
    report = capsys.readouterr()
    assert report.out.count("\n") == 6 and "Traceback" not in report.err  # header + 5 runs
    (problem,) = [line for line in report.err.splitlines() if line.startswith("problem:")]
    assert problem.startswith(f"problem: {victim / file}: ") and "--retry-failed" in problem
    if file == rundir.RESULT:
        (row,) = [r for r in report.out.splitlines() if r.startswith(victim.name)]
        assert ",unreadable," in row and str(victim / file) in row


def test_a_damaged_sweep_json_leaves_status_the_run_folders(tmp_path, finished, tiny_data, capsys):
    import shutil

    sweep_dir = tmp_path / "tiny"
    shutil.copytree(finished[0], sweep_dir)
    (sweep_dir / "sweep.json").write_bytes(b"\x00\x01garbage")
    out, err = status_of(sweep_dir, capsys)
    assert out.count(" completed ") == 5
    (line,) = err.splitlines()
    assert line.startswith(f"warning: {sweep_dir / 'sweep.json'}: not valid JSON (")
    assert line.endswith(
        "; move it aside and run `crackhpc sweep` again: it rebuilds the record from the run "
        "folders (jobs still queued are then not known to `status` and `cancel`)"
    )
    # a submission refuses to overwrite it: it may hold the ids of jobs still queued
    assert main(["sweep", str(tiny_sweep_file(tmp_path, tiny_data, 1)), "--results", str(tmp_path)]) == 2
    assert "sweep.json: not valid JSON" in capsys.readouterr().err


def test_a_damaged_checkpoint_fails_the_run_naming_the_file(tmp_path, tiny_data):
    sweep_dir, (run_dir, *_) = make_runs(tmp_path, tiny_data, 1)
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    rundir.update_result(run_dir, status="failed")
    submit(
        load_sweep(tmp_path / "tiny.yaml"), tmp_path / "r", Submission("local", retry_failed=True), echo=lambda *_: None
    )
    result = rundir.read_result(run_dir)
    assert result["status"] == "failed"
    assert result["error"].startswith(f"DamagedFileError: {checkpoint}: cannot be read (")
    assert result["error"].endswith(
        "delete it to restart the run from its first epoch, then `crackhpc sweep --retry-failed`"
    )


def test_a_changed_dataset_is_not_resumed(tmp_path, tiny_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = tmp_path / "s.yaml"
    path.write_text(tiny_sweep(data, defaults={"epochs": 1}))
    submit(load_sweep(path), tmp_path / "r", Submission("debug"), echo=lambda *_: None)
    (run_dir,) = (tmp_path / "r" / "tiny").glob("torch-*")
    rundir.update_result(run_dir, status="failed")  # as if killed after its first epoch
    next(data.glob("Positive/*.jpg")).unlink()  # the dataset changes: the split is drawn anew
    submit(
        load_sweep(path.with_name("s.yaml")),
        tmp_path / "r",
        Submission("local", retry_failed=True),
        echo=lambda *_: None,
    )
    result = rundir.read_result(run_dir)
    assert result["status"] == "failed" and "trained on another split of the data" in result["error"]
    # the sweep's manifests: the one the run trained on, and the changed dataset's, each stored once
    assert len(list((tmp_path / "r" / "tiny" / "splits").iterdir())) == 2


def test_a_worker_given_a_broken_or_no_config_says_so_in_one_line_with_exit_2(tmp_path):
    """Bad input, as for every crackhpc command (README, exit codes): damaged and missing alike."""
    worker = [sys.executable, "-m", "crackhpc.worker", str(tmp_path)]
    out = subprocess.run(worker, capture_output=True, text=True)
    assert (
        out.returncode == 2
        and out.stderr == f"error: {tmp_path / rundir.CONFIG}: not a crackhpc run folder (config.yaml missing)\n"
    )
    (tmp_path / rundir.CONFIG).write_text("run_id: [\n")
    out = subprocess.run(worker, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"error: {tmp_path / rundir.CONFIG}: not valid YAML")
    assert rundir.read_result(tmp_path)["status"] == "failed"


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sacct` and `squeue` on PATH that answer as told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def install(script: str):
        for name in ("sacct", "squeue"):
            (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
            (bin_dir / name).chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    return install


@pytest.mark.parametrize(
    "script, note",
    [
        ("exec sleep 30", "`sacct` did not answer in 1 s (set CRACKHPC_SLURM_TIMEOUT to wait longer)"),
        ("echo 'Lorem|ipsum'; echo 'dolor sit amet'", "sacct answered something crackhpc cannot read"),
    ],
)
def test_status_answers_when_sacct_hangs_or_talks_garbage(tmp_path, finished, fake_slurm, script, note):
    import shutil

    fake_slurm(script)
    sweep_dir = tmp_path / "tiny"
    shutil.copytree(finished[0], sweep_dir)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    for i, job in enumerate(record["runs"].values()):
        job.update(executor="slurm", job_id=f"77_{i}")
    (sweep_dir / "sweep.json").write_text(json.dumps(record))
    rundir.update_result(next(sweep_dir.glob("torch-*")), status="running")
    status = subprocess.run(
        [sys.executable, "-m", "crackhpc.cli", "status", str(sweep_dir), "--json"],
        env={**os.environ, "CRACKHPC_SLURM_TIMEOUT": "1"},  # the documented setting, read at import
        capture_output=True,
        text=True,
        timeout=60,  # less than the fake sacct's 30 s twice (sacct, then squeue)
    )
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    runs = json.loads(status.stdout)["runs"]
    assert [r["state"] for r in runs].count("completed") == 4 and any(note in r["note"] for r in runs), runs


def test_results_that_are_a_file_a_full_or_a_read_only_disk_are_one_line(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data))
    (tmp_path / "afile").write_text("")
    assert main(["sweep", str(path), "--results", str(tmp_path / "afile"), "--executor", "local"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: --results {tmp_path / 'afile'}: a file, not a folder; "
        "give a folder for the sweeps' results"
    )
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs for a full disk here: {mounted.stderr.strip()}")
    try:
        (full / "filler").write_bytes(b"\0" * 60_000)
        assert main(["sweep", str(path), "--results", str(full), "--executor", "local"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No space left on device; free some space and run it again" in err
        assert err.startswith(f"error: {full}/")  # the file it could not write
        subprocess.run(["mount", "-o", "remount,ro", str(full)], check=True)
        assert main(["sweep", str(path), "--results", str(full), "--executor", "local"]) == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1
            and "Read-only file system; a read-only file system: write to a folder elsewhere" in err
        )
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_a_killed_writers_temporary_file_is_removed_and_results_are_group_readable(tmp_path, tiny_data):
    umask = os.umask(0o002)  # a project group's: group-writable files (the debug executor runs in this process)
    try:
        sweep_dir, (run_dir, *_) = make_runs(tmp_path, tiny_data, 1)
        orphan = killed_writer(run_dir / "checkpoint.pt")
        mine = run_dir / f".metrics.csv~{procs.HOST}~{os.getpid()}~0.tmp"
        mine.write_bytes(b"")
        rundir.update_result(run_dir, status="failed")
        argv = ["sweep", str(tmp_path / "tiny.yaml"), "--results", str(tmp_path / "r"), "--executor", "debug"]
        assert main([*argv, "--retry-failed"]) == 0
    finally:
        os.umask(umask)
    assert not orphan.exists() and mine.exists()  # a live writer's file is left alone
    for path in (
        run_dir / rundir.RESULT,
        run_dir / rundir.METRICS,
        run_dir / "checkpoint.pt",
        sweep_dir / "sweep.json",
    ):
        assert path.stat().st_mode & 0o777 == 0o664, path  # 0666 less the umask


def test_a_killed_writers_temporary_files_are_cleaned_beside_sweep_json_in_report_and_in_the_weights_cache(
    tmp_path, finished, tiny_data
):
    import shutil

    sweep_dir = tmp_path / "tiny"
    shutil.copytree(finished[0], sweep_dir)
    # beside sweep.json: by the next command that takes the folder's lock (here `crackhpc sbatch`)
    half = killed_writer(sweep_dir / "sweep.json")
    rundir.update_result(next(sweep_dir.glob("torch-*")), status="failed")  # a script to write
    path = tiny_sweep_file(tmp_path, tiny_data, 5)
    assert main(["sbatch", str(path), "--results", str(tmp_path), "--retry-failed"]) == 0
    assert not half.exists() and json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    # the report's tables and figures: by the next report
    halves = [killed_writer(sweep_dir / "summary.csv"), killed_writer(sweep_dir / "report" / "learning-curves.png")]
    assert main(["report", str(sweep_dir), "--misclassified", "0"]) == 0
    assert not any(h.exists() for h in halves) and (sweep_dir / "summary.csv").is_file()
    # the weights cache: by the next prefetch into it (EfficientNet-Lite0's file comes with pip)
    cache = tmp_path / "cache"
    half = killed_writer(cache / "torch" / "resnet18-f37072fd.pth")
    assert main(["prefetch", "--models", "torch:efficientnet_lite0", "--cache", str(cache)]) == 0
    assert not half.exists()
