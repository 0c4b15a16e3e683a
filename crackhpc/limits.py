"""Limits of the Slurm cluster that shape a submission: a job array may not have more tasks than
MaxArraySize (its indices run 0..MaxArraySize-1), so a job shape with more runs goes out as
several arrays."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Sequence, TypeVar

T = TypeVar("T")


def slurm_config(key: str) -> str | None:
    """One value of `scontrol show config` (None without Slurm, or where it is not set)."""
    if not shutil.which("scontrol"):
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(rf"^{re.escape(key)}\s*=\s*(\S+)", out.stdout, re.M)
    return match[1] if match else None


def max_array_size() -> int | None:
    value = slurm_config("MaxArraySize")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def arrays(groups: Sequence[list[T]], limit: int | None) -> list[list[T]]:
    """Each group cut into arrays of at most `limit` runs (no limit: as they are)."""
    if not limit:
        return [list(g) for g in groups]
    return [list(g[i:i + limit]) for g in groups for i in range(0, len(g), limit)]
