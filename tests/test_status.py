"""`crackhpc status` and `cancel` on hand-made sweep folders, with sacct and scancel faked."""

import datetime as _dt
import json
import subprocess
import sys

import pytest

from crackhpc import atomic, procs, rundir
from crackhpc.cli import format_status, main
from crackhpc.config import DataConfig, Resources, RunSpec, TrainConfig
from crackhpc.engine import cancel
from crackhpc.errors import CrackhpcError
from crackhpc.record import Job, SweepFolder
from crackhpc.slurm import SlurmJob, parse_sacct
from crackhpc.states import RunState
from crackhpc.status import collect, merge, run_statuses

from .running import in_foreground

ERROR = "DataError: /data: no readable images in the train or test split (40 of 40 failed to decode; run `crackhpc data verify`)"


def make_sweep(sweep_dir, executor, runs: dict[str, dict], metrics: dict[str, list] | None = None):
    """A sweep folder: sweep.json naming each run's job (`job`), each run's config.yaml (2 epochs),
    result.json (the rest) and metrics.csv."""
    record = {"runs": {}}
    for i, (run_id, result) in enumerate(runs.items()):
        job_id = result.pop("job", f"4{i}")
        if job_id:
            record["runs"][run_id] = {"job_id": job_id, "executor": executor, "stderr": f"/logs/{job_id}.err"}
        rundir.write_config(
            sweep_dir / run_id,
            RunSpec(
                run_id=run_id,
                sweep="s",
                train=TrainConfig(epochs=2),
                data=DataConfig(root="/data"),
                resources=Resources(),
            ),
        )
        if result:
            atomic.write_json(sweep_dir / run_id / rundir.RESULT, result)
    for run_id, rows in (metrics or {}).items():
        atomic.write_csv(sweep_dir / run_id / rundir.METRICS, rundir.METRIC_COLUMNS, rows)
    atomic.write_json(sweep_dir / "sweep.json", record)
    return sweep_dir


def no_sacct(job_ids):
    raise AssertionError(f"sacct asked about {job_ids} for a sweep without Slurm jobs")


def test_status_of_a_local_sweep_comes_from_the_run_folders(tmp_path):
    sweep_dir = make_sweep(
        tmp_path / "s",
        "local",
        {
            "done": {
                "status": "completed",
                "epochs_done": 2,
                "test_acc": 0.9,
                "started": "2026-01-01T10:00:00+00:00",
                "finished": "2026-01-01T11:02:03+00:00",
                "host": "n1",
            },
            "broken": {"status": "failed", "error": ERROR},
            "training": {"status": "running", "epochs_done": 1, "started": "2026-01-01T10:00:00+00:00", "host": "n2"},
            "queued": {"job": ""},
        },
        metrics={
            "done": [[1, 0.6, 0.6, 0.6, 0.55, 1.0, 10], [2, 0.5, 0.7, 0.5, 0.75, 1.0, 10]],
            "training": [[1, 0.6, 0.6, 0.6, 0.5, 1.0, 10]],
        },
    )
    runs = {s.run_id: s for s in collect(sweep_dir, query=no_sacct)[0]}
    assert {r: s.state for r, s in runs.items()} == {
        "broken": "failed",
        "done": "completed",
        "queued": "pending",
        "training": "running",
    }
    assert (runs["done"].elapsed, runs["done"].node, runs["done"].val_acc, runs["done"].test_acc) == (
        "01:02:03",
        "n1",
        0.75,
        0.9,
    )
    assert runs["training"].val_acc == 0.5 and runs["training"].node == "n2" and runs["queued"].node == ""
    assert (runs["done"].epoch, runs["training"].epoch, runs["queued"].epoch) == ("2/2", "1/2", "0/2")
    assert runs["broken"].note == ERROR
    table = format_status(list(runs.values()))
    assert ERROR[:59] + "…" in table
    assert ERROR not in table and table.endswith(
        "4 runs: 1 failed, 1 completed, 1 pending, 1 running; epochs 3/8 [########------------] 38%"
    )


