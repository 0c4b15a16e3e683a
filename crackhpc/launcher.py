"""`crackhpc sweep`: sweep YAML → run folders → submitit jobs (Slurm arrays, or local processes).

Runs with the same resources go out as one job array. Completed runs are skipped, runs whose
job is still queued or running are left alone, failed runs are resubmitted only on request.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

from . import atomic, limits, preflight, rundir
from .attempts import START_SHELL
from .config import Resources, Sweep, to_plain
from .data.split import make_manifest, write_manifest
from .grid import RunSpec, expand
from .errors import CrackhpcError

SWEEP_JSON = "sweep.json"
SUBMITIT_DIR = "submitit"  # submitit's scripts, pickles and logs, in the sweep folder
# Job states that are not final: the job may still run, so its run must not be submitted again.
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                       "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT", "SIGNALING", "STAGE_OUT", "STOPPED")


def resolve_executor(kind: str) -> str:
    if kind != "auto":
        return kind
    return "slurm" if shutil.which("sbatch") else "local"


def synthetic_root(results: Path, sweep: Sweep) -> Path:
    s = sweep.data.synthetic
    return results / ".data" / f"synth-n{s.n}-{s.size}px-seed{s.seed}"


def prepare_data(sweep: Sweep, results: Path) -> Path:
    """The dataset folder for a sweep, making the synthetic one if the sweep asks for it."""
    if sweep.data.root is not None:
        return Path(sweep.data.root)
    from .data.synth import synthesize

    s = sweep.data.synthetic
    root = synthetic_root(results, sweep)
    synthesize(root, s.n, size=s.size, seed=s.seed)
    return root


def executor_parameters(res: Resources, kind: str, sweep_name: str) -> dict:
    """submitit parameters for one resource shape (AutoExecutor names)."""
    params = {"timeout_min": res.timeout_min, "nodes": res.nodes, "tasks_per_node": res.ntasks_per_node,
              "cpus_per_task": res.cpus_per_task, "name": f"{res.job_name}-{sweep_name}"}
    if kind == "slurm":
        params.update(gpus_per_node=res.gpus_per_node, mem_gb=res.mem_gb, slurm_partition=res.partition,
                      slurm_account=res.account, slurm_qos=res.qos, slurm_constraint=res.constraint,
                      slurm_array_parallelism=res.array_parallelism, slurm_max_num_timeout=res.max_requeues,
                      # The start line first: each start of a requeued job appends to the same logs.
                      slurm_setup=[START_SHELL, *res.setup],
                      # submitit requeues with `scontrol requeue`, which Slurm refuses for a job that is not
                      # requeueable: the default where a cluster sets JobRequeue=0.
                      slurm_additional_parameters={"requeue": True, **res.sbatch})
    else:
        params["gpus_per_node"] = min(res.gpus_per_node, _local_gpus())
        if res.nodes > 1:
            raise CrackhpcError(f"resources.nodes={res.nodes}: the {kind} executor runs on this machine only; use --executor slurm")
    return {k: v for k, v in params.items() if v is not None}


def _local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len([d for d in Path("/dev").glob("nvidia[0-9]*")])


# Parameters submitit takes when the executor is made; update_parameters rejects them.
_CONSTRUCTOR_PARAMETERS = ("slurm_max_num_timeout",)


def make_executor(kind: str, folder: Path, params: dict):
    import submitit

    if kind == "slurm" and not shutil.which("srun"):  # submitit's own check would end in a traceback
        raise CrackhpcError("executor slurm: srun not found on PATH; run this on a Slurm login node, or use --executor local")
    executor = submitit.AutoExecutor(folder=folder, cluster=kind,
                                     **{k: v for k, v in params.items() if k in _CONSTRUCTOR_PARAMETERS})
    executor.update_parameters(**{k: v for k, v in params.items() if k not in _CONSTRUCTOR_PARAMETERS})
    return executor


def sbatch_preview(executor, n_runs: int) -> str:
    """The submission script submitit writes for `n_runs` runs of this executor (dry-run), built
    the way submitit builds it: one run goes out as a plain job, more as one array."""
    from submitit.slurm.slurm import _make_sbatch_string

    slurm = executor._executor
    params = dict(slurm.parameters, **({"map_count": n_runs} if n_runs > 1 else {}))
    return _make_sbatch_string(command=slurm._submitit_command_str, folder=slurm.folder, **params)


def load_sweep_record(sweep_dir: Path) -> dict:
    path = sweep_dir / SWEEP_JSON
    return atomic.read_json(path) if path.is_file() else {"runs": {}}


def plan(specs: list[RunSpec], sweep_dir: Path, record: dict, retry_failed: bool) -> dict[str, str]:
    """What to do with each run: submit, or why not. States are `crackhpc status`'s, so a job
    that Slurm killed (time limit, out of memory) counts as failed even if its worker could not say so."""
    from .status import run_statuses

    actions = {}
    for run in run_statuses(sweep_dir, [s.run_id for s in specs], record):
        if run.state == "completed":
            actions[run.run_id] = "skip: completed"
        elif run.slurm_state in ACTIVE_SLURM_STATES:
            actions[run.run_id] = f"skip: job {run.job_id} {run.slurm_state.lower()}"
        elif not run.live and not retry_failed:
            actions[run.run_id] = f"skip: {run.state} (use --retry-failed)"
        else:
            actions[run.run_id] = "submit"
    return actions


def write_run_folders(specs: list[RunSpec], sweep_dir: Path, data_root: Path, sweep: Sweep,
                      provenance: dict | None = None) -> list[RunSpec]:
    manifest = make_manifest(data_root, sweep.data.split, sweep.data.split_seed)
    write_manifest(sweep_dir / rundir.SPLIT, manifest)
    resolved = []
    for spec in specs:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, root=str(data_root)))
        run_dir = sweep_dir / spec.run_id
        if not rundir.is_completed(run_dir):
            rundir.write_config(run_dir, spec)
            write_manifest(run_dir / rundir.SPLIT, manifest)
            # A new attempt: status, plan and cancel read result.json as the state of the latest job.
            rundir.update_result(run_dir, run_id=spec.run_id, status="pending", error=None, traceback=None,
                                 started=None, finished=None, provenance=provenance)
        resolved.append(spec)
    return resolved


def plan_sweep(sweep: Sweep, results: Path, retry_failed: bool,
               check_weights: bool = True) -> tuple[Path, list[RunSpec], dict, dict[str, str]]:
    """The sweep folder, every run, the sweep record and what to do with each run."""
    from .preflight import require_weights

    sweep_dir = (results / sweep.name).resolve()
    specs = expand(sweep)
    if check_weights:
        require_weights(specs)  # fail here, not after hours in the queue
    record = load_sweep_record(sweep_dir)
    record["current_runs"] = [s.run_id for s in specs]  # what the report compares; older runs stay on disk
    return sweep_dir, specs, record, plan(specs, sweep_dir, record, retry_failed)


def prepare_runs(sweep: Sweep, results: Path, sweep_dir: Path, specs: list[RunSpec], record: dict,
                 kind: str) -> list[RunSpec]:
    """Data and run folders for the runs about to be submitted; the specs now name the data folder."""
    from .provenance import submission

    data_root = prepare_data(sweep, results)
    record.update(sweep=sweep.name, yaml=str(Path(sweep.path).resolve()), overrides=list(sweep.overrides), executor=kind,
                  data_root=str(data_root), submitted=rundir.now(), provenance=submission(sweep.path))
    return write_run_folders(specs, sweep_dir, data_root, sweep, record["provenance"])


def record_job(record: dict, run_id: str, job_id: str, kind: str, stdout: Path, stderr: Path) -> None:
    """A run's new job in the sweep record; its earlier job ids stay in its history."""
    previous = record["runs"].get(run_id, {})
    history = previous.get("history", []) + ([previous["job_id"]] if previous.get("job_id") else [])
    record["runs"][run_id] = {"job_id": str(job_id), "executor": kind, "submitted": rundir.now(),
                              "stdout": str(stdout), "stderr": str(stderr), "history": history}


