"""`crackhpc status` and `crackhpc cancel`: where each run of a sweep stands, from any shell.

A run's state merges two sources. The run folder's result.json says how the training of the
latest attempt went (the launcher resets it to pending on every submission); Slurm's accounting
(sacct, for the job ids in sweep.json) knows what happened to a job whose worker could not say:
still queued, killed at its time limit or for memory, cancelled.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from submitit.slurm.slurm import read_job_id

from . import rundir
from .errors import CrackhpcError
from .launcher import ACTIVE_SLURM_STATES, SUBMITIT_DIR, SWEEP_JSON, load_sweep_record

SACCT_FIELDS = ("JobID", "State", "Elapsed", "NodeList", "AllocTRES", "Reason")
# Outcomes only the worker (or `crackhpc cancel`) records; they describe the latest attempt.
RECORDED_OUTCOMES = ("completed", "failed", "cancelled")
LIVE_STATES = frozenset({"pending", "running", "requeued", *(s.lower() for s in ACTIVE_SLURM_STATES)})
ERROR_WIDTH = 60

Sacct = Callable[[list[str]], str]


@dataclass(frozen=True)
class SlurmJob:
    """One row of sacct -X: the allocation, not its steps."""

    state: str
    elapsed: str = ""
    node: str = ""
    tres: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str
    job_id: str = ""
    executor: str = ""
    slurm_state: str = ""
    elapsed: str = ""
    node: str = ""
    epoch: str = ""
    val_acc: float | None = None
    test_acc: float | None = None
    requeues: int = 0
    error: str = ""
    tres: str = ""

    @property
    def live(self) -> bool:
        """Not finished: queued, running or waiting to be submitted."""
        return self.state in LIVE_STATES


def sacct(job_ids: list[str]) -> str:
    """Slurm's rows for these jobs in sacct's -P format ('' where there is no sacct): sacct's, and
    squeue's for the jobs accounting does not list yet, since slurmctld tells slurmdbd about new
    jobs in its own time and a job submitted a moment ago must not look unsubmitted."""
    if not job_ids or not shutil.which("sacct"):
        return ""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    rows = _slurm_query(["sacct", "-X", "-P", "-n", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(arrays)])
    unlisted = [j for j in job_ids if j not in parse_sacct(rows)]
    if unlisted and shutil.which("squeue"):
        # squeue fails when it knows none of the ids: all of them have left the queue.
        rows += _slurm_query(["squeue", "-h", "-r", "-o", "%i|%T|%M|%N||%r", "-j", ",".join(unlisted)], may_fail=True)
    return rows


def _slurm_query(cmd: list[str], may_fail: bool = False) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode and not may_fail:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise CrackhpcError(f"`{' '.join(cmd)}` failed: {why} (is slurmdbd running?)")
    return out.stdout if not out.returncode else ""


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """Job id → its row. A pending array shows as one row, `123_[2-5%2]`: each task gets it."""
    jobs = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, fields))
        job = SlurmJob(state=(row["State"].split() or ["UNKNOWN"])[0], elapsed=row["Elapsed"],
                       node="" if row["NodeList"] == "None assigned" else row["NodeList"],
                       tres=row["AllocTRES"], reason="" if row["Reason"] == "None" else row["Reason"])
        for main, *tasks in read_job_id(row["JobID"]):
            if not tasks:
                jobs[main] = job
            for task in range(int(tasks[0]), int(tasks[-1]) + 1) if tasks else ():
                jobs[f"{main}_{task}"] = job
    return jobs


def merge(recorded: str, slurm: str) -> str:
    """One state from the run folder's status and Slurm's state of the run's latest job ('' if unknown)."""
    if recorded in RECORDED_OUTCOMES or not slurm:
        return recorded
    if slurm in ACTIVE_SLURM_STATES:
        # Between a requeue and the restart Slurm says PENDING; the run folder says why.
        return "requeued" if recorded == "requeued" and slurm != "RUNNING" else slurm.lower()
    if slurm == "COMPLETED":
        return "failed"  # the job ended but its worker never recorded an outcome
    return slurm.lower()  # cancelled, timeout, out_of_memory, node_fail, failed...: killed before recording


