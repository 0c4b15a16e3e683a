"""`crackhpc cancel`: stop runs' jobs and record them cancelled."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from . import procs, rundir, slurm
from .errors import CrackhpcError, DamagedFileError
from .record import SweepFolder
from .states import RunState
from .status import SlurmQuery, collect, report_job


def cancel(
    sweep_dir: str | Path,
    run_ids: Iterable[str] = (),
    query: SlurmQuery | None = None,
    scancel: Callable | None = None,
    echo=print,
) -> list[str]:
    """Cancel the named runs (every live run if none, and the sweep's `--then-report` job) and
    record `cancelled` in their result.json. The Slurm calls (default: sacct, scancel) can be
    replaced, as in the tests."""
    folder = SweepFolder(sweep_dir)
    statuses, problems = collect(folder.path, query)
    for line in problems:
        echo(f"  warning: {line}")
    by_id = {s.run_id: s for s in statuses}
    run_ids = list(run_ids)
    for run_id in run_ids:
        if run_id not in by_id:
            raise CrackhpcError(f"{folder.path}: no run {run_id!r} (`crackhpc status {folder.path}` lists them)")
    targets = []
    for run in [by_id[r] for r in run_ids] if run_ids else statuses:
        if run.live or run.state is RunState.PENDING:  # a run not yet submitted is not to be, either
            targets.append(run)
        elif run_ids:
            echo(f"  {run.run_id}: already {run.state}, left as it is")
    slurm_jobs = [r.job_id for r in targets if r.executor == "slurm" and r.job_id]
    # First in the call: the runs' jobs ending would otherwise start it.
    report = None if run_ids else report_job(folder.path, query)
    if report and report.active:
        slurm_jobs.insert(0, report.job_id)
    if slurm_jobs:
        (scancel or slurm.scancel)(slurm_jobs, echo=echo)
    if report and report.active:
        echo(f"  report job {report.job_id}: cancelled")
    record = folder.load() if targets else None
    cancelled = []
    for run in targets:
        job = record.runs.get(run.run_id)
        if run.executor == "debug":
            echo(f"  {run.run_id}: runs inside its `crackhpc sweep` process (executor debug): stop that process")
            continue
        if run.executor == "local" and job:
            try:
                worker = rundir.read_result(folder.run(run.run_id)).get("process")
            except DamagedFileError:
                worker = None
            if not procs.stop_local_job(worker, job.process):
                echo(f"  {run.run_id}: local job {run.job_id} is not running any more")
        # A job can end between the look above and the scancel: keep the outcome it recorded.
        try:
            now = rundir.state_of(rundir.read_result(folder.run(run.run_id)))
        except DamagedFileError:
            now = RunState.UNREADABLE
        if now in (RunState.COMPLETED, RunState.FAILED):
            echo(f"  {run.run_id}: {now} before it could be cancelled")
            continue
        rundir.update_result(folder.run(run.run_id), status=RunState.CANCELLED, cancelled=rundir.now())
        echo(f"  {run.run_id}: cancelled" + (f" (job {run.job_id})" if run.job_id else ""))
        cancelled.append(run.run_id)
    return cancelled
