"""`crackhpc report` on 1,000 completed run folders: how long the tables take, the default report
(figures of the best and worst runs only) and a second report that reuses those figures.

    python -m benchmarks.report_scale                 # 1,000 runs, writes benchmarks/results/report_scale.md
    python -m benchmarks.report_scale --runs 50 --out /tmp/rs.md   # a quick look
    git archive 3e6ca1c crackhpc | tar -x -C /tmp/before           # the report before this benchmark
    python -m benchmarks.report_scale --before /tmp/before         # ... timed first, same folders

The run folders are what a real sweep leaves: config.yaml through crackhpc.rundir.write_config
from a sweep file expanded by crackhpc itself (4 models x 10 learning rates x 25 seeds), the
sweep's split.csv of the real dataset's 40,000 images at the study's 75 / 23.75 / 1.25 split copied
into each run (1.1 MB each, 500 test images, written as 227 px JPEGs for the image grids),
result.json with the worker's fields, metrics.csv of 10 epochs and misclassified.csv (0-14 images).
They are made once under benchmarks/results/.cache/ and reused (--fresh remakes them). The
report's outputs and read cache are deleted before the first case of each code version, so the
first report reads every file and draws every figure it needs, and "again" is the same command
with nothing changed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

from crackhpc import atomic, rundir
from crackhpc.config import load_sweep
from crackhpc.data.layout import CLASSES, Item
from crackhpc.data.split import split_items, write_manifest
from crackhpc.grid import expand
from crackhpc.report.reading import READ_CACHE

HERE = Path(__file__).resolve().parent
N_IMAGES = 40_000
MODELS = (("torch", "resnet18"), ("torch", "resnet50"), ("keras", "vgg16"), ("keras", "resnet50"))
EPOCHS = 10


def sweep_file(folder: Path, runs: int) -> Path:
    seeds = max(1, -(-runs // (len(MODELS) * 10)))
    text = textwrap.dedent(f"""\
        name: scale
        executor: local
        data: {{root: {folder / "data"}, split: [0.75, 0.2375, 0.0125]}}
        defaults: {{pretrained: false, epochs: {EPOCHS}, input_size: 224}}
        runs: [{", ".join(f"{{framework: {f}, model: {m}}}" for f, m in MODELS)}]
        grid:
          lr: [{", ".join(f"{1e-4 * (k + 1):g}" for k in range(10))}]
          seed: [{", ".join(str(s) for s in range(seeds))}]
        resources: {{gpus_per_node: 1, cpus_per_task: 8}}
        """)
    path = folder / "scale.yaml"
    path.write_text(text)
    return path


def make_sweep(folder: Path, runs: int) -> Path:
    """`runs` completed run folders in folder/scale/, as the launcher and the workers leave them."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    specs = expand(load_sweep(sweep_file(folder, runs)))[:runs]
    sweep_dir = folder / "scale"
    items = [
        Item(f"{cls.capitalize()}/{k:05d}.jpg", label, None)
        for label, cls in enumerate(CLASSES)
        for k in range(1, N_IMAGES // 2 + 1)
    ]
    manifest = split_items(items, (0.75, 0.2375, 0.0125), 0)
    write_manifest(sweep_dir / rundir.SPLIT, manifest)
    test = [i for i in manifest if i.split == "test"]
    rng = np.random.default_rng(0)
    for item in test:  # the image grids of misclassified test images read these
        (folder / "data" / item.path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (227, 227, 3), dtype=np.uint8)).save(
            folder / "data" / item.path, quality=85
        )
    for spec in specs:
        run_dir = sweep_dir / spec.run_id
        rundir.write_config(run_dir, spec)
        shutil.copyfile(sweep_dir / rundir.SPLIT, run_dir / rundir.SPLIT)
        wrong = rng.choice(len(test), int(rng.integers(0, 15)), replace=False)
        atomic.write_csv(
            run_dir / rundir.MISCLASSIFIED,
            ("path", "true", "predicted", "probability"),
            [(test[k].path, CLASSES[test[k].label], CLASSES[1 - test[k].label], 0.9) for k in wrong],
        )
        val = np.minimum(0.99, 0.6 + np.cumsum(rng.uniform(0, 0.08, EPOCHS)))
        atomic.write_csv(
            run_dir / rundir.METRICS,
            rundir.METRIC_COLUMNS,
            [
                [e + 1, round(1 - v, 4), round(v - 0.01, 4), round(1.05 - v, 4), round(v, 4), 61.2, 487.0]
                for e, v in enumerate(val)
            ],
        )
        wall = float(rng.uniform(300, 900))
        atomic.write_json(
            run_dir / rundir.RESULT,
            {
                "run_id": spec.run_id,
                "status": "completed",
                "started": rundir.now(),
                "finished": rundir.now(),
                "updated": rundir.now(),
                "host": "gpu017",
                "job_id": f"{1000 + len(wrong)}_{spec.run_id[-3:]}",
                "world_size": 1,
                "requeues": 0,
                "error": None,
                "traceback": None,
                "epochs_done": EPOCHS,
                "best_val_acc": float(val.max()),
                "best_epoch": int(val.argmax()) + 1,
                "test_loss": 0.02 + len(wrong) / 500,
                "test_acc": 1 - len(wrong) / len(test),
                "n_train": 30000,
                "n_valid": 9500,
                "n_test": len(test),
                "skipped_images": 0,
                "wall_time_s": round(wall, 3),
                "images_per_s": round(EPOCHS * 39500 / wall, 2),
                "device": "cuda:0",
                "feature_cache": "hit",
                "backend": "nccl",
            },
        )
    atomic.write_json(
        sweep_dir / "sweep.json",
        {"runs": {s.run_id: {"job_id": "1"} for s in specs}, "current_runs": [s.run_id for s in specs]},
    )
    return sweep_dir


