"""Where each run of a sweep stands, from any shell: `crackhpc status`, and the launcher's plan.

A run's state merges three sources. The run folder's result.json says how the latest attempt's
training went (the launcher resets it to pending on every submission). Slurm's accounting (sacct,
one call for the whole sweep) knows what happened to a job whose worker could not say: still
queued, killed at its time limit or for memory, cancelled by hand. For local jobs the processes
themselves are the evidence: a worker recorded as running whose process has gone died without a
word (SIGKILL, SIGBUS on a full disk, the out-of-memory killer).
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import procs, rundir, slurm
from .errors import CrackhpcError, DamagedFileError
from .record import Job, SweepFolder, SweepRecord, submitted_since
from .states import LIVE, RECORDED, RunState
from .usage import Usage

SlurmQuery = Callable[[list[str]], dict[str, slurm.SlurmJob]]
FIX_RESUME = "{again} resumes it from its last checkpoint"


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: RunState
    live: bool  # its job may still run: it must not be submitted again
    job_id: str = ""
    executor: str = ""
    slurm_state: str = ""
    elapsed: str = ""
    node: str = ""
    epochs_done: int | None = None
    epochs: int | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    requeues: int = 0
    note: str = ""
    tres: str = ""
    damaged: tuple[str, ...] = ()  # one line per file of the run that cannot be read, with the fix
    usage: Usage | None = None  # what its Slurm job used against what it asked for
    orphan: bool = False  # a local job still running whose `crackhpc sweep` has gone

    @property
    def epoch(self) -> str:
        if self.epochs is None:
            return "" if self.epochs_done is None else str(self.epochs_done)
        return f"{self.epochs_done or 0}/{self.epochs}"


def merge(recorded: RunState, job: slurm.SlurmJob | None) -> RunState:
    """One state from the run folder's and Slurm's state of the run's latest job (None if unknown)."""
    if job is not None and recorded is RunState.FAILED:
        # A node died under a multi-node job: the ranks that survived record the lost contact, then
        # Slurm the node failure that caused it, and, for a requeueable job, puts it back in the queue.
        if job.state == "NODE_FAIL":
            return RunState.NODE_FAIL
        if job.state == "PENDING":
            return RunState.REQUEUED
    if recorded in RECORDED or job is None:
        return recorded
    if job.active:
        # Between a requeue and the restart Slurm says PENDING; the run folder says why.
        return RunState.REQUEUED if recorded is RunState.REQUEUED and job.state != "RUNNING" else job.run_state()
    if job.state == "COMPLETED":
        return RunState.FAILED  # the job ended but its worker never recorded an outcome
    return job.run_state()  # cancelled, timeout, out_of_memory, node_fail…: killed before recording


def _elapsed(result: dict) -> str:
    """The latest attempt's run time from result.json, for runs Slurm does not know."""
    try:
        start = _dt.datetime.fromisoformat(result["started"])
        end = (
            _dt.datetime.fromisoformat(result["finished"])
            if result.get("finished")
            else _dt.datetime.now(_dt.timezone.utc)
        )
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def last_val_acc(run_dir: Path) -> float | None:
    """The latest epoch's validation accuracy; a DamagedFileError if metrics.csv cannot be read."""
    rows = rundir.read_epochs(run_dir)
    return rows[-1].val_acc if rows else None


def orphaned(command: str, owner: dict) -> str:
    """The note of a local job left running by a `crackhpc sweep` killed without a chance to stop
    it (kill -9): nothing waits for it any more, but its worker still records its own outcome."""
    return (
        f"orphaned: its `{command}` (pid {owner['pid']} on {owner['host']}) has gone; "
        f"the worker runs on and records its outcome; `crackhpc cancel` stops it"
    )


def _stale(job: Job | None, result: dict) -> bool:
    """Whether the run's recorded job is an earlier attempt's: a later submission reset result.json
    to pending and was stopped before it submitted the run's new job."""
    try:
        return bool(
            job
            and job.submitted
            and result.get("updated")
            and _dt.datetime.fromisoformat(result["updated"]) > _dt.datetime.fromisoformat(job.submitted)
        )
    except (TypeError, ValueError):
        return False


