"""`crackhpc status` on a 1,000-run sweep: the target is under 2 s, with one sacct call (and at most
one squeue call) for the whole sweep however many runs it has.

    python -m benchmarks.status_scale [--runs 1000] [--out benchmarks/results/status_scale.md]

Makes a sweep folder of completed-looking runs (config.yaml, result.json, metrics.csv) and times
`crackhpc status` (collect and table) twice: with the runs recorded as local jobs, and, where Slurm
is installed (tests/slurm/start.sh), recorded as the tasks of a real job array of as many trivial
tasks, held (so they stay pending and squeue is asked for their reason too: the costlier path),
so that sacct answers about 1,000 jobs; the array is cancelled afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from crackhpc import atomic, rundir, slurm
from crackhpc.cli import format_status
from crackhpc.config import DataConfig, Resources, RunSpec, TrainConfig
from crackhpc.record import SweepFolder, SweepRecord
from crackhpc.status import collect

from .report import markdown


def make_sweep(folder: SweepFolder, n: int) -> list[str]:
    run_ids = [f"torch-resnet18-s{i}-{i:08x}" for i in range(n)]
    for i, run_id in enumerate(run_ids):
        spec = RunSpec(
            run_id=run_id,
            sweep=folder.path.name,
            train=TrainConfig(seed=i, epochs=3),
            data=DataConfig(root="/data"),
            resources=Resources(gpus_per_node=0, cpus_per_task=1, mem_gb=1),
        )
        rundir.write_config(folder.run(run_id), spec)
        rundir.update_result(
            folder.run(run_id),
            run_id=run_id,
            status="completed",
            epochs=3,
            epochs_done=3,
            test_acc=0.9,
            started="2026-01-01T10:00:00+00:00",
            finished="2026-01-01T10:05:00+00:00",
        )
        atomic.write_csv(
            folder.run(run_id) / rundir.METRICS,
            rundir.METRIC_COLUMNS,
            [[e, 0.5, 0.8, 0.5, 0.8, 1.0, 100.0] for e in (1, 2, 3)],
        )
    return run_ids


def timed(folder: SweepFolder, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        statuses, _ = collect(folder.path)
        format_status(statuses, resources=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/status_scale.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = SweepFolder(Path(tmp) / "scale")
        run_ids = make_sweep(folder, args.runs)
        record = SweepRecord()
        for run_id in run_ids:
            record.add_job(run_id, "", "local")
        folder.save(record)
        rows.append([args.runs, "local jobs", "-", f"{timed(folder):.2f}"])
        if shutil.which("sbatch"):
            # As the launcher does: arrays of at most the cluster's MaxArraySize tasks.
            size = slurm.max_array_size() or args.runs
            arrays = []
            for start in range(0, args.runs, size):
                count = min(size, args.runs - start)
                out = subprocess.run(
                    [
                        "sbatch",
                        "--parsable",
                        f"--array=0-{count - 1}",
                        "-c",
                        "1",
                        "--mem=10M",
                        "--hold",
                        "-o",
                        "/dev/null",
                        "--wrap",
                        "true",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                arrays.append(out.stdout.strip().split(";")[0])
                for i in range(count):
                    record.add_job(run_ids[start + i], f"{arrays[-1]}_{i}", "slurm")
            folder.save(record)
            states = sorted({s.slurm_state for s in collect(folder.path)[0]})
            rows.append([args.runs, f"{len(arrays)} held Slurm array(s)", "/".join(states), f"{timed(folder):.2f}"])
            subprocess.run(["scancel", *arrays], check=False)
    table = markdown(["runs", "recorded as", "Slurm states seen", "status seconds (best of 3)"], rows)
    print(table)
    atomic.write_text(
        args.out,
        "# `crackhpc status` at scale\n\n" + table + "\n\nTarget: under 2 s for 1,000 runs "
        "(one sacct call and at most one squeue call per refresh).\n",
    )


if __name__ == "__main__":
    main()