def _elapsed(result: dict) -> str:
    """The latest attempt's run time from result.json, for runs Slurm does not know."""
    if not result.get("started"):
        return ""
    start = _dt.datetime.fromisoformat(result["started"])
    end = _dt.datetime.fromisoformat(result["finished"]) if result.get("finished") else _dt.datetime.now(_dt.timezone.utc)
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _last_val_acc(run_dir: Path) -> float | None:
    try:
        with open(run_dir / rundir.METRICS, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        return None
    return float(rows[-1]["val_acc"]) if rows else None


def _epoch(run_dir: Path, result: dict) -> str:
    done = result.get("epochs_done")
    try:
        total = rundir.read_config(run_dir).train.epochs
    except FileNotFoundError:
        return "" if done is None else str(done)
    return f"{done or 0}/{total}"


def _shorten(text: str, width: int = ERROR_WIDTH) -> str:
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _note(state: str, result: dict, job: dict, slurm: SlurmJob | None) -> str:
    """The worker's error, why Slurm ended a job the worker could not report on, or why it waits."""
    if result.get("error") and state == "failed":
        return result["error"]
    if slurm and result.get("status") not in RECORDED_OUTCOMES and slurm.state not in (*ACTIVE_SLURM_STATES, "CANCELLED"):
        return f"job {job['job_id']} ended {slurm.state} before the worker recorded a result; see {job.get('stderr')}"
    if state == "pending" and slurm and slurm.reason:
        return f"waiting: {slurm.reason}"
    return ""


def run_statuses(sweep_dir: Path, run_ids: Iterable[str], record: dict | None = None,
                 sacct_fn: Sacct | None = None) -> list[RunStatus]:
    """The state of each named run; `sacct_fn` (default: sacct) is asked about all their Slurm jobs at once."""
    record = load_sweep_record(sweep_dir) if record is None else record
    jobs = record.get("runs", {})
    slurm_ids = [j["job_id"] for j in jobs.values() if j.get("executor") == "slurm" and j.get("job_id")]
    accounting = parse_sacct((sacct_fn or sacct)(slurm_ids)) if slurm_ids else {}
    statuses = []
    for run_id in run_ids:
        run_dir, job = sweep_dir / run_id, jobs.get(run_id, {})
        result = rundir.read_result(run_dir)
        slurm = accounting.get(job.get("job_id", "")) if job.get("executor") == "slurm" else None
        state = merge(result.get("status", "pending"), slurm.state if slurm else "")
        statuses.append(RunStatus(
            run_id=run_id, state=state, job_id=job.get("job_id", ""), executor=job.get("executor", ""),
            slurm_state=slurm.state if slurm else "", elapsed=(slurm.elapsed if slurm else "") or _elapsed(result),
            node=(slurm.node if slurm else "") or (result.get("host", "") if result.get("started") else ""),
            epoch=_epoch(run_dir, result), val_acc=_last_val_acc(run_dir), test_acc=result.get("test_acc"),
            requeues=result.get("requeues", 0), error=_note(state, result, job, slurm), tres=slurm.tres if slurm else ""))
    return statuses


def collect(sweep_dir: str | Path, sacct_fn: Sacct | None = None) -> list[RunStatus]:
    """Every run of a sweep folder: those in sweep.json and those with a run folder."""
    from .report import run_dirs

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CrackhpcError(f"{sweep_dir}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)")
    run_ids = [p.name for p in run_dirs(sweep_dir)]
    if not run_ids:
        raise CrackhpcError(f"{sweep_dir}: no runs in it (no {SWEEP_JSON}, no run folders)")
    return run_statuses(sweep_dir, run_ids, sacct_fn=sacct_fn)


def format_status(statuses: list[RunStatus]) -> str:
    """The table `crackhpc status` prints, and a count per state under it."""
    import pandas as pd

    from .report import format_table

    table = pd.DataFrame([{
        "run_id": s.run_id, "state": s.state, "job": s.job_id or "-", "elapsed": s.elapsed or "-",
        "node": s.node or "-", "epoch": s.epoch or "-", "val_acc": s.val_acc, "test_acc": s.test_acc,
        "requeues": s.requeues, "note": _shorten(s.error) or "-"} for s in statuses])
    table = table.astype({"val_acc": float, "test_acc": float})  # None → NaN, printed as "-"
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    return format_table(table) + f"\n\n{len(statuses)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items())


def scancel(job_ids: list[str], echo=print, poll_s: float = 1.0, timeout_s: float = 180.0) -> None:
    """Cancel the jobs and wait until their processes are gone. Slurm sends SIGTERM, which submitit's
    jobs ignore, and SIGKILL KillWait seconds later: until then a worker may still write result.json."""
    if not shutil.which("scancel"):
        raise CrackhpcError("scancel not found: cancel Slurm runs on the cluster that runs them (its login node)")
    out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True)
    for line in out.stderr.strip().splitlines():
        echo(f"  {line}")  # e.g. a job that ended meanwhile; the others are cancelled all the same
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
        if queue.returncode or not queue.stdout.strip():  # squeue fails once no id is known any more
            return
        time.sleep(poll_s)
    echo(f"  jobs still stopping after {timeout_s:.0f}s: {' '.join(queue.stdout.split())}")


