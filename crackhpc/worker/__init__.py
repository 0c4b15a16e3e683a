"""The worker: trains one run folder. Same entry point under submitit and under plain sbatch/srun:

    python -m crackhpc.worker results/<sweep>/<run_id>

Frameworks are imported here lazily, so a Keras run never loads torch's worker and vice versa.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from .. import atomic, procs, rundir
from ..attempts import worker_start
from ..errors import CrackhpcError
from ..jobs import RecordedJob, attempt
from ..provenance import record_runtime
from ..states import RunState
from .distributed import DistEnv, from_environment


class UnreadableRun(CrackhpcError):
    """The run folder's config.yaml is missing or damaged: nothing to train."""


def _logger(run_dir: Path, env: DistEnv):
    prefix = f"[rank {env.rank}] " if env.world_size > 1 else ""

    def log(message: str) -> None:
        line = f"{rundir.now()} {prefix}{message}"
        print(line, flush=True)
        if env.is_main:
            with open(run_dir / rundir.LOG, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    return log


def run(run_dir: str | Path) -> dict:
    """Train the run in `run_dir`; result.json says completed (with metrics) or failed (with the error)."""
    run_dir = Path(run_dir).resolve()
    env = from_environment()
    # A `crackhpc sweep` started in the background (`nohup … &`) hands its workers an ignored SIGINT,
    # and SIGINT is how it and `crackhpc cancel` ask a local worker to stop and record the run cancelled.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        spec = rundir.read_config(run_dir)
    except (FileNotFoundError, CrackhpcError) as exc:
        if env.is_main and (run_dir / rundir.CONFIG).is_file():
            rundir.update_result(run_dir, status=RunState.FAILED, error=str(exc), finished=rundir.now())
        raise UnreadableRun(str(exc)) from None
    log = _logger(run_dir, env)
    if request := rundir.stop_requested(run_dir):  # e.g. cancelled while its job waited to start
        log(f"{spec.run_id}: not started: a stop request asks it to end {request.get('state')}")
        if env.is_main:
            rundir.update_result(run_dir, status=RunState.parse(str(request.get("state"))), finished=rundir.now())
        return {}
    if env.is_main:
        atomic.remove_stale(run_dir)  # a killed attempt's half-written checkpoint
        # Slurm's own count covers requeues that no Worker.checkpoint saw: a plain sbatch script's
        # USR2 trap, or an administrator's `scontrol requeue`.
        result = rundir.update_result(
            run_dir,
            run_id=spec.run_id,
            status=RunState.RUNNING,
            started=rundir.now(),
            job_id=env.job_id,
            world_size=env.world_size,
            error=None,
            process=procs.identity(),
        )
        if env.restarts > result.get("requeues", 0):
            rundir.update_result(run_dir, requeues=env.restarts)
    log(worker_start(spec.run_id, env.job_id, env.restarts))  # where `crackhpc logs --worker` cuts worker.log
    log(
        f"{spec.run_id}: {spec.train.framework} {spec.train.model}, {spec.train.epochs} epochs, world size {env.world_size}"
    )

    def train() -> dict:
        if env.is_main:  # in here: it imports the framework, which an interrupt may cut short
            record_runtime(run_dir, spec.train.framework, spec.train.backend)
        if spec.train.framework == "torch":
            from .torch_worker import train
        else:
            from .keras_worker import train
        return train(spec, run_dir, env, log)

    metrics = attempt(run_dir, train, log, record=env.is_main)
    if metrics:  # none when a stop request ended it
        log(f"completed: test acc {metrics['test_acc']:.4f}, test loss {metrics['test_loss']:.4f}")
    return metrics


class Worker(RecordedJob):
    """What the engine submits for a training run; a requeued one resumes from its last epoch."""

    def run(self) -> dict:
        return run(self.folder)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m crackhpc.worker RUN_FOLDER", file=sys.stderr)
        return 2
    try:
        run(args[0])
    except UnreadableRun as exc:  # bad input, as for every crackhpc command
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CrackhpcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc} (traceback in {Path(args[0]) / rundir.RESULT})", file=sys.stderr)
        return 1
    return 0