def test_epoch_shows_progress_against_the_configured_epochs(tmp_path, tiny_data, write_yaml):
    from crackhpc.config import load_sweep
    from crackhpc.grid import expand
    from crackhpc.launcher import prepare_runs, sweep_folder
    from crackhpc.record import SweepRecord

    from .conftest import tiny_sweep

    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, defaults={"epochs": 5})))
    folder = sweep_folder(sweep, tmp_path)
    (spec,) = prepare_runs(sweep, tmp_path, folder, expand(sweep), SweepRecord())
    rundir.update_result(folder.run(spec.run_id), status="running", epochs_done=3)
    (run,), _ = collect(folder.path, query=no_sacct)
    assert run.state == "running" and run.epoch == "3/5"


SACCT = """\
JobID|State|Elapsed|NodeList|AllocTRES|Reason
70_0|COMPLETED|00:01:00|n1|billing=1,cpu=1,mem=1G,node=1|None
70_1|CANCELLED by 0|00:00:30|n1|cpu=1|None
70_2|TIMEOUT|00:10:00|n2|cpu=1|None
70_5|FAILED|00:00:09|n2|cpu=1|None
70_6|COMPLETED|00:00:09|n2|cpu=1|None
70_7|FAILED|00:00:09|n2|cpu=1|None
70_[3-4%2]|PENDING|00:00:00|None assigned||Resources
71|RUNNING|00:00:05|n3|cpu=2,gres/gpu=1|None
"""


def test_sacct_rows_expand_pending_array_ranges():
    jobs = parse_sacct(SACCT)
    assert jobs["70_3"] == jobs["70_4"] and jobs["70_4"].state == "PENDING" and jobs["70_4"].reason == "Resources"
    assert jobs["70_1"].state == "CANCELLED" and jobs["71"].tres == "cpu=2,gres/gpu=1" and jobs["70_3"].node == ""
    assert "70_8" not in jobs


@pytest.mark.parametrize(
    "recorded, slurm, merged",
    [
        ("completed", "RUNNING", "completed"),  # the worker finished: Slurm is still tearing down
        ("completed", "", "completed"),
        ("running", "CANCELLED", "cancelled"),  # scancel by hand: the worker never got to say so
        ("cancelled", "RUNNING", "cancelled"),  # `crackhpc cancel` recorded it while Slurm stops the job
        ("failed", "FAILED", "failed"),
        ("running", "TIMEOUT", "timeout"),
        ("running", "OUT_OF_MEMORY", "out_of_memory"),
        ("running", "COMPLETED", "failed"),  # the job ended, the run did not
        ("pending", "PENDING", "pending"),
        ("requeued", "PENDING", "requeued"),
        ("requeued", "RUNNING", "running"),
        ("running", "", "running"),  # no sacct: the run folder is all there is
        ("running", "NODE_FAIL", "node_fail"),
        ("failed", "NODE_FAIL", "node_fail"),  # a rank lost its peer on the node that died: the cause wins
        ("failed", "PENDING", "requeued"),  # ... and Slurm requeued the job
        ("failed", "RUNNING", "failed"),  # the worker failed, Slurm is ending the job
    ],
)
def test_merge_rules(recorded, slurm, merged):
    assert merge(RunState(recorded), SlurmJob(slurm) if slurm else None) is RunState(merged)