def _cmdline(pid: str) -> list[bytes]:
    """A process's arguments; none for a process that is gone, or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.split(b"\0") if raw else []


def kill_local(job_id: str, submitit_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop a local executor's job as LocalJob.cancel does: SIGINT to submitit's controller, which
    then stops its tasks. A LocalJob cannot be rebuilt in another process (it holds the Popen), so
    the pid is trusted only while its command line is this sweep's controller."""
    args = _cmdline(job_id)
    if b"submitit.local._local" not in args or str(submitit_dir).encode() not in args:
        return False
    os.kill(int(job_id), signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while _cmdline(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return True


def cancel(sweep_dir: str | Path, run_ids: Iterable[str] = (), sacct_fn: Sacct | None = None, scancel_fn=None,
           kill_fn=None, echo=print) -> list[str]:
    """Cancel the named runs (every unfinished run if none) and record `cancelled` in their result.json.
    The Slurm and process calls (default: sacct, scancel, kill_local) can be replaced, as in the tests."""
    sweep_dir = Path(sweep_dir)
    statuses = {s.run_id: s for s in collect(sweep_dir, sacct_fn)}
    run_ids = list(run_ids)
    for run_id in run_ids:
        if run_id not in statuses:
            raise CrackhpcError(f"{sweep_dir}: no run {run_id!r} (`crackhpc status {sweep_dir}` lists them)")
    targets = []
    for run in [statuses[r] for r in run_ids] if run_ids else statuses.values():
        if run.live:
            targets.append(run)
        elif run_ids:
            echo(f"  {run.run_id}: already {run.state}, left as it is")
    slurm_jobs = [r.job_id for r in targets if r.executor == "slurm" and r.job_id]
    if slurm_jobs:
        (scancel_fn or scancel)(slurm_jobs, echo=echo)
    cancelled = []
    for run in targets:
        if run.executor == "debug":
            echo(f"  {run.run_id}: runs inside its `crackhpc sweep` process (executor debug): stop that process")
            continue
        if run.executor == "local" and run.job_id and not (kill_fn or kill_local)(run.job_id, sweep_dir.resolve() / SUBMITIT_DIR):
            echo(f"  {run.run_id}: local job {run.job_id} is not running any more")
        # A job can end between the look above and the scancel: keep the outcome it recorded.
        now = rundir.read_result(sweep_dir / run.run_id).get("status")
        if now in ("completed", "failed"):
            echo(f"  {run.run_id}: {now} before it could be cancelled")
            continue
        rundir.update_result(sweep_dir / run.run_id, status="cancelled", cancelled=rundir.now())
        echo(f"  {run.run_id}: cancelled" + (f" (job {run.job_id})" if run.job_id else ""))
        cancelled.append(run.run_id)
    return cancelled
