"""Which data-parallel backend a run uses, and Horovod's import: framework-free, so the
launcher-side checks and both workers agree on the same rules.

    torch:  auto | ddp | horovod            keras:  auto | tf-distribute | horovod

`auto` trains in one process when the job has one task, else with the framework's own
backend (DDP, tf.distribute.MultiWorkerMirroredStrategy). A one-task job never builds a
process group for ddp or tf-distribute either: there is nothing to synchronise. Horovod is
honoured at any size, since under horovodrun/mpirun only hvd.init() knows the world.

Tasks that srun (or submitit) starts have no horovodrun to wire them up: a Horovod built with
Gloo and without MPI meets at a rendezvous that rank 0 serves, as horovodrun would (start_gloo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import re
import socket
import threading
import time

from ..errors import CrackhpcError
from . import distributed
from .distributed import DistEnv

SINGLE = "single"
_NATIVE = {"torch": "ddp", "keras": "tf-distribute"}
_HOROVOD_BUILD_FLAG = {"horovod.torch": "HOROVOD_WITH_PYTORCH=1", "horovod.tensorflow": "HOROVOD_WITH_TENSORFLOW=1"}
# Bounds on Horovod's waits, so that a job which lost a rank ends failed instead of hanging:
# Gloo's connect/collective timeout (Horovod's default is 30 s; a rank that stopped answering
# fails the next collective after it), and the stall inspector, which by default only warns
# about a rank whose Python stopped submitting tensors and never shuts down. Horovod's background
# thread keeps the ranks' Gloo traffic going while Python is busy elsewhere (feature cache,
# checkpoints), so neither limit fires on a slow rank that is still alive; the stall limit is
# long all the same. Set in the job's environment, the site's values win.
HOROVOD_TIMEOUTS = {
    "HOROVOD_GLOO_TIMEOUT_SECONDS": "60",
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
}


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
            # pip's isolated build cannot see TensorFlow, so no plain `pip install horovod` builds it.
            raise BackendError(
                f"backend horovod: horovod is not installed; build it with tests/horovod/build.sh (a venv with "
                f"TensorFlow 2.15.1 and horovod 0.28.1, {flag}; see README, Horovod) or load your cluster's "
                f"Horovod module in resources.setup"
            ) from None
        # installed, but built without this framework (or against another version of it)
        raise BackendError(f"backend horovod: {module} does not import ({exc}); rebuild horovod with {flag}") from None


def init_horovod(module: str, env: DistEnv):
    """(hvd, env): Horovod started, and the ranks as Horovod numbers them (under horovodrun or
    mpirun they are the only numbering there is)."""
    hvd = import_horovod(module)
    for key, value in HOROVOD_TIMEOUTS.items():
        os.environ.setdefault(key, value)
    if _wires_gloo_itself(hvd, env):
        start_gloo(env)
    hvd.init()
    return hvd, dataclasses.replace(env, rank=hvd.rank(), local_rank=hvd.local_rank(), world_size=hvd.size())


@contextlib.contextmanager
def rank_failures(backend: str):
    """A collective that fails because a rank died (or the backend's timeouts gave up on it) raises
    the framework's error (TensorFlow's UnknownError, with graph node names over several lines;
    torch's DistBackendError or HorovodInternalError, with Gloo's advice): turned into one line
    saying what happened."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        gloo = re.search(r"gloo/transport/[^\]]*\] ([^\n]+)", text)  # Gloo's own message follows its source line
        if gloo:
            first = re.split(r"\.(?: |$)", gloo.group(1).strip())[0]  # torch appends "This is typically caused..."
            what = f"lost contact with another rank (Gloo: {first})"
        elif "Horovod has been shut down" in text:
            what = "Horovod shut down during the run"
        else:
            raise
        raise BackendError(
            f"backend {backend}: {what}: another rank ended, failed or stopped answering (killed, "
            "out of memory, node lost?); its own error, if any, is in the job's log"
        ) from exc


def _wires_gloo_itself(hvd, env: DistEnv) -> bool:
    """A multi-task job that horovodrun did not start (it sets HOROVOD_RANK), e.g. an srun step or
    submitit's tasks: Horovod built without MPI (or told HOROVOD_CONTROLLER=gloo) has no world to
    join until the tasks meet at a Gloo rendezvous. An MPI build joins srun's PMI world by itself."""
    if env.world_size == 1 or "HOROVOD_RANK" in os.environ:
        return False
    return os.environ.get("HOROVOD_CONTROLLER") == "gloo" or not hvd.mpi_built()


def _slot(env: DistEnv, rank: int) -> tuple[str, int, int, int, int]:
    """(host, local rank, local size, cross rank, cross size) of `rank`, as horovodrun numbers
    them: local ranks count the tasks on one host, cross ranks the hosts holding the same local rank."""
    hosts = [env.host_of(r) for r in range(env.world_size)]
    host = hosts[rank]
    local_rank = hosts[:rank].count(host)
    cross = [r for r in range(env.world_size) if hosts[:r].count(hosts[r]) == local_rank]
    return host, local_rank, hosts.count(host), cross.index(rank), len(cross)


