"""crackhpc.procs: a process is known by its host, pid and start time, and local jobs stop all at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from crackhpc import procs

# exits 0 at SIGINT (KeyboardInterrupt caught); `ignore` makes it deaf to SIGINT, as a hung process
SLEEPER = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("up", flush=True)
try:
    time.sleep(600)
except KeyboardInterrupt:
    sys.exit(0)
"""


def sleeper(mode: str = "normal") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    return proc


def test_an_identity_tells_the_process_from_a_later_one_with_its_pid():
    proc = sleeper()
    try:
        ident = procs.identity(proc.pid)
        assert procs.alive(ident) is True and procs.pid_alive(proc.pid)
        assert procs.alive({**ident, "started": ident["started"] - 1}) is False  # the pid, given to another
        assert procs.alive({**ident, "host": "elsewhere"}) is None  # cannot be told from here
        ticks = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        assert procs.alive({"host": procs.HOST, "pid": proc.pid, "pid_start": ticks}) is True  # an older record
    finally:
        proc.kill()
        proc.wait()
    assert procs.alive(ident) is False and not procs.pid_alive(proc.pid)


def test_a_zombie_has_ended():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = procs.identity(proc.pid)
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)  # exited, not yet reaped by this process
    assert procs.alive(ident) is False
    proc.wait()


def test_processes_stop_together_and_one_deaf_to_sigint_is_killed():
    polite, deaf = sleeper(), sleeper("ignore")
    t0 = time.monotonic()
    stopped = procs.stop([procs.identity(polite.pid), procs.identity(deaf.pid), {}], timeout_s=1.0)
    assert stopped == [True, True, False] and time.monotonic() - t0 < 8
    assert polite.wait(timeout=5) == 0 and deaf.wait(timeout=5) == -9  # SIGINT obeyed; SIGKILL


def test_a_local_job_stops_by_its_worker_and_its_controller_ends_by_itself():
    """The worker stops at SIGINT; the controller, waiting on it, ends on its own (no SIGINT of its
    own, whose KeyboardInterrupt would print); a job with no worker yet is stopped by its controller."""
    controller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
            sys.executable,
            "-c",
            SLEEPER,
            "x",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert controller.stdout.readline() == "up\n"
    worker = next(p for p in __import__("psutil").Process(controller.pid).children())
    lone = sleeper()
    jobs = [
        (procs.identity(worker.pid), procs.identity(controller.pid)),
        (None, procs.identity(lone.pid)),
        (None, None),
    ]
    assert procs.stop_local_jobs(jobs, timeout_s=5.0) == [True, True, False]
    assert controller.wait(timeout=5) == 0 and lone.wait(timeout=5) == 0
