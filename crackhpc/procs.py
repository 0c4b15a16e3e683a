"""Processes on this machine, identified so that a recycled pid is never mistaken for them.

The local executor's jobs are processes of the login node or workstation: their liveness is the
one thing a run folder cannot record. A process is (host, pid, start time): its start time, in
clock ticks since boot from /proc, changes when the kernel gives the pid to another process.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

HOST = socket.gethostname()


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (…) may hold spaces
    return None if fields[0] == "Z" else fields[19]  # a zombie has ended, whatever its parent does


def identity(pid: int | None = None) -> dict:
    pid = os.getpid() if pid is None else pid
    return {"host": HOST, "pid": pid, "pid_start": start_time(pid)}


def alive(ident: dict | None) -> bool | None:
    """True or False for a process of this host; None when it cannot be told from here (another
    host, or an identity without a start time)."""
    if not ident or ident.get("host") != HOST or not ident.get("pid_start"):
        return None
    return start_time(int(ident["pid"])) == ident["pid_start"]


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
