"""The one submission engine (dora's Shepherd): `crackhpc sweep`, `crackhpc sbatch` and
`crackhpc predict` hand it units, a run id and the job that trains or predicts it, and it owns all
that follows, the same way for each:

- the executor: submitit's Slurm job arrays, local processes, the calling process (debug), or the
  plain sbatch scripts of `crackhpc sbatch`;
- one job array per resource shape, split at the cluster's MaxArraySize;
- local throttling: local jobs share this machine's cores;
- the record: each job is in sweep.json before anything is printed about it;
- waiting, and settling a local job that died without a word;
- Ctrl-C and SIGTERM: local jobs are stopped and recorded cancelled, Slurm's are left queued;
- orphans of a submitter killed outright, and `crackhpc cancel`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic, procs, rundir, slurm
from .config import EXECUTORS, Resources
from .errors import CrackhpcError, DamagedFileError, Interrupted
from .record import PREDICTION, SEARCH_DB, SweepFolder, SweepRecord
from .states import SUCCEEDED, RunState
from .status import FIX_RESUME, SIDE_JOBS, RunStatus, SlurmQuery, collect, report_job, run_statuses

SUBMIT = "submit"
FIX_RETRY = " (use --retry-failed)"
ORPHANED = ", orphaned"
SBATCH = "sbatch"  # the plain scripts of `crackhpc sbatch --submit`, one sbatch call per run
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Unit:
    """One run as the engine submits it."""

    run_id: str
    job: Any  # a crackhpc.jobs.RecordedJob for submitit's executors; the script's Path for plain sbatch
    resources: Resources
    name: str  # the Slurm job name

    @property
    def shape(self) -> str:
        """Units of one shape go out as one job array."""
        return json.dumps([self.name, self.resources.model_dump(mode="json")], sort_keys=True)


def resolve_executor(executor: str) -> str:
    """`auto`: Slurm where sbatch exists, else local processes."""
    if executor not in EXECUTORS:
        raise CrackhpcError(f"executor {executor!r}: give one of {', '.join(EXECUTORS)}")
    if executor != "auto":
        return executor
    return "slurm" if shutil.which("sbatch") else "local"


def make_executor(executor: str, folder: Path, params: dict):
    """submitit's AutoExecutor for one job shape (crackhpc.slurm.submitit_parameters)."""
    import submitit

    if executor == "slurm" and not shutil.which("srun"):  # submitit's own check would end in a traceback
        raise CrackhpcError(
            "executor slurm: srun not found on PATH; run this on a Slurm login node, or use --executor local"
        )
    # slurm_max_num_timeout is taken when the executor is made; update_parameters rejects it.
    constructor = {k: params[k] for k in ("slurm_max_num_timeout",) if k in params}
    submitter = submitit.AutoExecutor(folder=folder, cluster=executor, **constructor)
    submitter.update_parameters(**{k: v for k, v in params.items() if k not in constructor})
    return submitter