def test_status_merges_sacct_with_the_run_folders(tmp_path):
    asked = []

    def sacct(job_ids):
        asked.append(sorted(job_ids))
        return parse_sacct(SACCT)

    sweep_dir = make_sweep(
        tmp_path / "s",
        "slurm",
        {
            "done": {"job": "70_0", "status": "completed", "test_acc": 0.8},
            "scancelled": {"job": "70_1", "status": "running", "epochs_done": 1},
            "slow": {"job": "70_2", "status": "running"},
            "queued": {"job": "70_3"},
            "preempted": {"job": "70_4", "status": "requeued", "requeues": 1},
            "raised": {"job": "70_5", "status": "failed", "error": ERROR},
            "vanished": {"job": "70_6", "status": "running"},
            "setup_failed": {"job": "70_7", "status": "pending"},
            "gpu": {"job": "71", "status": "running"},
        },
    )
    folder = SweepFolder(sweep_dir)
    runs = {
        s.run_id: s
        for s in run_statuses(
            folder,
            ["done", "scancelled", "slow", "queued", "preempted", "raised", "vanished", "setup_failed", "gpu"],
            folder.load(),
            sacct,
        )
    }
    assert asked == [["70_0", "70_1", "70_2", "70_3", "70_4", "70_5", "70_6", "70_7", "71"]]  # one sacct call
    assert {r: s.state for r, s in runs.items()} == {
        "done": "completed",
        "scancelled": "cancelled",
        "slow": "timeout",
        "queued": "pending",
        "preempted": "requeued",
        "raised": "failed",
        "vanished": "failed",
        "setup_failed": "failed",
        "gpu": "running",
    }
    assert runs["slow"].note == "job 70_2 ended TIMEOUT before the worker recorded a result; see /logs/70_2.err"
    assert runs["setup_failed"].note.startswith("job 70_7 ended FAILED before the worker recorded a result")
    assert runs["raised"].note == ERROR and runs["queued"].note == "waiting: Resources"
    assert runs["scancelled"].note == "" and runs["done"].note == ""
    assert (runs["gpu"].node, runs["gpu"].elapsed, runs["gpu"].tres) == ("n3", "00:00:05", "cpu=2,gres/gpu=1")
    assert [r for r, s in runs.items() if s.live] == ["queued", "preempted", "gpu"]


def test_cancel_scancels_live_jobs_and_records_cancelled(tmp_path, monkeypatch):
    import crackhpc.slurm as slurm

    sweep_dir = make_sweep(
        tmp_path / "s",
        "slurm",
        {
            "done": {"job": "70_0", "status": "completed"},
            "queued": {"job": "70_3"},
            "gpu": {"job": "71", "status": "running"},
            "never_submitted": {"job": ""},
        },
    )
    scancelled, lines = [], []
    monkeypatch.setattr(slurm, "scancel", lambda ids, echo: scancelled.extend(ids))
    cancelled = cancel(sweep_dir, query=lambda ids: parse_sacct(SACCT), echo=lines.append)
    # the whole sweep: array 70 goes as one id (its task 70_0 has ended; only 70_3 is live)
    assert sorted(scancelled) == ["70", "71"] and cancelled == ["gpu", "never_submitted", "queued"]
    assert {r: rundir.read_result(sweep_dir / r)["status"] for r in ("done", "queued", "gpu", "never_submitted")} == {
        "done": "completed",
        "queued": "cancelled",
        "gpu": "cancelled",
        "never_submitted": "cancelled",
    }
    assert "  gpu: cancelled (job 71)" in lines


