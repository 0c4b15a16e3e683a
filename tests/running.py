"""Helpers of the tests that run crackhpc as a real process and watch its run folders."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def crackhpc(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
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
