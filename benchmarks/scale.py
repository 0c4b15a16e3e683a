"""Sweeps of 100, 1,000 and 10,000 held runs on the local Slurm: `crackhpc sweep --dry-run`, the
submission, `status`, `report --no-figures` and `cancel`, each timed as the command a user types,
with its peak resident memory.

    python -m benchmarks.scale [--runs 100 1000 10000] [--out benchmarks/results/scale.md]

Slurm is the test cluster of tests/slurm/start.sh, run for the benchmark with a configuration of
its own: MaxArraySize=1001 (Slurm's default, what most clusters keep; the tests' cluster has 5) and
MaxJobCount=50000 (the default 10,000 would refuse a 10,000-run sweep beside anything else queued).
The script takes the lock the Slurm tests take (/tmp/crackhpc-slurm-tests.lock), restarts slurmctld
with that configuration, and whatever happens restores the tests' own (tests/slurm/start.sh, which
rewrites /etc/slurm/slurm.conf from its template and restarts the daemons) before it lets go.

The runs are real crackhpc runs of one sweep file (a grid of seeds), submitted through
`crackhpc sweep` (the engine, submitit's job arrays); each job waits with `--begin=now+7days`
(reason BeginTime), so nothing trains, and `cancel` ends them all. Each command runs in a process
of its own; its peak RSS is what wait4 reports for it (ru_maxrss).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from crackhpc import atomic

from .report import markdown

LOCK = "/tmp/crackhpc-slurm-tests.lock"
CONF = Path("/etc/slurm/slurm.conf")
START = Path(__file__).resolve().parent.parent / "tests" / "slurm" / "start.sh"
PIDFILE = Path(os.environ.get("CRACKHPC_SLURM_DIR", "/tmp/crackhpc-slurm")) / "run" / "slurmctld.pid"
BENCH_CONF = {"MaxArraySize": "1001", "MaxJobCount": "50000"}
TARGETS = {"dry run": 5, "submit": 10, "status": 5, "report tables": 10, "cancel": 15}  # seconds at 10,000 runs
RSS_TARGET_MB = 1024


@contextmanager
def slurm_lock() -> Iterator[None]:
    with open(LOCK, "w") as fh:
        print(f"waiting for {LOCK} ...", file=sys.stderr)
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _wait(predicate, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.5)


def _ctld_up() -> bool:
    out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "UP" in out.stdout


def _restart_slurmctld() -> None:
    pid = int(PIDFILE.read_text())
    os.kill(pid, 15)
    _wait(lambda: not Path(f"/proc/{pid}").exists(), "slurmctld to stop")
    subprocess.run(["slurmctld"], check=True, stdin=subprocess.DEVNULL)
    _wait(_ctld_up, "slurmctld to answer")
    _wait(_node_up, "the node to be up again")


def _node_up() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return bool(out) and all(state.rstrip("*") in ("idle", "mixed", "allocated", "completing") for state in out)


@contextmanager
def benchmark_slurm() -> Iterator[None]:
    """The test cluster with BENCH_CONF, restored to the tests' configuration afterwards."""
    original = CONF.read_text()
    text = original
    for key, value in BENCH_CONF.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        text += "" if n else f"{key}={value}\n"
    CONF.write_text(text)
    try:
        _restart_slurmctld()
        yield
    finally:
        CONF.write_text(original + "# (being restored)\n")  # differs from the template: start.sh restarts all
        subprocess.run(["bash", str(START)], check=True, capture_output=True)
        assert CONF.read_text() == original