def _local_state(
    recorded: RunState, result: dict, job: Job | None, owner_alive: bool, again: str
) -> tuple[RunState, bool, str]:
    """(state, live, note) of a run of the local or debug executor, from its processes."""
    worker = result.get("process") or {}
    if recorded in (RunState.RUNNING, RunState.REQUEUED):
        if procs.alive(worker) is False:
            return (
                RunState.FAILED,
                False,
                f"worker process {worker['pid']} on {worker['host']} died without recording "
                f"an outcome (killed, out of memory or disk?); "
                f"{FIX_RESUME.format(again=again)}",
            )
        return recorded, True, ""
    if recorded is not RunState.PENDING:
        return recorded, recorded in LIVE, ""
    controller = job.process if job and not _stale(job, result) else None
    if job and controller is not None and procs.alive(controller) is False and job.executor == "local":
        return RunState.FAILED, False, f"local job {job.job_id} ended before its worker started; see {job.stderr}"
    if controller is None and not owner_alive:
        return RunState.PENDING, False, "not submitted"
    return RunState.PENDING, True, ""


def _node_failure(sjob: slurm.SlurmJob, job_id: str, again: str) -> str:
    """Which of the job's nodes failed, as far as Slurm still holds them down (a node that has come
    back is no longer told apart from the others), and what resumes the run."""
    down = slurm.unavailable_nodes(sjob.node)
    where = ", ".join(f"{n} ({why})" for n, why in down.items()) if down else f"one of {sjob.node}"
    return f"node failure: {where} failed under job {job_id}, which Slurm did not requeue; {FIX_RESUME.format(again=again)}"


def run_status(
    folder: SweepFolder, run_id: str, record: SweepRecord, accounting: dict[str, slurm.SlurmJob], slurm_note: str = ""
) -> RunStatus:
    run_dir, job = folder.run(run_id), record.runs.get(run_id)
    executor = job.executor if job else ""
    job_id = job.job_id if job else ""
    on_slurm = executor == "slurm" and bool(job_id)
    sjob = accounting.get(job_id) if on_slurm else None
    notes, result, damaged, orphan = [], {}, [], False
    try:
        result = rundir.read_result(run_dir)
        recorded = rundir.state_of(result)
    except DamagedFileError as exc:
        recorded, damaged = RunState.UNREADABLE, [str(exc)]
    if on_slurm:
        state = merge(recorded, sjob) if recorded is not RunState.UNREADABLE or (sjob and sjob.active) else recorded
        live = bool(sjob and sjob.active and state in LIVE) or (sjob is None and state in LIVE)
        if slurm_note and sjob is None:
            notes.append(slurm_note)
    else:
        state, live, note = (
            (recorded, False, "")
            if recorded is RunState.UNREADABLE
            else _local_state(recorded, result, job, procs.alive(record.owner) is True, record.resubmit)
        )
        submitter = (job.owner or record.owner if job else None) or {}  # records before per-job owners had one
        orphan = live and executor == "local" and procs.alive(submitter) is False
        notes.append(orphaned(record.command, submitter) if orphan else note)
    if state in (RunState.FAILED, RunState.PRUNED) and result.get("error") and recorded is state:
        notes.insert(0, result["error"])  # why it failed, or the search's reason to stop it
    if sjob and sjob.state == "NODE_FAIL" and state is RunState.NODE_FAIL:
        notes.append(_node_failure(sjob, job_id, record.resubmit))
    elif sjob and recorded not in RECORDED and not sjob.active and sjob.state != "CANCELLED":
        notes.append(f"job {job_id} ended {sjob.state} before the worker recorded a result; see {job and job.stderr}")
    if state is RunState.PENDING and sjob and sjob.reason:
        notes.append(f"waiting: {sjob.reason}")
    # The epochs planned are in result.json since submission; runs from before that keep them only in config.yaml.
    epochs, val_acc = result.get("epochs"), None
    try:
        epochs = epochs or rundir.read_config(run_dir).train.epochs
    except FileNotFoundError:
        pass
    except CrackhpcError as exc:
        damaged.append(str(exc))
    try:
        val_acc = last_val_acc(run_dir)
    except DamagedFileError as exc:
        damaged.append(str(exc))
    worker = result.get("process") or {}
    return RunStatus(
        run_id=run_id,
        state=state,
        live=live,
        job_id=job.job_id if job else "",
        executor=executor,
        slurm_state=sjob.state if sjob else "",
        elapsed=(sjob.elapsed if sjob else "") or _elapsed(result),
        node=(sjob.node if sjob else "")
        or ((worker.get("host") or result.get("host", "")) if result.get("started") else ""),
        epochs_done=result.get("epochs_done"),
        epochs=epochs,
        val_acc=val_acc,
        test_acc=result.get("test_acc"),
        requeues=result.get("requeues", 0) or 0,
        note="; ".join(n for n in notes + damaged if n),
        tres=sjob.tres if sjob else "",
        damaged=tuple(damaged),
        usage=sjob.usage if sjob else None,
        orphan=orphan,
    )


