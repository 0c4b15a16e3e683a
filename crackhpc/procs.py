"""Processes on this machine, identified so that a recycled pid is never mistaken for them.

The local executor's jobs are processes of the login node or workstation: their liveness is the
one thing a run folder cannot record. A process is (host, pid, start time): psutil's start time
changes when the kernel gives the pid to another process. This module is the one place that says
which host this is and whether a process still runs.
"""

from __future__ import annotations

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


def stop(ident: dict, timeout_s: float = 10.0) -> bool:
    """SIGINT (what submitit's LocalJob.cancel sends its controller, which then stops its tasks),
    SIGKILL if it is still there after `timeout_s`. False if the process had already gone."""
    if not alive(ident):
        return False
    pid = int(ident["pid"])
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while alive(ident) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(ident):
            return True
    return True


def stop_local_job(worker: dict | None, controller: dict | None, timeout_s: float = 10.0) -> bool:
    """Stop a local executor's job: its worker first (it records the run cancelled and exits, and
    submitit's controller then ends by itself, quietly), the controller only if it lingers or its
    worker never started. False if neither was running."""
    stopped = worker is not None and stop(worker, timeout_s)
    deadline = time.monotonic() + timeout_s
    while stopped and alive(controller) and time.monotonic() < deadline:
        time.sleep(0.1)
    return (controller is not None and stop(controller, timeout_s)) or stopped