def measured(args: list[str], out_path: Path, profile: Path | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of `crackhpc ARGS`, its output in `out_path`;
    `profile`: under cProfile, its statistics written there (slower: for finding what is slow)."""
    python = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
    with open(out_path, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*python, "-m", "crackhpc.cli", *args], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def sweep_file(folder: Path, n: int) -> Path:
    sweep = {
        "name": f"scale-{n}",
        "executor": "slurm",
        "data": {"synthetic": {"n": 40, "size": 32}, "split": [0.5, 0.25, 0.25]},
        "defaults": {"pretrained": False, "epochs": 1, "batch_size": 8, "input_size": 32},
        "grid": {"seed": list(range(n))},
        "resources": {
            "gpus_per_node": 0,
            "cpus_per_task": 1,
            "mem_gb": 0.1,
            "timeout_min": 10,
            "sbatch": {"begin": "now+7days"},
        },
    }
    path = folder / f"scale-{n}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def one_size(n: int, tmp: Path, profiles: Path | None = None) -> list[tuple[str, float, float]]:
    """(command, seconds, peak RSS MiB) of each step on a sweep of `n` runs, each step's output checked."""
    path, results = sweep_file(tmp, n), tmp / "results"
    sweep_dir = results / f"scale-{n}"
    limit = ["--max-runs", str(n), "--results", str(results)]
    steps = [
        ("dry run", ["sweep", str(path), "--dry-run", *limit], f"{n} runs, {n} to submit"),
        ("submit", ["sweep", str(path), *limit], f"{n} runs, {n} to submit"),
        ("status", ["status", str(sweep_dir)], None),
        ("report tables", ["report", str(sweep_dir), "--no-figures"], "written: "),
        ("cancel", ["cancel", str(sweep_dir)], f"{n} run(s) cancelled"),
    ]
    rows = []
    for name, args, expect in steps:
        log = tmp / f"{n}-{name.replace(' ', '-')}.log"
        profile = profiles / f"{n}-{name.replace(' ', '-')}.prof" if profiles else None
        wall, rss, code = measured(args, log, profile)
        text = log.read_text()
        if code != 0 or (expect and expect not in text):
            raise RuntimeError(f"crackhpc {' '.join(args)}: exit {code}, expected {expect!r}:\n{text[-2000:]}")
        if name == "status" and text.count(" pending ") != n:
            raise RuntimeError(f"status: {text.count(' pending ')} of {n} runs pending:\n{text[-2000:]}")
        rows.append((name, wall, rss))
        print(f"  {n:>6} runs  {name:<14} {wall:7.2f} s  {rss:7.0f} MiB", file=sys.stderr)
    queue = subprocess.run(["squeue", "-h", "-n", f"crackhpc-scale-{n}"], capture_output=True, text=True).stdout
    if queue.strip():
        raise RuntimeError(f"after cancel, still queued:\n{queue[:2000]}")
    return rows


def table(sizes: list[int], measured_rows: dict[int, list[tuple[str, float, float]]]) -> str:
    header = ["command"]
    for n in sizes:
        header += [f"{n:,} runs s", f"{n:,} runs MiB"]
    if len(sizes) > 1:
        header.append(f"x time {sizes[0]:,} → {sizes[-1]:,} (runs x{sizes[-1] // sizes[0]:,})")
    header.append(f"target at {sizes[-1]:,}")
    rows = []
    for k, name in enumerate(TARGETS):
        row: list = [name]
        for n in sizes:
            _, wall, rss = measured_rows[n][k]
            row += [round(wall, 2), round(rss)]
        if len(sizes) > 1:
            row.append(f"{measured_rows[sizes[-1]][k][1] / measured_rows[sizes[0]][k][1]:.1f}")
        row.append(f"< {TARGETS[name]} s, < {RSS_TARGET_MB} MiB")
        rows.append(row)
    return markdown(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.md"))
    parser.add_argument("--profile", type=Path, metavar="DIR", help="run each command under cProfile, stats in DIR")
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where the sweep folders go (default: the system's temp)"
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows = {}
    with slurm_lock(), benchmark_slurm(), tempfile.TemporaryDirectory(prefix="crackhpc-scale-", dir=args.tmp) as tmp:
        for n in args.runs:
            rows[n] = one_size(n, Path(tmp), args.profile)
    text = table(args.runs, rows)
    print(text)
    atomic.write_text(
        args.out,
        "# Sweeps of 100 to 10,000 held runs on the local Slurm (`python -m benchmarks.scale`)\n\n"
        f"{os.cpu_count()} cores; seconds of wall time and peak RSS (MiB) of each command, one process each.\n\n"
        + text
        + "\n",
    )


if __name__ == "__main__":
    main()