def run_statuses(
    folder: SweepFolder, run_ids: Iterable[str], record: SweepRecord, query: SlurmQuery | None = None
) -> list[RunStatus]:
    """The state of each named run; Slurm (`query`, default sacct) is asked about all their jobs at once."""
    jobs = [j for j in record.runs.values() if j.executor == "slurm" and j.job_id]
    slurm_ids = [j.job_id for j in jobs if j.job_id]
    accounting, note = {}, ""
    if slurm_ids:
        try:
            accounting = (query or functools.partial(slurm.sacct, since=submitted_since(jobs)))(slurm_ids)
        except slurm.SlurmUnavailable as exc:
            note = f"Slurm's state unknown: {exc}"
    return [run_status(folder, run_id, record, accounting, note) for run_id in run_ids]


def collect(sweep_dir: str | Path, query: SlurmQuery | None = None) -> tuple[list[RunStatus], list[str]]:
    """Every run of a sweep folder (those in sweep.json and those with a run folder), and the
    problems met on the way (a damaged sweep.json), each one line."""
    folder = SweepFolder(sweep_dir).check()
    problems = []
    try:
        record = folder.load()
    except DamagedFileError as exc:
        record, problems = SweepRecord(), [str(exc)]
    run_ids = folder.run_ids(record)
    if not run_ids and record.controller_job is None:  # a search's controller job submits them later
        raise CrackhpcError(f"{folder.path}: no runs in it (no {folder.record_path.name}, no run folders)")
    return run_statuses(folder, run_ids, record, query), problems


@dataclass(frozen=True)
class ReportJob:
    """One of the sweep's own jobs as Slurm's accounting sees it: the `--then-report` job
    (crackhpc.then_report) or a search's `--controller slurm` job (crackhpc.search)."""

    job_id: str
    state: str  # Slurm's, or "unknown" where it cannot be asked
    reason: str
    active: bool
    stdout: str
    what: str = "report job"

    def line(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        does = SIDE_JOBS[self.what]
        return f"{self.what} {self.job_id} ({does}): {self.state}{why}; log {self.stdout}"


# The record's key of each of a sweep's own jobs: what `status` calls it, and what it does.
SIDE_JOBS = {
    "report job": "`crackhpc report` once the runs' jobs end",
    "controller job": "the search's controller: it submits the trials and stops poor ones",
}


def report_job(sweep_dir: str | Path, query: SlurmQuery | None = None, what: str = "report job") -> ReportJob | None:
    """The sweep's report job (`what`: or its controller job), if it has one (a damaged sweep.json:
    none, `status` says so already)."""
    try:
        record = SweepFolder(sweep_dir).load()
    except DamagedFileError:
        return None
    job = record.report_job if what == "report job" else record.controller_job
    if job is None:
        return None
    try:
        sjob = (query or functools.partial(slurm.sacct, since=job.submitted))([job.job_id]).get(job.job_id)
    except slurm.SlurmUnavailable:
        sjob = None
    return ReportJob(
        job.job_id,
        sjob.state if sjob else "unknown",
        sjob.reason if sjob else "",
        bool(sjob and sjob.active),
        job.stdout or "",
        what,
    )