def gloo_env(env: DistEnv) -> dict[str, str]:
    """What horovodrun's Gloo launcher (horovod/runner/gloo_run.py) gives each rank, from the
    job's own ranks and hosts; the rendezvous is at master_addr:master_port, served by rank 0."""
    host, local_rank, local_size, cross_rank, cross_size = _slot(env, env.rank)
    return {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": env.master_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(env.master_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": host,
        "HOROVOD_RANK": str(env.rank),
        "HOROVOD_SIZE": str(env.world_size),
        "HOROVOD_LOCAL_RANK": str(local_rank),
        "HOROVOD_LOCAL_SIZE": str(local_size),
        "HOROVOD_CROSS_RANK": str(cross_rank),
        "HOROVOD_CROSS_SIZE": str(cross_size),
    }


def start_gloo(env: DistEnv) -> None:
    """Export this rank's Gloo variables; rank 0 serves the rendezvous (horovodrun's server, on
    the job's port instead of a random one, so every rank knows it without asking), the other
    ranks wait until it answers: Horovod's own client gives up after three tries in 1.5 s."""
    os.environ.update(gloo_env(env))
    if env.is_main:
        _serve_rendezvous(env)
    else:
        _wait_for_rendezvous(env, int(os.environ["HOROVOD_GLOO_TIMEOUT_SECONDS"]))


def _serve_rendezvous(env: DistEnv) -> None:
    from horovod.runner.common.util.hosts import SlotInfo
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    try:
        server = RendezvousHTTPServer(("", env.master_port), RendezvousHandler, False)
    except OSError as exc:
        raise BackendError(
            f"backend horovod: rank 0 cannot serve the Gloo rendezvous on port {env.master_port} "
            f"({exc.strerror}); resubmit the job (the port follows the job id)"
        ) from None
    slots = []
    for rank in range(env.world_size):
        host, local_rank, local_size, cross_rank, cross_size = _slot(env, rank)
        slots.append(SlotInfo(host, rank, local_rank, cross_rank, env.world_size, local_size, cross_size))
    server.init(slots)  # the scope sizes, by which the server knows when a rendezvous is complete
    threading.Thread(target=server.serve_forever, name="gloo-rendezvous", daemon=True).start()


def _wait_for_rendezvous(env: DistEnv, timeout_s: int) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((env.master_addr, env.master_port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BackendError(
                    f"backend horovod: rank 0's Gloo rendezvous at {env.master_addr}:{env.master_port} "
                    f"did not answer in {timeout_s} s (HOROVOD_GLOO_TIMEOUT_SECONDS); "
                    "see rank 0's log"
                ) from None
            time.sleep(0.2)


def unmet(backend: str, env: DistEnv, port: int, why: str) -> BackendError:
    """The one line of ranks that did not meet within the rendezvous timeout, from either side."""
    who = "rank 0 waited for the other ranks" if env.is_main else f"rank {env.rank} did not meet rank 0"
    return BackendError(
        f"backend {backend}: {who} at {env.master_addr}:{port} for {distributed.rendezvous_timeout_s():g} s "
        f"({distributed.RENDEZVOUS_TIMEOUT_ENV}): {why}; check that the job's nodes reach each other "
        "by their Slurm hostnames"
    )


def meet(backend: str, env: DistEnv, port: int) -> None:
    """Every rank of the job at rank 0 before a backend whose own start waits without end
    (tf.distribute's cluster registration): rank 0 listens on `port` and, once each other rank has
    connected, lets them all go on; a rank missing after the rendezvous timeout fails the run on
    every side in one line, instead of the job hanging until its time limit."""
    deadline = time.monotonic() + distributed.rendezvous_timeout_s()
    if env.is_main:
        _gather_ranks(backend, env, port, deadline)
        return
    while True:
        try:
            conn = socket.create_connection((env.master_addr, port), timeout=2)
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
        else:
            with conn:
                try:
                    conn.sendall(f"{env.rank}\n".encode())
                    conn.settimeout(max(0.1, deadline - time.monotonic()))
                    if conn.recv(2) == b"go":
                        return
                    why = "rank 0 gave up waiting for another rank"
                except OSError:
                    why = "rank 0 was still waiting for another rank"
        if time.monotonic() > deadline:
            raise unmet(backend, env, port, why) from None
        time.sleep(0.2)


def _gather_ranks(backend: str, env: DistEnv, port: int, deadline: float) -> None:
    try:
        server = socket.create_server(("", port))
    except OSError as exc:
        raise BackendError(
            f"backend {backend}: rank 0 cannot listen on port {port} ({exc.strerror}); resubmit the job "
            "(the port follows the job id)"
        ) from None
    joined: dict[int, socket.socket] = {}
    try:
        with server:
            while len(joined) < env.world_size - 1:
                if time.monotonic() >= deadline:
                    raise unmet(backend, env, port, f"{len(joined) + 1}/{env.world_size} ranks joined")
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn, _ = server.accept()
                except OSError:  # the timeout
                    continue
                try:
                    conn.settimeout(5)
                    rank = int(conn.recv(16).decode().strip())
                except (OSError, ValueError):  # not one of the job's ranks
                    conn.close()
                    continue
                if rank in joined:  # the rank connected again after a lost connection
                    joined[rank].close()
                joined[rank] = conn
            for conn in joined.values():
                conn.sendall(b"go")
    finally:
        for conn in joined.values():
            conn.close()
