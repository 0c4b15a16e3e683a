"""Processes on this machine, identified so that a recycled pid is never mistaken for them.

The local executor's jobs are processes of the login node or workstation: their liveness is the
one thing a run folder cannot record. A process is (host, pid, start time): psutil's start time
changes when the kernel gives the pid to another process. This module is the one place that says
which host this is and whether a process still runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil

HOST = socket.gethostname()
# Start times compare to the kernel's clock tick; identities written before crackhpc used psutil
# hold the start in clock ticks since boot (`pid_start`), converted with the same tick.
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _start(pid: int) -> float | None:
    """The process's start time, or None if there is no such process (a zombie has ended too)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has this pid (it may be another process than the one meant)."""
    return _start(pid) is not None


def identity(pid: int | None = None) -> dict:
    pid = os.getpid() if pid is None else pid
    return {"host": HOST, "pid": pid, "started": _start(pid)}


def alive(ident: dict | None) -> bool | None:
    """True or False for a process of this host; None when it cannot be told from here (another
    host, or an identity without a start time)."""
    if not ident or ident.get("host") != HOST:
        return None
    started = ident.get("started")
    if started is None and str(ident.get("pid_start") or "").isdigit():
        started = psutil.boot_time() + int(ident["pid_start"]) * _TICK_S
    if started is None:
        return None
    now = _start(int(ident["pid"]))
    return now is not None and abs(now - started) < 2 * _TICK_S


def stop(idents: list[dict], timeout_s: float = 10.0) -> list[bool]:
    """SIGINT to each process (what submitit's LocalJob.cancel sends its controller, which then stops
    its tasks, and what a worker records as cancelled), all at once, then SIGKILL to those still
    there after `timeout_s`. For each: False if it had already gone."""
    running = [alive(ident) is True for ident in idents]
    for sig in (signal.SIGINT, signal.SIGKILL):
        left = [ident for ident, run in zip(idents, running) if run and alive(ident)]
        for ident in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ident["pid"]), sig)
        deadline = time.monotonic() + timeout_s
        while any(alive(ident) for ident in left) and time.monotonic() < deadline:
            time.sleep(0.1)
    return running


def stop_local_jobs(jobs: list[tuple[dict | None, dict | None]], timeout_s: float = 10.0) -> list[bool]:
    """Stop local executor jobs, each given as (worker, controller): the workers first (each records
    its run cancelled and exits, and submitit's controller then ends by itself, quietly), then the
    controllers that linger or whose worker never started. For each: False if neither was running."""
    workers = stop([worker or {} for worker, _ in jobs], timeout_s)
    deadline = time.monotonic() + timeout_s
    while any(w and alive(c) for w, (_, c) in zip(workers, jobs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    controllers = stop([controller or {} for _, controller in jobs], timeout_s)
    return [w or c for w, c in zip(workers, controllers)]
