"""`crackhpc report --mlflow` on the 1,000 completed run folders of benchmarks/report_scale: the first
import into a new SQLite store, then the same command again with nothing changed (every run found
by its tag and left alone). Target: the import of 1,000 runs in under 60 s.

    python -m benchmarks.mlflow_import                 # 1,000 runs, writes benchmarks/results/mlflow_import.md
    python -m benchmarks.mlflow_import --runs 50 --out /tmp/mi.md
    python -m benchmarks.mlflow_import --store /dev/shm/mi --append   # the store in memory: no fsync cost

Each command runs in a fresh process, imports included (`python -c`, as `crackhpc report`), with
--no-figures, so that the import's own share is the difference to the report alone (the first
case). The store is deleted before the first import. SQLite commits each MLflow call (5 a new run)
with an fsync, so on a busy or slow disk the wall time follows the disk: --store puts the store
elsewhere (on tmpfs, the import's own cost).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import sys
import time
from pathlib import Path

from crackhpc.mlflow_import import ARTIFACTS, DB, LOCK

from .report_scale import HERE, REPORT, clean, make_sweep, publish, timed

BASE = ["--no-figures", "--format", "csv"]


def _disk(folder: Path) -> str:
    """The file system the store is on, and how long a SQLite commit (its fsync) takes there now."""
    import sqlite3

    path = folder / ".commit-probe.db"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("create table t (a)")
    t0 = time.perf_counter()
    for k in range(50):
        db.execute("insert into t values (?)", (k,))
        db.commit()
    ms = (time.perf_counter() - t0) / 50 * 1000
    db.close()
    path.unlink()
    fs = next((line.split()[2] for line in open("/proc/mounts") if line.split()[1] == _mount(folder)), "?")
    return f"{fs}, {ms:.1f} ms a SQLite commit when measured"


def _mount(folder: Path) -> str:
    while not os.path.ismount(folder):
        folder = folder.parent
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=HERE / "results" / ".cache" / "report_scale")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "mlflow_import.md")
    parser.add_argument("--store", type=Path, help="folder for mlflow.db and its artifacts (default: beside the runs)")
    parser.add_argument("--append", action="store_true", help="add this table to --out instead of replacing it")
    args = parser.parse_args(argv)

    work = args.work / str(args.runs)
    sweep_dir = work / "scale"
    t0 = time.perf_counter()
    if not (sweep_dir / "sweep.json").is_file():
        make_sweep(work, args.runs)
    made = time.perf_counter() - t0
    clean(sweep_dir)
    store = (args.store or work).resolve()
    store.mkdir(parents=True, exist_ok=True)
    for path in (store / DB, store / f"{DB}-journal", store / f"{DB}.lock", store / ARTIFACTS, sweep_dir / LOCK):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    uri = f"sqlite:///{store / DB}"
    ours = str(Path(__file__).resolve().parents[1])
    cases = [
        ("`crackhpc report DIR --no-figures` (no import)", BASE),
        ("`... --mlflow sqlite:///…/mlflow.db`, a new store: every run created", [*BASE, "--mlflow", uri]),
        ("the same again, nothing changed: every run found and left alone", [*BASE, "--mlflow", uri]),
    ]
    rows = []
    for label, extra in cases:
        wall, cpu = timed(REPORT, [str(sweep_dir), *extra], ours)
        rows.append((label, wall, cpu))
        print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    report_wall = rows[0][1]
    table = ["| command | wall s | CPU s | import's share (wall s) |", "|---|---|---|---|"]
    table += [
        f"| {label} | {wall:.2f} | {cpu:.2f} | {'-' if k == 0 else f'{wall - report_wall:.2f}'} |"
        for k, (label, wall, cpu) in enumerate(rows)
    ]
    load = os.getloadavg()[0]
    text = (
        "\n".join(
            [
                f"{'#' * (2 if args.append else 1)} `crackhpc report --mlflow` on {args.runs:,} completed run folders",
                "",
                f"`python -m benchmarks.mlflow_import {' '.join(argv if argv is not None else sys.argv[1:])}` on "
                f"{os.cpu_count()} CPUs, {_dt.date.today()}, 1-minute load average {load:.1f} at the end. The run "
                f"folders of benchmarks/report_scale (10 epochs each: 60 metric values per run, 12 final numbers, "
                f"35 params, config.yaml as an artifact), made in {made:.0f} s (reused when already there). Each "
                f"command in a fresh process, imports included. The store: {uri} ({_disk(store)}). Target: the "
                f"import of 1,000 runs in under 60 s.",
                "",
                *table,
            ]
        )
        + "\n"
    )
    publish(args.out, text, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