def local_cores() -> int:
    """The cores this process may use (its affinity, which a batch system or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _SessionSubprocess:
    """What submitit's local executor sees as its `subprocess` module while crackhpc submits: each
    job's controller starts in a session of its own, its output in the submitit folder. In this
    process's group, a terminal's Ctrl-C (SIGINT to the whole foreground group) would reach every
    controller and worker at once, and each would print its own KeyboardInterrupt; on its own, a
    job hears only what crackhpc tells it (SIGINT to its worker, which records the run cancelled)."""

    def __init__(self, log: Path):
        self._log = log

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def Popen(self, *args, **kwargs):  # noqa: N802 (subprocess's name)
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log, "ab") as log:
            kwargs = {"start_new_session": True, "stdout": log, "stderr": subprocess.STDOUT, **kwargs}
            return subprocess.Popen(*args, **kwargs)


@contextlib.contextmanager
def _own_sessions(folder: Path) -> Iterator[None]:
    from submitit.local import local

    module = local.subprocess
    local.subprocess = _SessionSubprocess(folder / "controllers.log")  # type: ignore[assignment]
    try:
        yield
    finally:
        local.subprocess = module


def _ranges(arrays: Sequence[Sequence[Unit]]) -> str:
    """`runs 1-5, 6-10, 11-12`, cut short in the middle for many arrays."""
    spans, start = [], 1
    for array in arrays:
        spans.append(f"{start}-{start + len(array) - 1}" if len(array) > 1 else str(start))
        start += len(array)
    return "runs " + ", ".join(spans if len(spans) <= 8 else [*spans[:3], "…", *spans[-2:]])


class Engine:
    """Submits, waits for, interrupts and cancels the runs of one sweep (or prediction) folder."""

    def __init__(self, folder: SweepFolder, kind: str | None, executor: str, echo: Echo = print):
        """`kind`: None for a sweep's folder, PREDICTION for a prediction's (crackhpc.record)."""
        self.folder, self.kind, self.executor, self.echo = folder, kind, executor, echo
        self.record = SweepRecord(kind=kind)
        self._jobs: list[tuple[Unit, Any]] = []  # what went out, with submitit's job where there is one
        self._executors: dict[str, Any] = {}
        self._units: list[Unit] = []
        self._owned = False

    # -- planning -----------------------------------------------------------------------------------

    def plan(self, run_ids: Sequence[str], retry_failed: bool) -> dict[str, str]:
        """What to do with each run: SUBMIT, or `skip: why`. States are `crackhpc status`'s, so a job
        that Slurm killed (time limit, out of memory) or a local worker that died counts as failed
        even if its worker could not say so. Planned before this process owns the folder's jobs."""
        actions = {}
        for run in run_statuses(self.folder, run_ids, self.record):
            if run.state in SUCCEEDED:  # a pruned run ended as its search meant it to
                actions[run.run_id] = f"skip: {run.state}"
            elif run.live:
                what = f"job {run.job_id} {(run.slurm_state or run.state.value).lower()}" if run.job_id else run.state
                actions[run.run_id] = f"skip: {what}" + (ORPHANED if run.orphan else "")
            elif run.state is not RunState.PENDING and not retry_failed:
                actions[run.run_id] = f"skip: {run.state}{FIX_RETRY}"
            else:
                actions[run.run_id] = SUBMIT
        return actions

    def say_orphans(self, actions: dict[str, str]) -> None:
        """Runs whose submitter was killed outright: nobody waits for them, and they hold cores that
        the jobs about to start will also use."""
        if orphans := sorted(r for r, a in actions.items() if a.endswith(ORPHANED)):
            self.echo(
                f"  still running from a `{self.record.command}` that has gone: {', '.join(orphans)}; they record "
                f"their own outcomes; `crackhpc status {self.folder.path}` follows them, "
                f"`crackhpc cancel {self.folder.path}` stops them"
            )

    def arrays(self, units: Sequence[Unit]) -> list[list[Unit]]:
        """One job array per resource shape, in the units' order; on Slurm a shape with more runs
        than the cluster's MaxArraySize goes out as several arrays."""
        shapes: dict[str, list[Unit]] = {}
        for unit in units:
            shapes.setdefault(unit.shape, []).append(unit)
        limit = slurm.max_array_size() if self.executor == "slurm" else None
        return slurm.split_arrays(list(shapes.values()), limit)

    def preview(self, units: Sequence[Unit]) -> None:
        """The dry run's view of each job shape: its submitit parameters and, on Slurm, its script,
        printed once with the array ranges listed, and Slurm's answer to `sbatch --test-only`, asked
        once. A CrackhpcError if Slurm would refuse a shape."""
        refused = []
        for shape, arrays in self._shapes(units).items():
            first = arrays[0][0]
            params = slurm.submitit_parameters(first.resources, self.executor, first.name)
            count = sum(len(a) for a in arrays)
            if self.executor == "slurm":
                what = f"job array of {count} runs" if count > 1 else "job of 1 run"  # submitit's choice too
                if len(arrays) > 1:
                    what = f"{count} runs as {len(arrays)} job arrays (MaxArraySize), {_ranges(arrays)}"
            else:
                limit = min(first.resources.array_parallelism, self.fits(first.resources))
                what = f"{count} local process{'es' * (count > 1)}, at most {limit} at once"
            # Setup lines (the attempt start line first) are in the script printed below.
            self.echo(f"  {what}: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "slurm_setup"))
            if self.executor == "slurm":
                script = slurm.preview(self._executor(shape, first), len(arrays[0]))
                self.echo(script)
                if answer := slurm.ask_test_only(script):
                    self.echo(f"  {answer}")
                    refused += [] if answer.accepted else [u.run_id for a in arrays for u in a]
        if refused:
            raise CrackhpcError(f"Slurm would refuse {len(refused)} run(s): see `sbatch --test-only` above")

    def _shapes(self, units: Sequence[Unit]) -> dict[str, list[list[Unit]]]:
        shapes: dict[str, list[list[Unit]]] = {}
        for array in self.arrays(units):
            shapes.setdefault(array[0].shape, []).append(array)
        return shapes

    # -- submitting ----------------------------------------------------------------------------------

    def open(self, fix: str) -> SweepRecord:
        """The folder's record, refusing a folder of another kind in one line ending in `fix`."""
        self.record = self.folder.claim(self.kind, fix)
        return self.record

    @contextlib.contextmanager
    def locked(self, fix: str) -> Iterator[SweepRecord]:
        """The folder's submission lock, held while this command submits (and, locally, runs) its
        jobs, and its record as it is under the lock; saved on the way out, whatever happened."""
        self.open(fix)  # before the lock, which would leave its file in a folder of another kind
        with self.folder.lock():
            try:
                yield self.open(fix)
            finally:
                if self._owned:
                    self.record.finished = rundir.now()
                    self.folder.save(self.record)

    def own(self) -> None:
        """This process now submits (and, locally, runs) the folder's jobs: status and a later
        submitter tell its live jobs from orphans by it."""
        self.record.owner = {**procs.identity(), "since": rundir.now()}
        self.record.executor = self.executor
        self.folder.save(self.record)
        self._owned = True

    def run(self, units: Sequence[Unit], wait: bool) -> dict[str, RunState]:
        """Submit `units`, each job recorded (and the record saved) as it goes out, and wait for them
        where asked: the state of each run waited for. Ctrl-C or SIGTERM stops local jobs and records
        them cancelled; Slurm's are left queued (Interrupted says which)."""
        self.record.submitted = rundir.now()
        self._units += units  # a search submits in rounds: Ctrl-C stops every round's jobs
        try:
            if self.executor == SBATCH:
                for unit in units:
                    self._sbatch(unit)
            elif self.executor == "slurm":
                with slurm.submission(self.record.yaml or str(self.folder.path), self._refusal_hint):
                    for array in self.arrays(units):
                        self._slurm_array(array)
            else:
                self._local(units)
            if not wait:
                return {}
            return self._wait_local() if self.executor in ("local", "debug") else self._wait_slurm()
        except KeyboardInterrupt:
            raise self.interrupted() from None

    def statuses(self, run_ids: Sequence[str]) -> list[RunStatus]:
        """Where each run stands now (a search watches its trials' runs with it, between rounds of
        submission): a local job of this command that ended without its worker recording an outcome
        is recorded failed first."""
        for unit, job in self._jobs:
            if self.executor == "local" and unit.run_id in run_ids and job.done():
                self._settle(unit, job)
        return run_statuses(self.folder, run_ids, self.record)

    def interrupted(self) -> Interrupted:
        """Ctrl-C or SIGTERM outside `run` (a search waiting between its rounds): what `run` does then."""
        return Interrupted(self._interrupted(self._units))

    @property
    def _refusal_hint(self) -> str:
        if self.record.kind == PREDICTION:
            return (
                "fix what Slurm says (--set resources.partition=… or --cluster NAME), then run the same command again"
            )
        return "`crackhpc sweep --dry-run` asks Slurm without submitting"

    def _executor(self, shape: str, unit: Unit):
        if shape not in self._executors:
            params = slurm.submitit_parameters(unit.resources, self.executor, unit.name)
            self._executors[shape] = make_executor(self.executor, self.folder.submitit, params)
        return self._executors[shape]

    def _recorded(self, unit: Unit, job_id: str, logs: Sequence[Path], process: dict | None = None) -> None:
        executor = self.executor if self.executor != SBATCH else "slurm"
        self.record.add_job(unit.run_id, job_id, executor, logs[0], logs[1], process)

    def _say(self, unit: Unit, job_id: str, logs: str) -> None:
        self.echo(f"  {unit.run_id}  job {job_id}  logs {logs}")

    def _slurm_array(self, array: list[Unit]) -> None:
        array = [unit for unit in array if not self._cancelled_meanwhile(unit)]
        if not array:
            return
        submitter = self._executor(array[0].shape, array[0])
        with submitter.batch():
            jobs = [submitter.submit(unit.job) for unit in array]
        for unit, job in zip(array, jobs):
            self._recorded(unit, job.job_id, (job.paths.stdout, job.paths.stderr))
        self.folder.save(self.record)  # every job of the array before a word is printed about any
        self._jobs += zip(array, jobs)
        for unit, job in zip(array, jobs):
            self._say(unit, job.job_id, f"{job.paths.stdout.with_suffix('')}.{{out,err}}")

    def _sbatch(self, unit: Unit) -> None:
        job_id = slurm.sbatch(unit.job)
        run_dir = self.folder.run(unit.run_id)
        logs = [run_dir / f"{rundir.SBATCH_LOG.replace('%j', job_id)}{ext}" for ext in (".out", ".err")]
        self._recorded(unit, job_id, logs)
        self.folder.save(self.record)
        self._jobs.append((unit, None))
        self._say(unit, job_id, str(logs[0]))

    def fits(self, res: Resources) -> int:
        """How many jobs of this shape fit this machine's cores at once (at least one)."""
        return max(1, local_cores() // (res.cpus_per_task * res.ntasks_per_node))

    def _local(self, units: Sequence[Unit]) -> None:
        """Local processes share this machine's cores: a job starts once the cores of those running
        leave room for it, and within its shape's array_parallelism, the local counterparts of a
        Slurm array's limits. The debug executor runs each job in this process when it is waited on."""
        from submitit.helpers import as_completed

        running: list[tuple[Unit, Any]] = []
        cores = local_cores()
        for unit in units:
            res = unit.resources
            need = min(cores, res.cpus_per_task * res.ntasks_per_node)
            while (
                self.executor == "local"
                and running
                and (
                    sum(u.resources.cpus_per_task * u.resources.ntasks_per_node for u, _ in running) + need > cores
                    or sum(u.shape == unit.shape for u, _ in running) >= res.array_parallelism
                )
            ):
                done = next(as_completed([job for _, job in running], poll_frequency=0.5))
                running = [(u, j) for u, j in running if j is not done]
            if self._cancelled_meanwhile(unit):
                continue
            submitter = self._executor(unit.shape, unit)
            with _own_sessions(self.folder.submitit) if self.executor == "local" else contextlib.nullcontext():
                job = submitter.submit(unit.job)
            process = procs.identity(int(job.job_id)) if self.executor == "local" else None
            self._recorded(unit, job.job_id, (job.paths.stdout, job.paths.stderr), process)
            self.folder.save(self.record)
            self._jobs.append((unit, job))
            running.append((unit, job))
            self._say(unit, job.job_id, f"{job.paths.stdout.with_suffix('')}.{{out,err}}")

    def _cancelled_meanwhile(self, unit: Unit) -> bool:
        """`crackhpc cancel` of a run still waiting for a core (or its turn to be submitted): it stays cancelled."""
        if cancelled := rundir.stop_requested(self.folder.run(unit.run_id)) is not None:
            self.echo(f"  {unit.run_id}: cancelled before it was submitted")
        return cancelled

    # -- waiting -------------------------------------------------------------------------------------

    def _settle(self, unit: Unit, job) -> RunState:
        """The run's state once its local job has ended; a worker that ended without recording an
        outcome is recorded as its stop request asked (`crackhpc cancel` stopped it before its
        handlers were in place), else failed (killed, out of memory, a full disk), with where to look."""
        run_dir = self.folder.run(unit.run_id)
        try:
            state = rundir.state_of(rundir.read_result(run_dir))
        except DamagedFileError:
            return RunState.UNREADABLE
        stop = rundir.stop_requested(run_dir)
        if state.live and stop is not None:
            asked = RunState.parse(str(stop.get("state", RunState.CANCELLED.value)))
            rundir.update_result(run_dir, status=asked, error=stop.get("why") or None, finished=rundir.now())
            return asked
        if state.live:
            rundir.update_result(
                run_dir,
                status=RunState.FAILED,
                finished=rundir.now(),
                error=f"the worker died without recording an outcome (killed, out of memory or disk?); "
                f"see {job.paths.stderr}; {FIX_RESUME.format(again=self.record.resubmit)}",
            )
            return RunState.FAILED
        return state

    def _states(self) -> dict[str, RunState]:
        """Of every run this command submitted, or would have (one cancelled meanwhile, say)."""
        ids = [unit.run_id for unit in self._units]
        return {s.run_id: s.state for s in run_statuses(self.folder, ids, self.folder.load())}

    def _wait_local(self) -> dict[str, RunState]:
        from submitit.helpers import as_completed
        from tqdm import tqdm

        by_job = {id(job): unit for unit, job in self._jobs}
        with tqdm(total=len(self._jobs), desc="runs", unit="run") as bar:
            for job in as_completed([job for _, job in self._jobs], poll_frequency=2.0):
                unit = by_job[id(job)]
                bar.update(1)
                bar.write(f"  {unit.run_id}: {self._settle(unit, job)}")
        return self._states()

    def _wait_slurm(self, poll_s: float = 5.0) -> dict[str, RunState]:
        """Until no run is live, by the merged view of `crackhpc status` (its sacct calls have a time
        limit; submitit's own watcher has none)."""
        import time

        from tqdm import tqdm

        ids = [unit.run_id for unit, _ in self._jobs]
        ended: set[str] = set()
        with tqdm(total=len(ids), desc="runs", unit="run") as bar:
            while len(ended) < len(ids):
                for run in run_statuses(self.folder, ids, self.record):
                    if not run.live and run.run_id not in ended:
                        ended.add(run.run_id)
                        bar.update(1)
                        bar.write(f"  {run.run_id}: {run.state}")
                if len(ended) < len(ids):
                    time.sleep(poll_s)
        return self._states()

    # -- stopping ------------------------------------------------------------------------------------

    def _stop_local(self, run_ids: Sequence[str]) -> list[bool]:
        """Stop runs' local jobs, all at once: their workers (each records its run cancelled), then
        their controllers. For each: False if neither was running."""
        jobs = []
        for run_id in run_ids:
            job = self.record.runs.get(run_id)
            try:
                worker = rundir.read_result(self.folder.run(run_id)).get("process")
            except DamagedFileError:
                worker = None
            jobs.append((worker, job.process if job else None))
        return procs.stop_local_jobs(jobs)

    def _interrupted(self, units: Sequence[Unit]) -> str:
        """Ctrl-C: local jobs are this command's processes, so they stop with it and their runs are
        recorded cancelled; Slurm jobs are left to Slurm, their ids in the record."""
        if self.executor in ("slurm", SBATCH):
            return (
                f"{len(self._jobs)} Slurm job(s) left queued or running, ids in {self.folder.record_path}; "
                f"`crackhpc status {self.folder.path}` follows them, `crackhpc cancel {self.folder.path}` stops them"
            )
        if self.executor == "local":
            self._stop_local([unit.run_id for unit, _ in self._jobs])
        cancelled = 0
        for unit in units:  # started (a stopped worker records itself cancelled) or still waiting for a core
            run_dir = self.folder.run(unit.run_id)
            try:
                state = rundir.state_of(rundir.read_result(run_dir))
            except DamagedFileError:
                continue
            if state.live:
                rundir.update_result(
                    run_dir, status=RunState.CANCELLED, cancelled=rundir.now(), error="interrupted (Ctrl-C or kill)"
                )
            cancelled += state.live or state is RunState.CANCELLED
        if self.kind == PREDICTION:
            return (
                f"{cancelled} shard(s) recorded cancelled; {self.record.resubmit} resumes them (mapped photos are kept)"
            )
        return f"{cancelled} run(s) recorded cancelled; {self.record.resubmit} resumes them from their checkpoints"

    def cancel(self, run_ids: Sequence[str] = (), query: SlurmQuery | None = None) -> list[str]:
        """`crackhpc cancel`: the named runs (every live run if none, and then the sweep's report job
        too) stopped and recorded cancelled; a run that ended meanwhile keeps its own outcome. `query`
        replaces sacct, as in the tests."""
        statuses, problems = collect(self.folder.path, query)
        with contextlib.suppress(DamagedFileError):  # collect has said so: cancel what it can tell
            self.record = self.folder.load()
        for line in problems:
            self.echo(f"  warning: {line}")
        by_id = {s.run_id: s for s in statuses}
        for run_id in run_ids:
            if run_id not in by_id:
                raise CrackhpcError(
                    f"{self.folder.path}: no run {run_id!r} (`crackhpc status {self.folder.path}` lists them)"
                )
        targets: list[RunStatus] = []
        for run in [by_id[r] for r in run_ids] if run_ids else statuses:
            if run.live or run.state is RunState.PENDING:  # a run not yet submitted is not to be, either
                targets.append(run)
            elif run_ids:
                self.echo(f"  {run.run_id}: already {run.state}, left as it is")
        if not run_ids and (self.folder.path / SEARCH_DB).is_file():  # a search's controller draws no more trials
            rundir.request_stop(self.folder.path, RunState.CANCELLED, "crackhpc cancel")
        for run in targets:  # heard by a worker that starts, or reaches an epoch's end, after this look
            if run.executor != "slurm" or not run.job_id:  # a job that scancel ends never starts
                rundir.request_stop(self.folder.run(run.run_id), RunState.CANCELLED, "crackhpc cancel")
        slurm_jobs = [r.job_id for r in targets if r.executor == "slurm" and r.job_id]
        if not run_ids:  # the whole sweep: its arrays whole, every task of each is one of its runs
            slurm_jobs = slurm.whole_arrays(slurm_jobs)
        # The sweep's own jobs with the whole sweep, first: the runs' jobs ending would start the report
        # job (crackhpc.then_report), and a search's controller would submit new trials.
        own = [job for what in SIDE_JOBS if not run_ids and (job := report_job(self.folder.path, query, what))]
        own = [job for job in own if job.active]
        slurm_jobs[:0] = [job.job_id for job in own]
        if slurm_jobs:
            slurm.scancel(slurm_jobs, echo=self.echo)
        for job in own:
            self.echo(f"  {job.what} {job.job_id}: cancelled")
        local = [r for r in targets if r.executor == "local"]
        for run, stopped in zip(local, self._stop_local([r.run_id for r in local])):
            if not stopped:
                self.echo(f"  {run.run_id}: local job {run.job_id} is not running any more")
        with atomic.deferred():  # one sync for 10,000 result.json, not an fsync each
            return [r.run_id for r in targets if self._record_cancelled(r)]

    def _record_cancelled(self, run: RunStatus) -> bool:
        if run.executor == "debug":
            self.echo(
                f"  {run.run_id}: runs inside its `{self.record.command}` process (executor debug): stop that process"
            )
            return False
        # A job can end between the look above and the scancel: keep the outcome it recorded.
        try:
            now = rundir.state_of(rundir.read_result(self.folder.run(run.run_id)))
        except DamagedFileError:
            now = RunState.UNREADABLE
        if now in (RunState.COMPLETED, RunState.FAILED, RunState.PRUNED):
            self.echo(f"  {run.run_id}: {now} before it could be cancelled")
            return False
        rundir.update_result(self.folder.run(run.run_id), status=RunState.CANCELLED, cancelled=rundir.now())
        self.echo(f"  {run.run_id}: cancelled" + (f" (job {run.job_id})" if run.job_id else ""))
        return True


def cancel(
    sweep_dir: str | Path, run_ids: Sequence[str] = (), query: SlurmQuery | None = None, echo: Echo = print
) -> list[str]:
    """`crackhpc cancel` of a sweep's or a prediction's runs (Engine.cancel)."""
    folder = SweepFolder(sweep_dir).check()
    return Engine(folder, None, "", echo).cancel(run_ids, query)
