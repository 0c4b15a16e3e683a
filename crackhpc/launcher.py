"""`crackhpc sweep`: sweep YAML → run folders → submitit jobs (Slurm arrays, or local processes).

Runs with the same resources go out as one job array. Completed runs are skipped, runs whose
job is still queued or running are left alone, failed runs are resubmitted only on request.
One `crackhpc sweep` at a time submits to a sweep folder (its lock), and the record is saved
after every submission, so an interrupted command loses no job id.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from . import atomic, preflight, procs, rundir, slurm
from .config import RunSpec, Sweep
from .data.split import make_manifest, write_manifest
from .errors import CrackhpcError, DamagedFileError, Interrupted
from .grid import expand
from .record import DATA, SweepFolder, SweepRecord
from .states import RunState
from .status import RETRY, run_statuses
from .then_report import ThenReport


def resolve_executor(executor: str) -> str:
    if executor != "auto":
        return executor
    return "slurm" if shutil.which("sbatch") else "local"


def synthetic_root(results: Path, sweep: Sweep) -> Path:
    s = sweep.data.synthetic
    return results / DATA / f"synth-n{s.n}-{s.size}px-seed{s.seed}"


def prepare_data(sweep: Sweep, results: Path) -> Path:
    """The dataset folder for a sweep, making the synthetic one if the sweep asks for it."""
    if sweep.data.root is not None:
        return Path(sweep.data.root)
    from .data.synth import synthesize

    s = sweep.data.synthetic
    root = synthetic_root(results, sweep)
    synthesize(root, s.n, size=s.size, seed=s.seed)
    return root


def make_executor(executor: str, folder: Path, params: dict):
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


RETRY_HINT = " (use --retry-failed)"
ORPHANED = ", orphaned"


def plan(specs: list[RunSpec], folder: SweepFolder, record: SweepRecord, retry_failed: bool) -> dict[str, str]:
    """What to do with each run: submit, or why not. States are `crackhpc status`'s, so a job
    that Slurm killed (time limit, out of memory) or a local worker that died counts as failed
    even if its worker could not say so."""
    actions = {}
    for run in run_statuses(folder, [s.run_id for s in specs], record):
        if run.state is RunState.COMPLETED:
            actions[run.run_id] = "skip: completed"
        elif run.live:
            what = f"job {run.job_id} {(run.slurm_state or run.state.value).lower()}" if run.job_id else f"{run.state}"
            actions[run.run_id] = f"skip: {what}" + (ORPHANED if run.orphan else "")
        elif run.state is not RunState.PENDING and not retry_failed:
            actions[run.run_id] = f"skip: {run.state}{RETRY_HINT}"
        else:
            actions[run.run_id] = "submit"
    return actions


def say_orphans(actions: dict[str, str], folder: SweepFolder, record: SweepRecord, echo) -> None:
    """Runs whose `crackhpc sweep` (or predict) was killed: nobody waits for them, and they hold
    cores that the jobs about to start will also use."""
    if orphans := sorted(r for r, a in actions.items() if a.endswith(ORPHANED)):
        echo(
            f"  still running from a `{record.command}` that has gone: {', '.join(orphans)}; they record their own "
            f"outcomes; `crackhpc status {folder.path}` follows them, `crackhpc cancel {folder.path}` stops them"
        )


def write_run_folders(
    specs: list[RunSpec], folder: SweepFolder, data_root: Path, sweep: Sweep, provenance: dict | None = None
) -> list[RunSpec]:
    manifest = make_manifest(data_root, sweep.data.split, sweep.data.split_seed)
    write_manifest(folder.split, manifest)
    resolved = []
    for spec in specs:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": str(data_root)})})
        run_dir = folder.run(spec.run_id)
        if not rundir.is_completed(run_dir):
            atomic.remove_stale(run_dir)
            rundir.write_config(run_dir, spec)
            write_manifest(run_dir / rundir.SPLIT, manifest)
            # A new attempt: status, plan and cancel read result.json as the state of the latest job.
            rundir.reset_result(
                run_dir, run_id=spec.run_id, status=RunState.PENDING, epochs=spec.train.epochs, provenance=provenance
            )
        resolved.append(spec)
    return resolved


def plan_sweep(
    sweep: Sweep, results: Path, retry_failed: bool
) -> tuple[SweepFolder, list[RunSpec], SweepRecord, dict[str, str]]:
    """The sweep folder, every run, the sweep record and what to do with each run."""
    if results.exists() and not results.is_dir():
        raise CrackhpcError(f"--results {results}: a file, not a folder; give a folder for the sweeps' results")
    folder = SweepFolder((results / sweep.name).resolve())
    specs = expand(sweep)
    record = folder.load()
    record.current_runs = [s.run_id for s in specs]
    return folder, specs, record, plan(specs, folder, record, retry_failed)


def prepare_runs(
    sweep: Sweep, results: Path, folder: SweepFolder, specs: list[RunSpec], record: SweepRecord, executor: str
) -> list[RunSpec]:
    """Data and run folders for the runs about to be submitted; the specs now name the data folder."""
    from .provenance import submission

    data_root = prepare_data(sweep, results)
    record.sweep, record.yaml, record.overrides = sweep.name, str(Path(sweep.path).resolve()), list(sweep.overrides)
    record.executor, record.data_root, record.submitted = executor, str(data_root), rundir.now()
    record.provenance = submission(sweep.path)
    return write_run_folders(specs, folder, data_root, sweep, record.provenance)


def submit(
    sweep: Sweep,
    results: Path,
    executor: str = "auto",
    dry_run: bool = False,
    retry_failed: bool = False,
    wait: bool | None = None,
    echo=print,
    then_report: ThenReport | None = None,
) -> dict[str, RunState]:
    """Submit every run of `sweep` that needs it. Returns the state of each run this call waited
    for (none when it did not wait); the record is in sweep.json. `then_report`: a report job after
    the submitted Slurm jobs, where this call does not wait for them."""
    executor = resolve_executor(executor if executor != "auto" else sweep.executor)
    folder, specs, record, actions = plan_sweep(sweep, results, retry_failed)
    groups: dict[str, list[RunSpec]] = defaultdict(list)  # one job array per resource shape
    for spec in specs:
        if actions[spec.run_id] == "submit":
            groups[json.dumps(spec.resources.model_dump(mode="json"), sort_keys=True)].append(spec)
    # A shape with more runs than the cluster's MaxArraySize goes out as several arrays.
    batches = slurm.split_arrays(list(groups.values()), slurm.max_array_size() if executor == "slurm" else None)
    echo(
        f"sweep {sweep.name}: {len(specs)} runs, {sum(map(len, groups.values()))} to submit, executor {executor}, results in {folder.path}"
    )
    say_orphans(actions, folder, record, echo)
    if dry_run:
        _print_plan(specs, actions, batches, folder, executor, sweep.name, echo)
        return {}
    # Said on a real submission too, or a failed or unreadable run would go unmentioned.
    left = {r: a.removeprefix("skip: ").removesuffix(RETRY_HINT) for r, a in actions.items() if a.endswith(RETRY_HINT)}
    if left:
        echo(
            "  not resubmitted without --retry-failed: " + ", ".join(f"{r} ({why})" for r, why in sorted(left.items()))
        )
    todo = [s for g in groups.values() for s in g]
    preflight.require_weights(todo)  # fail here, not after hours in the queue
    with folder.lock():
        record.owner = {**procs.identity(), "since": rundir.now()}
        folder.save(record)
        if not todo:
            return {}
        specs = {s.run_id: s for s in prepare_runs(sweep, results, folder, todo, record, executor)}
        folder.save(record)
        jobs = []
        try:
            for group in batches:
                params = slurm.submitit_parameters(
                    group[0].resources, executor, f"{group[0].resources.job_name}-{sweep.name}"
                )
                submitter = make_executor(executor, folder.submitit, params)
                _submit_group(submitter, executor, [specs[s.run_id] for s in group], folder, record, jobs, echo)
            waits = wait if wait is not None else executor != "slurm"
            if then_report and executor == "slurm" and not waits:
                echo(then_report.submit(folder, record, [job.job_id for _, job in jobs], todo[0].resources))
            if waits:
                if executor == "debug":
                    # The debug executor runs each job in this process when it is waited on. torchvision's Triton
                    # segfaults when it loads after TensorFlow 2.21 but not before, so torch runs go first.
                    jobs.sort(key=lambda spec_job: spec_job[0].train.framework != "torch")
                return wait_for(jobs, folder, record, executor)
            return {}
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(jobs, [s.run_id for s in todo], executor, folder, record)) from None
        finally:
            record.finished = rundir.now()
            folder.save(record)


def _print_plan(specs, actions, groups, folder: SweepFolder, executor: str, name: str, echo) -> None:
    for spec in specs:
        r = spec.resources
        echo(
            f"  {spec.run_id:<48} {actions[spec.run_id]:<22} nodes={r.nodes} tasks/node={r.ntasks_per_node} "
            f"gpus/node={r.gpus_per_node} cpus/task={r.cpus_per_task} mem={r.mem_gb or '-'}G time={r.timeout_min}m"
        )
    refused = []
    for group in groups:
        res = group[0].resources
        params = slurm.submitit_parameters(res, executor, f"{res.job_name}-{name}")
        if executor == "slurm":
            shape = f"job array of {len(group)} runs" if len(group) > 1 else "job of 1 run"  # submitit's choice too
        else:
            shape = f"{len(group)} local process{'es' * (len(group) > 1)}, at most {_local_limit(res)} at once"
        # Setup lines (the attempt start line first) are in the script printed below.
        echo(f"  {shape}: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "slurm_setup"))
        if executor == "slurm":
            script = slurm.preview(make_executor("slurm", folder.submitit, params), len(group))
            echo(script)
            if answer := slurm.ask_test_only(script):
                echo(f"  {answer}")
                refused += [] if answer.accepted else [s.run_id for s in group]
    for warning in preflight.weights_warnings([s for group in groups for s in group]):
        echo(warning)
    if refused:
        raise CrackhpcError(f"Slurm would refuse {len(refused)} run(s): see `sbatch --test-only` above")


def _local_limit(res) -> int:
    """Local processes share this machine's cores: at most cores/cpus_per_task run at once, the
    local counterpart of a Slurm array's parallelism limit."""
    return max(1, min(res.array_parallelism, (os.cpu_count() or 1) // (res.cpus_per_task * res.ntasks_per_node)))


def _submit_group(
    submitter, executor: str, group: list[RunSpec], folder: SweepFolder, record: SweepRecord, jobs: list, echo
) -> None:
    """Submit one resource shape, adding each (spec, job) to `jobs` as it goes out; the record is
    saved after each job, so an interrupt loses none."""
    from submitit.helpers import as_completed

    from .worker import Worker

    def recorded(spec, job):
        process = procs.identity(int(job.job_id)) if executor == "local" else None
        record.add_job(spec.run_id, job.job_id, executor, job.paths.stdout, job.paths.stderr, process)
        echo(f"  {spec.run_id}  job {job.job_id}  logs {job.paths.stdout.with_suffix('')}.{{out,err}}")
        jobs.append((spec, job))

    if executor == "slurm":
        with submitter.batch():
            submitted = [(s, submitter.submit(Worker(folder.run(s.run_id)))) for s in group]
        for spec, job in submitted:
            recorded(spec, job)
        folder.save(record)
        return
    running = []
    limit = _local_limit(group[0].resources) if executor == "local" else len(group)
    for spec in group:
        if len(running) >= limit:
            running.remove(next(as_completed(running, poll_frequency=0.5)))
        job = submitter.submit(Worker(folder.run(spec.run_id)))
        recorded(spec, job)
        running.append(job)
        folder.save(record)


def _settle(spec: RunSpec, job, folder: SweepFolder, executor: str, again: str) -> RunState:
    """The run's state once its local job has ended; a worker that ended without recording an
    outcome (killed, out of memory, a full disk) is recorded failed, with where to look. (Slurm's
    jobs are left to `crackhpc status`, which knows a time-out from a failure.)"""
    run_dir = folder.run(spec.run_id)
    try:
        state = rundir.state_of(rundir.read_result(run_dir))
    except DamagedFileError:
        return RunState.UNREADABLE
    if state.live and executor != "slurm":
        rundir.update_result(
            run_dir,
            status=RunState.FAILED,
            finished=rundir.now(),
            error=f"the worker died without recording an outcome (killed, out of memory or disk?); "
            f"see {job.paths.stderr}; {RETRY.format(again=again)}",
        )
        return RunState.FAILED
    return state


def wait_for(jobs, folder: SweepFolder, record: SweepRecord, executor: str, poll_s: float = 2.0) -> dict[str, RunState]:
    from submitit.helpers import as_completed
    from tqdm import tqdm

    by_job = {id(job): spec for spec, job in jobs}
    with tqdm(total=len(jobs), desc="runs", unit="run") as bar:
        for job in as_completed([job for _, job in jobs], poll_frequency=poll_s):
            spec = by_job[id(job)]
            bar.update(1)
            bar.write(f"  {spec.run_id}: {_settle(spec, job, folder, executor, record.resubmit)}")
    return {s.run_id: s.state for s in run_statuses(folder, [spec.run_id for spec, _ in jobs], folder.load())}


def _interrupted(jobs, todo: list[str], executor: str, folder: SweepFolder, record: SweepRecord) -> str:
    """Ctrl-C: local jobs are this command's processes, so they stop with it and their runs are
    recorded cancelled; Slurm jobs are left to Slurm, their ids in the record. Returns what was done."""
    if executor == "slurm":
        return (
            f"{len(jobs)} Slurm job(s) left queued or running, ids in {folder.record_path}; "
            f"`crackhpc status {folder.path}` follows them, `crackhpc cancel {folder.path}` stops them"
        )
    for spec, _ in jobs:
        job = record.runs.get(spec.run_id)
        if executor == "local" and job:
            try:
                worker = rundir.read_result(folder.run(spec.run_id)).get("process")
            except DamagedFileError:
                worker = None
            procs.stop_local_job(worker, job.process)
    cancelled = 0
    for run_id in todo:  # started (a stopped worker records itself cancelled) or still waiting for a free core
        try:
            state = rundir.state_of(rundir.read_result(folder.run(run_id)))
        except DamagedFileError:
            continue
        if state.live:
            rundir.update_result(
                folder.run(run_id),
                status=RunState.CANCELLED,
                cancelled=rundir.now(),
                error="interrupted (Ctrl-C or kill)",
            )
        cancelled += state.live or state is RunState.CANCELLED
    return f"{cancelled} run(s) recorded cancelled; {record.resubmit} resumes them from their checkpoints"
