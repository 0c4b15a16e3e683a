"""What a Slurm job used against what it asked for, from its accounting: right-sizing.

sacct reports sizes as `1219876K`, `4000M`, `1.50G` (ReqMem of old Slurm adds `n` per node or `c`
per CPU) and times as `[D-]HH:MM:SS[.mmm]` or `MM:SS.mmm`; these become MB and seconds here, and a
job whose request is far off gets a one-line hint in the words of the sweep file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SIZE = re.compile(r"^(?P<n>[\d.]+)(?P<unit>[KMGTP]?)(?P<per>[nc]?)$")
_MB = {"": 1 / 1024**2, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


def size_mb(text: str, cpus: int = 1) -> float | None:
    match = _SIZE.match(text.strip())
    if not match:
        return None
    mb = float(match["n"]) * _MB[match["unit"]]
    return mb * cpus if match["per"] == "c" else mb


def seconds(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("UNLIMITED", "Partition_Limit", "INVALID"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


@dataclass(frozen=True)
class Usage:
    elapsed_s: float | None = None
    limit_s: float | None = None
    cpus: int | None = None
    cpu_s: float | None = None
    req_mem_mb: float | None = None
    peak_mem_mb: float | None = None  # the largest MaxRSS of the job's steps (sampled by Slurm)
    gpus: int = 0

    @property
    def cpu_efficiency(self) -> float | None:
        if not (self.cpu_s is not None and self.elapsed_s and self.cpus):
            return None
        return self.cpu_s / (self.elapsed_s * self.cpus)

    def columns(self) -> dict[str, str]:
        """The `status --resources` cells: used against requested."""

        def gb(mb):
            return "-" if mb is None else f"{mb / 1024:.2g}G"

        def clock(s):
            return "-" if s is None else f"{int(s) // 3600:d}:{int(s) // 60 % 60:02d}:{int(s) % 60:02d}"

        eff = self.cpu_efficiency
        return {
            "mem peak/req": f"{gb(self.peak_mem_mb)}/{gb(self.req_mem_mb)}",
            "cpu eff": "-" if eff is None else f"{eff:.0%} of {self.cpus}",
            "time used/limit": f"{clock(self.elapsed_s)}/{clock(self.limit_s)}",
            "gpus": str(self.gpus),
        }

    def hints(self) -> list[str]:
        """Where the request is far off what the job used, what to ask for instead (with margin)."""
        out = []
        if self.peak_mem_mb and self.req_mem_mb and self.peak_mem_mb < self.req_mem_mb / 4:
            want = max(1, math.ceil(self.peak_mem_mb * 1.5 / 1024))
            out.append(
                f"requested {self.req_mem_mb / 1024:.3g} GB, peak {self.peak_mem_mb / 1024:.2g} GB: mem_gb: {want} would do"
            )
        eff = self.cpu_efficiency
        if eff is not None and self.cpus and self.cpus > 1 and eff < 0.25 and self.elapsed_s and self.elapsed_s > 60:
            want = max(1, math.ceil(eff * self.cpus * 1.5))
            out.append(
                f"requested {self.cpus} CPUs, used {eff * self.cpus:.2g} on average: cpus_per_task: {want} would do"
            )
        if self.elapsed_s and self.limit_s and self.elapsed_s < self.limit_s / 5 and self.limit_s > 1800:
            want = max(10, math.ceil(self.elapsed_s * 2 / 60 / 10) * 10)
            out.append(
                f"time limit {self.limit_s / 60:.0f} min, ran {self.elapsed_s / 60:.2g} min: timeout_min: {want} would do"
            )
        return out
