"""What a benchmark phase cost: wall and CPU time, and the peak resident memory of this process.

CPU seconds (this process's threads plus its finished child processes, e.g. the image-cache
decoders) barely change when other jobs share the machine; wall seconds do, so both are kept.

ru_maxrss only ever rises over the life of the process, so when the naive and the crackhpc
pipelines run one after the other in the same process it cannot tell their peaks apart; a
sampler thread reading VmRSS, restarted for each phase, can.
"""

from __future__ import annotations

import os
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """`with Clock() as c: ...` then c.wall_s and c.cpu_s."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self._wall, cpu_s() - self._cpu


class PeakRSS:
    """`with PeakRSS() as mem: ...` then mem.peak_mb (MiB, this process only, not its children)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakRSS:
        self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