TABLES = "from crackhpc.report.tables import write_reports; import sys; write_reports(sys.argv[1])"
REPORT = "from crackhpc.cli import main; import sys; sys.exit(main(['report', *sys.argv[1:]]))"
# name: (what it is, the code run, the arguments after the sweep folder)
CASES = {
    "tables": ("summary.csv and comparison.csv only (`write_reports`)", TABLES, []),
    "no-figures": ("`crackhpc report DIR --no-figures --format csv`", REPORT, ["--no-figures", "--format", "csv"]),
    "old-csv": (
        "`crackhpc report DIR --misclassified 0 --format csv`",
        REPORT,
        ["--misclassified", "0", "--format", "csv"],
    ),
    "default": ("`crackhpc report DIR` (figures of the 3 best and 3 worst runs)", REPORT, []),
    "again": ("`crackhpc report DIR` again, nothing changed (figures reused)", REPORT, []),
}


def timed(code: str, args: list[str], pythonpath: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of `code` in a fresh Python, imports included, as a user waits.
    It runs in the sweep folder: `python -c` puts its working directory first on sys.path."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=args[0],
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode:
        raise SystemExit(f"{code} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def pngs(sweep_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "report").glob("*.png")}


def clean(sweep_dir: Path) -> None:
    for name in ("report", "report.md", "report.html", "summary.csv", "comparison.csv", READ_CACHE):
        path = sweep_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def publish(out: Path, text: str, append: bool) -> None:
    """Print a results table and write it to `out`, after what is there when `append`."""
    print("\n" + text)
    if append and out.is_file():
        text = out.read_text() + "\n" + text
    atomic.write_text(out, text)
    print(f"written: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=HERE / "results" / ".cache" / "report_scale")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "report_scale.md")
    parser.add_argument("--fresh", action="store_true", help="remake the run folders")
    parser.add_argument(
        "--cases", default="tables,no-figures,default,again", help=f"reports to time, in order, from {', '.join(CASES)}"
    )
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also time these cases with the crackhpc package in DIR (e.g. an older commit's "
        "`git archive COMMIT crackhpc | tar -x -C DIR`), first",
    )
    parser.add_argument("--before-cases", default="tables,old-csv")
    parser.add_argument("--append", action="store_true", help="add this table to --out instead of replacing it")
    args = parser.parse_args(argv)

    work = args.work / str(args.runs)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    sweep_dir = work / "scale"
    if not (sweep_dir / "sweep.json").is_file():
        make_sweep(work, args.runs)
    made = time.perf_counter() - t0

    ours = str(Path(__file__).resolve().parents[1])
    plan = [("before", args.before, c) for c in args.before_cases.split(",")] if args.before else []
    plan += [("now", ours, c) for c in args.cases.split(",")]
    rows, version = [], None
    for which, pythonpath, name in plan:
        label, code, extra = CASES[name]
        if version != which:
            clean(sweep_dir)  # each code version starts from a folder without report outputs
            version = which
        before = pngs(sweep_dir)
        cache = "-" if which == "before" else "warm" if (sweep_dir / READ_CACHE).is_file() else "cold"
        wall, cpu = timed(code, [str(sweep_dir), *extra], pythonpath)
        after = pngs(sweep_dir)
        drawn = sum(1 for k, v in after.items() if before.get(k) != v)
        rows.append((which, label, cache, f"{wall:.2f}", f"{cpu:.2f}", len(after), drawn))
        print(
            f"{which}: {label}: {cache}, {wall:.2f} s wall, {cpu:.2f} s CPU, {len(after)} PNGs, {drawn} drawn",
            flush=True,
        )

    load = os.getloadavg()[0]
    table = [
        "| code | report | read cache | wall s | CPU s | PNGs in report/ | PNGs drawn |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    text = (
        "\n".join(
            [
                f"{'#' * (2 if args.append else 1)} `crackhpc report` on {args.runs:,} completed run folders",
                "",
                f"`python -m benchmarks.report_scale {' '.join(argv if argv is not None else sys.argv[1:])}` on "
                f"{os.cpu_count()} CPUs, {_dt.date.today()}, 1-minute load average {load:.1f} at the end (above "
                f"{os.cpu_count()}, other processes competed for the CPUs: CPU s is then the steadier figure). Each "
                f"report runs in a fresh process, imports included; report outputs are deleted before the first "
                f"case of each code version. Read cache: cold, the first report reads every config.yaml and split.csv; "
                f"warm, {READ_CACHE} from an earlier report spares the unchanged ones. "
                f"Run folders made in {made:.0f} s (reused when already there).",
                (f"before: the crackhpc package in {args.before}; now: this tree. " if args.before else "")
                + "Target: the tables of 1,000 runs in under 2 s.",
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
