"""Where each attempt of a run starts in its log files.

A requeued Slurm job keeps its job id, and both submitit and the plain sbatch scripts open the
job's log files in append mode: every start of the job (its first, and one per requeue) adds to
the same .out/.err. So the job script writes one start line to both files before anything else
runs, and the worker's first line in worker.log names the job and restart it belongs to; `crackhpc
logs` cuts the files at these lines. An attempt is one start of one job: (job id, restart count).
"""

from __future__ import annotations

import re

# A shell line, run by the batch script before the srun step (submitit's setup lines, the sbatch
# templates). An array task's job id is written as sweep.json records it: ARRAY_TASK.
START_SHELL = (
    "crackhpc_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}; "
    'crackhpc_start="crackhpc: start of job ${crackhpc_job:-$SLURM_JOB_ID}, restart ${SLURM_RESTART_COUNT:-0}, '
    'on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "$crackhpc_start"; echo "$crackhpc_start" >&2'
)
START_RE = re.compile(r"^crackhpc: start of job (?P<job>\S+), restart (?P<restart>\d+),", re.M)


def worker_start(run_id: str, job_id: str, restarts: int) -> str:
    """The part of the worker's first worker.log line of an attempt that names it."""
    return f"{run_id}: attempt of job {job_id or '-'}, restart {restarts}"


WORKER_START_RE = re.compile(r"^\S+ (?:\[rank \d+\] )?\S+: attempt of job (?P<job>\S+), restart (?P<restart>\d+)", re.M)