def submit(sweep: Sweep, results: Path, executor_kind: str = "auto", dry_run: bool = False,
           retry_failed: bool = False, wait: bool | None = None, echo=print) -> dict:
    """Submit every run of `sweep` that needs it; returns the sweep record (also in sweep.json)."""
    kind = resolve_executor(executor_kind if executor_kind != "auto" else sweep.executor)
    sweep_dir, specs, record, actions = plan_sweep(sweep, results, retry_failed, check_weights=not dry_run)
    groups: dict[str, list[RunSpec]] = defaultdict(list)  # one job array per resource shape
    for spec in specs:
        if actions[spec.run_id] == "submit":
            groups[json.dumps(to_plain(spec.resources), sort_keys=True)].append(spec)
    # A shape with more runs than the cluster's MaxArraySize goes out as several arrays.
    batches = limits.arrays(list(groups.values()), limits.max_array_size() if kind == "slurm" else None)

    echo(f"sweep {sweep.name}: {len(specs)} runs, {sum(map(len, groups.values()))} to submit, executor {kind}, results in {sweep_dir}")
    if dry_run:
        for spec in specs:
            r = spec.resources
            echo(f"  {spec.run_id:<48} {actions[spec.run_id]:<22} nodes={r.nodes} tasks/node={r.ntasks_per_node} "
                 f"gpus/node={r.gpus_per_node} cpus/task={r.cpus_per_task} mem={r.mem_gb or '-'}G time={r.timeout_min}m")
        for group in batches:
            res = group[0].resources
            params = executor_parameters(res, kind, sweep.name)
            shape = f"job array of {len(group)} runs" if len(group) > 1 else "job of 1 run"  # submitit's choice too
            echo(f"  {shape}: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
            if kind == "slurm":
                script = sbatch_preview(make_executor("slurm", sweep_dir / SUBMITIT_DIR, params), len(group))
                echo(script)
                if answer := preflight.ask_slurm(script):
                    echo(f"  {answer}")
                    record.setdefault("refused", []).extend([] if answer.accepted else [s.run_id for s in group])
        for warning in preflight.weights_warnings(specs):
            echo(warning)
        return record

    specs = prepare_runs(sweep, results, sweep_dir, [s for g in groups.values() for s in g], record, kind)
    by_id = {s.run_id: s for s in specs}
    from .worker import Worker

    jobs = []
    for group in batches:
        res = group[0].resources
        params = executor_parameters(res, kind, sweep.name)
        executor = make_executor(kind, sweep_dir / SUBMITIT_DIR, params)
        group = [by_id[s.run_id] for s in group]
        if kind == "local":
            submitted = _submit_local(executor, group, sweep_dir, res)
        else:
            with executor.batch():
                submitted = [(s, executor.submit(Worker(sweep_dir / s.run_id))) for s in group]
        for spec, job in submitted:
            record_job(record, spec.run_id, job.job_id, kind, job.paths.stdout, job.paths.stderr)
            echo(f"  {spec.run_id}  job {job.job_id}  logs {job.paths.stdout.with_suffix('')}.{{out,err}}")
            jobs.append((spec, job))
    atomic.write_json(sweep_dir / SWEEP_JSON, record)
    if kind == "debug":
        # The debug executor runs each job in this process when it is waited on. torchvision's Triton
        # segfaults when it loads after TensorFlow 2.21 but not before, so torch runs go first.
        jobs.sort(key=lambda spec_job: spec_job[0].train.framework != "torch")
    if wait if wait is not None else kind != "slurm":
        wait_for(jobs, sweep_dir, echo)
        record["finished"] = rundir.now()
        atomic.write_json(sweep_dir / SWEEP_JSON, record)
    return record


def _submit_local(executor, group: list[RunSpec], sweep_dir: Path, res: Resources):
    """Local processes share this machine's cores: keep at most cores/cpus_per_task running,
    the local counterpart of a Slurm array's parallelism limit."""
    from .worker import Worker

    limit = max(1, min(res.array_parallelism, (os.cpu_count() or 1) // (res.cpus_per_task * res.ntasks_per_node)))
    running, submitted = [], []
    for spec in group:
        while len(running) >= limit:
            running = [j for j in running if not j.done()]
            time.sleep(0.5)
        job = executor.submit(Worker(sweep_dir / spec.run_id))
        running.append(job)
        submitted.append((spec, job))
    return submitted


def wait_for(jobs, sweep_dir: Path, echo=print, poll_s: float = 2.0) -> None:
    from tqdm import tqdm

    pending = list(jobs)
    with tqdm(total=len(jobs), desc="runs", unit="run") as bar:
        while pending:
            still = []
            for spec, job in pending:
                if job.done():
                    status = rundir.read_result(sweep_dir / spec.run_id).get("status", "pending")
                    bar.update(1)
                    bar.write(f"  {spec.run_id}: {status}")
                else:
                    still.append((spec, job))
            pending = still
            if pending:
                time.sleep(poll_s)
