"""Helpers of the tests that run crackhpc as a real process and watch its run folders."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


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
