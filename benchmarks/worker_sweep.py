"""crackhpc's side: a sweep YAML, run folders written by the launcher, and the worker called on each.

Exactly what `crackhpc sweep --executor local` does minus the job submission: the runs go one
after another in this process, and share the image and feature caches of the sweep folder.
"""

from __future__ import annotations

import csv
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from crackhpc import atomic, rundir, worker
from crackhpc.config import load_sweep
from crackhpc.grid import expand
from crackhpc.launcher import write_run_folders
from crackhpc.record import SweepFolder


def sweep_yaml(name: str, data: dict, run: dict, grid: dict, input_size: int, threads: int) -> str:
    """A frozen-backbone sweep file: `run` (framework, model, pretrained, epochs) over the `grid`."""
    return yaml.safe_dump(
        {
            "name": name,
            "executor": "local",
            "data": data,
            "defaults": {
                **run,
                "freeze_backbone": True,
                "feature_cache": True,
                "batch_size": 100,
                "optimizer": "adam",
                "input_size": input_size,
            },
            "grid": grid,
            "resources": {"gpus_per_node": 0, "cpus_per_task": threads},
        },
        sort_keys=False,
    )


def feature_seconds(run_dir: Path) -> float:
    """Seconds the run spent computing backbone features (0 when it reused them), from its log:
    the one pass over the images that no pipeline can skip."""
    text = (run_dir / rundir.LOG).read_text(encoding="utf-8")
    found = re.search(r"features computed \(.*?\) in ([0-9.]+)s", text)
    return float(found[1]) if found else 0.0


def run_sweep(work: Path, text: str, after_run: Callable[[], dict] | None = None) -> list[dict]:
    """Every run of the sweep, from cold caches: its result, lr, seed, wall time, misclassified test
    images and folder; `after_run()`'s dict (e.g. the GPU's memory peak) is added to each run's."""
    sweep_file = work / "sweeps" / f"{yaml.safe_load(text)['name']}.yaml"
    atomic.write_text(sweep_file, text)
    sweep = load_sweep(sweep_file)
    sweep_dir = work / "runs" / sweep.name
    shutil.rmtree(sweep_dir, ignore_errors=True)  # crackhpc pays for building its caches, every time
    results = []
    for spec in write_run_folders(expand(sweep), SweepFolder(sweep_dir), Path(sweep.data.root), sweep):
        t0 = time.perf_counter()
        metrics = worker.run(sweep_dir / spec.run_id)
        run_s = time.perf_counter() - t0
        with open(sweep_dir / spec.run_id / rundir.MISCLASSIFIED, newline="", encoding="utf-8") as fh:
            wrong = {row["path"] for row in csv.DictReader(fh)}
        results.append(
            {
                **metrics,
                "lr": spec.train.lr,
                "seed": spec.train.seed,
                "run_s": run_s,
                "wrong": wrong,
                "feature_s": feature_seconds(sweep_dir / spec.run_id),
                "run_dir": sweep_dir / spec.run_id,
                "precision": rundir.read_result(sweep_dir / spec.run_id).get("precision"),
                **(after_run() if after_run else {}),
            }
        )
    return results