def test_cancel_named_runs_only_and_keeps_finished_ones(tmp_path, capsys, monkeypatch):
    import crackhpc.slurm as slurm

    sweep_dir = make_sweep(
        tmp_path / "s",
        "slurm",
        {
            "done": {"job": "70_0", "status": "completed"},
            "queued": {"job": "70_3"},
            "gpu": {"job": "71", "status": "running"},
        },
    )
    scancelled = []
    monkeypatch.setattr(slurm, "sacct", lambda ids, since=None: parse_sacct(SACCT))
    monkeypatch.setattr(slurm, "scancel", lambda ids, echo: scancelled.extend(ids))
    assert main(["cancel", str(sweep_dir), "done", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "done: already completed, left as it is" in out and "1 run(s) cancelled" in out
    assert scancelled == ["71"] and rundir.read_result(sweep_dir / "queued")["status"] == "pending"
    assert main(["cancel", str(sweep_dir), "nope"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {sweep_dir}: no run 'nope' (`crackhpc status {sweep_dir}` lists them)"
    )


def test_a_job_that_finishes_while_being_cancelled_keeps_its_outcome(tmp_path, monkeypatch):
    import crackhpc.slurm as slurm

    sweep_dir = make_sweep(tmp_path / "s", "slurm", {"gpu": {"job": "71", "status": "running"}})

    def finishes_first(ids, echo):
        rundir.update_result(sweep_dir / "gpu", status="completed")

    monkeypatch.setattr(slurm, "scancel", finishes_first)
    assert cancel(sweep_dir, query=lambda ids: parse_sacct(SACCT), echo=lambda *_: None) == []
    assert rundir.read_result(sweep_dir / "gpu")["status"] == "completed"


def fake_controller():
    """A process standing in for submitit's local controller: it exits 0 on SIGINT. Returned once it
    runs, with Python's SIGINT handler in place."""
    code = "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, preexec_fn=in_foreground)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_cancel_of_a_local_run_stops_its_controller(tmp_path):
    sweep_dir = make_sweep(tmp_path / "s", "local", {"r": {"job": "", "status": "running"}})
    proc = fake_controller()
    record = json.loads((sweep_dir / "sweep.json").read_text())
    record["runs"]["r"] = {"job_id": str(proc.pid), "executor": "local", "process": procs.identity(proc.pid)}
    atomic.write_json(sweep_dir / "sweep.json", record)
    try:
        assert cancel(sweep_dir, query=no_sacct, echo=lambda *_: None) == ["r"]
        assert proc.wait(timeout=5) == 0 and rundir.read_result(sweep_dir / "r")["status"] == "cancelled"
    finally:
        proc.kill()


def test_status_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'nope'}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrackhpcError, match="no runs in it"):
        collect(tmp_path / "empty", query=no_sacct)


def test_a_prediction_folder_names_crackhpc_predict_in_its_hints(tmp_path):
    sweep_dir = make_sweep(tmp_path / "p", "local", {"shard-0": {"job": "", "status": "running"}})
    proc = fake_controller()
    worker = procs.identity(proc.pid)
    proc.kill()
    proc.wait(timeout=5)
    atomic.write_json(sweep_dir / "shard-0" / rundir.RESULT, {"status": "running", "process": worker})
    folder = SweepFolder(sweep_dir)
    record = folder.load()
    record.kind, record.owner = "prediction", procs.identity()
    folder.save(record)
    (run,) = collect(sweep_dir, query=no_sacct)[0]
    assert run.state == "failed" and run.note.endswith(
        "; rerun `crackhpc predict …` with the same arguments resumes it from its last checkpoint"
    )
    with (
        folder.lock(),
        pytest.raises(CrackhpcError, match=f"another `crackhpc predict` \\(pid {procs.identity()['pid']} on "),
    ):
        with SweepFolder(sweep_dir).lock():
            pass


def dead_process() -> dict:
    proc = fake_controller()
    ident = procs.identity(proc.pid)
    proc.kill()
    proc.wait(timeout=5)
    return ident


def test_a_job_of_an_earlier_attempt_is_not_taken_for_the_new_one(tmp_path):
    """A `--retry-failed` sweep killed after resetting a run to pending, before submitting its new
    job: the old job in sweep.json ended long ago, but the run was not submitted, not failed."""
    sweep_dir = make_sweep(
        tmp_path / "s",
        "local",
        {"waiting": {"job": "", "status": "pending"}, "fresh": {"job": "", "status": "pending"}},
    )
    old = dead_process()
    folder = SweepFolder(sweep_dir)
    record = folder.load()
    record.owner = dead_process()
    for run_id, submitted, updated in (
        ("waiting", "2026-01-01T10:00:00+00:00", "2026-01-02T09:00:00+00:00"),
        ("fresh", "2026-01-02T09:00:00+00:00", "2026-01-02T09:00:00+00:00"),
    ):
        record.runs[run_id] = Job(job_id="7", executor="local", submitted=submitted, process=old, stderr="/logs/7.err")
        atomic.write_json(sweep_dir / run_id / rundir.RESULT, {"status": "pending", "updated": updated})
    folder.save(record)
    runs = {s.run_id: s for s in collect(sweep_dir, query=no_sacct)[0]}
    assert (runs["waiting"].state, runs["waiting"].live, runs["waiting"].note) == ("pending", False, "not submitted")
    assert runs["fresh"].state == "failed" and runs["fresh"].note.startswith(
        "local job 7 ended before its worker started"
    )


def test_an_orphan_names_the_sweep_that_started_it_not_a_later_one(tmp_path):
    sweep_dir = make_sweep(tmp_path / "s", "local", {"r": {"job": ""}})
    worker = fake_controller()
    try:
        folder = SweepFolder(sweep_dir)
        record = folder.load()
        starter = dead_process()
        record.owner = starter
        record.add_job("r", "8", "local", process=procs.identity(worker.pid))
        record.owner = procs.identity()  # a later sweep of the folder, alive: it did not start r
        folder.save(record)
        atomic.write_json(sweep_dir / "r" / rundir.RESULT, {"status": "running", "process": procs.identity(worker.pid)})
        (run,) = collect(sweep_dir, query=no_sacct)[0]
        assert (
            run.live and run.orphan and run.note.startswith(f"orphaned: its `crackhpc sweep` (pid {starter['pid']} on ")
        )
    finally:
        worker.kill()


def test_an_ended_job_under_a_reused_id_is_not_taken_for_the_runs_job(tmp_path, monkeypatch):
    """A controller that lost its state numbers jobs from 1 again, while accounting still holds
    last year's job 7, CANCELLED: `sacct -j 7` gives that one until today's job 7 reaches
    accounting. Asked from the run's submission on (less the clock skew allowed), sacct leaves it
    out, and squeue says the job runs."""
    from crackhpc.slurm import SACCT_CLOCK_SKEW_S, SACCT_FIELDS, USAGE_FIELDS

    from .test_slurm import fake_command

    header = "|".join(SACCT_FIELDS + USAGE_FIELDS)
    old = "7|CANCELLED by 0|00:01:00|n1|cpu=1|None|60|00:01:00|1M|1G|1|10"
    args = tmp_path / "sacct.args"
    fake_command(
        tmp_path,
        monkeypatch,
        "sacct",
        f'echo "$@" > {args}; echo "{header}"; case " $* " in *" -S "*) ;; *) echo "{old}";; esac',
    )
    fake_command(tmp_path, monkeypatch, "squeue", 'echo "7|RUNNING|0:05|n2||None"')
    sweep_dir = make_sweep(tmp_path / "s", "slurm", {"today": {"job": "7", "status": "pending"}})
    record = json.loads((sweep_dir / "sweep.json").read_text())
    submitted = "2026-12-03T08:00:00+00:00"
    record["runs"]["today"]["submitted"] = submitted
    atomic.write_json(sweep_dir / "sweep.json", record)

    (run,), problems = collect(sweep_dir)
    assert not problems and (run.state, run.slurm_state) == ("running", "RUNNING")
    start = args.read_text().split(" -S ")[1].split()[0]
    asked = _dt.datetime.fromisoformat(start).astimezone(_dt.timezone.utc)
    assert asked == _dt.datetime.fromisoformat(submitted) - _dt.timedelta(seconds=SACCT_CLOCK_SKEW_S)

    del record["runs"]["today"]["submitted"]  # a record from before submissions were timed: as before
    atomic.write_json(sweep_dir / "sweep.json", record)
    (run,), _ = collect(sweep_dir)
    assert (run.state, run.slurm_state) == ("cancelled", "CANCELLED")
