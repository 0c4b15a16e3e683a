"""What the engine submits: a job that keeps its folder's result.json true.

The training worker (crackhpc.worker.Worker) and the prediction shard (crackhpc.predict.shards.ShardJob)
share one lifecycle: running → completed | failed | cancelled, recorded with the same rules; and
one requeue protocol, submitit's Checkpointable: at a time limit or preemption submitit calls
`checkpoint`, which records the requeue and resubmits this same callable, whose next start resumes
from what its folder holds (the last finished epoch, the photos already mapped).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path

import submitit

from . import rundir
from .errors import DamagedFileError
from .states import RunState


class Stopped(Exception):
    """A stop request (crackhpc.rundir.request_stop) taken at an epoch boundary: the run ends as asked."""

    def __init__(self, request: dict):
        super().__init__(request.get("why", ""))
        self.state = RunState.parse(str(request.get("state", RunState.CANCELLED.value)))


class RecordedJob(submitit.helpers.Checkpointable):
    """A job whose folder records each attempt; `run` does the work."""

    def __init__(self, folder: str | Path):
        self.folder = str(folder)

    def __call__(self) -> dict:
        return self.run()

    def run(self) -> dict:
        raise NotImplementedError

    def checkpoint(self, *args, **kwargs):
        try:
            requeues = rundir.read_result(self.folder).get("requeues", 0)
        except DamagedFileError:
            requeues = 0
        rundir.update_result(self.folder, status=RunState.REQUEUED, requeues=requeues + 1)
        return super().checkpoint(*args, **kwargs)


def attempt(folder: str | Path, work: Callable[[], dict], log: Callable[[str], None], record: bool = True) -> dict:
    """`work()`, its end recorded in the folder's result.json (where `record`: rank 0 of a
    multi-task run): completed with its numbers, failed with the error and its traceback,
    cancelled at Ctrl-C, SIGTERM or `crackhpc cancel` (SIGINT), or as a stop request asks (Stopped):
    a stopped job did not fail."""
    # Compute nodes have no internet: huggingface_hub (timm's weights) reads its cache only, and
    # fails at once instead of retrying a network that is not there.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        out = work()
    except Stopped as stop:  # the job ends as asked, not failed: its last epoch and checkpoint stay
        if record:
            rundir.update_result(folder, status=stop.state, error=str(stop) or None, finished=rundir.now())
        log(f"stopped: {stop.state}" + (f" ({stop})" if str(stop) else ""))
        return {}
    except KeyboardInterrupt:
        if record:
            rundir.update_result(folder, status=RunState.CANCELLED, error="interrupted", finished=rundir.now())
        log("interrupted")
        raise
    except Exception as exc:
        if record:
            rundir.update_result(
                folder,
                status=RunState.FAILED,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
                finished=rundir.now(),
            )
        log(f"failed: {type(exc).__name__}: {exc}")
        raise
    if record:
        rundir.update_result(folder, status=RunState.COMPLETED, finished=rundir.now(), **out)
    return out
