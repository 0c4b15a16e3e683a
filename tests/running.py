"""Helpers of the tests that run crackhpc as a real process and watch its run folders."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil


def in_foreground():
    """A Popen preexec_fn: the command starts as at a terminal, with SIGINT (Ctrl-C) at its default,
    also where the tests were started in the background (`pytest … &`), which hands its children an
    ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def crackhpc(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **{"preexec_fn": in_foreground, **kw},
    )


def wait_until(predicate, timeout: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# How long the processes under a stepped command run between two looks (see stepped_until).
SLICE_S = 0.02


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def send(processes: Iterable[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def _stop_trees(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and every process under them, stopped: parents first, then the
    children they had started, until no new one appears."""
    stopped: dict[int, psutil.Process] = {}
    while new := [p for pid in pids for p in _tree(pid) if p.pid not in stopped]:
        send(new, signal.SIGSTOP)
        stopped.update((p.pid, p) for p in new)
    return list(stopped.values())


def stepped_until(command: subprocess.Popen | list[int], predicate: Callable, what: str, timeout: float = 300.0):
    """Runs `command` (a process, or process ids) and every process under it (local jobs, their
    workers) in slices of SLICE_S, all of them stopped (SIGSTOP) between two slices, until
    `predicate()` holds: returns its value and the processes, still stopped (`send(processes,
    signal.SIGCONT)` lets them go on). A test that must catch a run mid-training does not race the
    clock this way: a tiny run trains its 40 epochs in 0.2 s, which a poll of a loaded machine can
    miss, while between two slices nothing moves."""
    pids = command if isinstance(command, list) else [command.pid]
    deadline = time.monotonic() + timeout
    while True:
        processes = _stop_trees(pids)
        if value := predicate():
            return value, processes
        send(processes, signal.SIGCONT)
        if isinstance(command, subprocess.Popen) and command.poll() is not None:
            _, err = command.communicate()
            raise AssertionError(f"{what}: the command ended first (exit {command.returncode}): {(err or '')[-3000:]}")
        if not processes:
            raise AssertionError(f"{what}: processes {pids} ended first")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(SLICE_S)


def _result(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def held_after_an_epoch(*run_dirs: Path, timeout: float = 180.0) -> tuple[list[dict], list[psutil.Process]]:
    """The runs' result.json once each worker (a Slurm job's, on this machine) has finished an
    epoch, and the workers' processes, stopped there. Each worker is stopped when it starts
    (result.json names its process seconds before its first epoch ends), then all are stepped
    together (stepped_until) until each has done an epoch."""
    pids = []
    for run_dir in run_dirs:
        started = wait_until(
            lambda d=run_dir: _result(d).get("status") == "running" and _result(d).get("process"),
            timeout,
            f"{run_dir.name}'s worker",
        )
        os.kill(started["pid"], signal.SIGSTOP)
        pids.append(started["pid"])

    def each_done_an_epoch() -> list[dict] | None:
        results = [_result(run_dir) for run_dir in run_dirs]
        return results if all(r.get("epochs_done") for r in results) else None

    return stepped_until(pids, each_done_an_epoch, "an epoch of each run", timeout)


def resumed_once_signalled(results: list[dict], processes: list[psutil.Process]) -> None:
    """Lets held workers (held_after_an_epoch) go on once a signal sent to each is pending, or has
    ended it, or Slurm, which sends SIGCONT before it ends a job, has let it go on: a signal sent
    to a run held mid-training reaches it before the run can end."""

    def signalled(pid: int) -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
        return bool(pending) or not fields["State"].strip().startswith("T")

    try:
        wait_until(
            lambda: all(signalled(r["process"]["pid"]) for r in results), 60, "the signals to reach the held workers"
        )
    finally:
        send(processes, signal.SIGCONT)


def training(sweep_dir: Path) -> dict | None:
    """The result.json of a run that has finished an epoch, with its worker's process."""
    for path in sweep_dir.glob("*/result.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("status") == "running" and result.get("epochs_done") and result.get("process"):
            return {**result, "run_dir": path.parent}
    return None


def stopped_after_an_epoch(run_dir: Path, train) -> int:
    """A run trained in this process (`train(run_dir)`: the worker) and ended at an epoch's end, as
    a requeue ends an attempt: by a stop request, which is then withdrawn for the next attempt.
    Returns the epochs done."""
    import threading

    from crackhpc import rundir
    from crackhpc.states import RunState

    def stop_after_an_epoch():
        wait_until(lambda: rundir.read_result(run_dir).get("epochs_done"), what="an epoch")
        rundir.request_stop(run_dir, RunState.CANCELLED, "a test's requeue")

    stopper = threading.Thread(target=stop_after_an_epoch, daemon=True)
    stopper.start()
    train(run_dir)
    stopper.join()
    (run_dir / rundir.STOP).unlink()
    return rundir.read_result(run_dir)["epochs_done"]


def set_epochs(run_dir: Path, epochs: int) -> None:
    """The run's config.yaml asking for `epochs`."""
    import yaml

    from crackhpc import rundir

    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    config["train"]["epochs"] = epochs
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
