"""Which data-parallel backend a run uses, and Horovod's import: framework-free, so the
launcher-side checks and both workers agree on the same rules.

    torch:  auto | ddp | horovod            keras:  auto | tf-distribute | horovod

`auto` trains in one process when the job has one task, else with the framework's own
backend (DDP, tf.distribute.MultiWorkerMirroredStrategy). A one-task job never builds a
process group for ddp or tf-distribute either: there is nothing to synchronise. Horovod is
honoured at any size, since under horovodrun/mpirun only hvd.init() knows the world.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util

from ..errors import CrackhpcError
from .distributed import DistEnv

SINGLE = "single"
_NATIVE = {"torch": "ddp", "keras": "tf-distribute"}
_HOROVOD_BUILD_FLAG = {"horovod.torch": "HOROVOD_WITH_PYTORCH=1", "horovod.tensorflow": "HOROVOD_WITH_TENSORFLOW=1"}


class BackendError(CrackhpcError):
    """The configured distributed backend cannot run here."""


def resolve(framework: str, backend: str, world_size: int) -> str:
    """'single', 'ddp', 'tf-distribute' or 'horovod'."""
    if backend == "horovod":
        return backend
    if world_size == 1:
        return SINGLE
    return _NATIVE[framework] if backend == "auto" else backend


def import_horovod(module: str):
    """`horovod.torch` or `horovod.tensorflow`, or a one-line BackendError saying how to get it."""
    flag = _HOROVOD_BUILD_FLAG[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if importlib.util.find_spec("horovod") is None:
            raise BackendError(
                f"backend horovod: horovod is not installed; install the extra with `pip install 'crackhpc[horovod]'` "
                f"({flag}) or load your cluster's Horovod module in resources.setup") from None
        # installed, but built without this framework (or against another version of it)
        raise BackendError(f"backend horovod: {module} does not import ({exc}); rebuild horovod with {flag}") from None


def init_horovod(module: str, env: DistEnv):
    """(hvd, env): Horovod started, and the ranks as Horovod numbers them (under horovodrun or
    mpirun they are the only numbering there is)."""
    hvd = import_horovod(module)
    hvd.init()
    return hvd, dataclasses.replace(env, rank=hvd.rank(), local_rank=hvd.local_rank(), world_size=hvd.size())
