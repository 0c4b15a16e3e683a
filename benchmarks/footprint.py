"""Bytes and files (inodes) a completed run leaves, before and after crackhpc shared the split manifest
and dropped the optimizer from completed checkpoints, and after `crackhpc clean --logs`.

    python -m benchmarks.footprint [--before REV] [--out benchmarks/results/footprint.md]

Each case is a real sweep of two runs (seeds 0 and 1), one epoch on the demo's data (600 synthetic
64 px images, jobs/smoke.yaml's split), through `crackhpc sweep --executor local`, so that submitit's
logs are the real ones. It runs twice: with the crackhpc of git revision `--before` (default: the
commit this branch left main at, exported with `git archive`) and with this checkout's. A run's
footprint is its run folder, its jobs' files in the sweep's submitit/ folder, and its share of the
sweep's split manifest (a sweep of N runs shares one); the sweep's caches (.cache/), which a
sweep's runs share and `clean --caches` frees, are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from crackhpc import atomic

from .report import markdown

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "torch resnet18 frozen": {"framework": "torch", "model": "resnet18", "freeze_backbone": True},
    "torch resnet18 trainable": {"framework": "torch", "model": "resnet18", "freeze_backbone": False},
    "keras vgg16 frozen": {"framework": "keras", "model": "vgg16", "freeze_backbone": True},
    "keras vgg16 trainable": {"framework": "keras", "model": "vgg16", "freeze_backbone": False},
}
_JOB_FILE = re.compile(r"^(?P<job>.+?)_(submitted\.pkl|\d+_log\.out|\d+_log\.err|\d+_result\.pkl)$")


def sweep_yaml(name: str, settings: dict, extra: dict) -> str:
    return yaml.safe_dump(
        {
            "name": name,
            "executor": "local",
            "data": {"synthetic": {"n": 600, "size": 64, "seed": 0}, "split": [0.6, 0.2, 0.2]},
            "defaults": {"pretrained": False, "epochs": 1, "batch_size": 32, "input_size": 64, **settings, **extra},
            "grid": {"seed": [0, 1]},
            "resources": {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 30},
        },
        sort_keys=False,
    )


def _files(path: Path) -> list[Path]:
    return [Path(root) / n for root, _, names in os.walk(path) for n in names] if path.is_dir() else []


def per_run(sweep_dir: Path) -> tuple[float, float]:
    """(bytes, files) per run: its folder and its jobs' files in submitit/."""
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    jobs = {j for job in runs.values() for j in (job["job_id"], *job.get("history", ()))}
    logs = [p for p in _files(sweep_dir / "submitit") if (m := _JOB_FILE.match(p.name)) and m["job"] in jobs]
    files = logs + [p for run in runs for p in _files(sweep_dir / run)]
    return sum(p.stat().st_size for p in files) / len(runs), len(files) / len(runs)


def manifest_bytes(sweep_dir: Path) -> int:
    """The sweep's own manifest, which its runs now share (before: one more copy in each run folder)."""
    return sum(p.stat().st_size for p in [*_files(sweep_dir / "splits"), sweep_dir / "split.csv"] if p.is_file())


def crackhpc(code: Path, *args: str) -> None:
    """`crackhpc ARGS` with the package in `code`, from a folder that holds no other (`python -m`
    puts the current folder first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-m", "crackhpc.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if out.returncode:
        raise RuntimeError(f"crackhpc {' '.join(args)} with {code}: exit {out.returncode}\n{out.stderr[-3000:]}")


def run_case(code: Path, results: Path, name: str, settings: dict, extra: dict) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results.parent / f"{name}.yaml"
    path.write_text(sweep_yaml(name, settings, extra))
    crackhpc(code, "sweep", str(path), "--results", str(results))
    return results / name


def export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "crackhpc"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _mb(size: float) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _cells(footprint: tuple[float, float]) -> list[str]:
    return [_mb(footprint[0]), f"{footprint[1]:g}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", default=None, help="git revision of the crackhpc before (default: merge-base with main)"
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/footprint.md"))
    args = parser.parse_args()
    before = (
        args.before
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    rows: list[list[str]] = []
    manifests: list[int] = []
    with tempfile.TemporaryDirectory(prefix="crackhpc-footprint-") as tmp:
        old_code = export(before, Path(tmp) / "before")
        for label, settings in CASES.items():
            if label not in args.cases:
                continue
            slug = label.replace(" ", "-")
            old_dir = run_case(old_code, Path(tmp) / "old" / "results", slug, settings, {})
            new_dir = run_case(ROOT, Path(tmp) / "new" / "results", slug, settings, {})
            none_dir = run_case(ROOT, Path(tmp) / "none" / "results", slug, settings, {"checkpoints": "none"})
            after = per_run(new_dir)
            for sweep_dir in (new_dir, none_dir):
                crackhpc(ROOT, "clean", str(sweep_dir), "--logs")
            old, cleaned, bare = per_run(old_dir), per_run(new_dir), per_run(none_dir)
            rows.append([label, *_cells(old), *_cells(after), *_cells(cleaned), *_cells(bare)])
            manifests.append(manifest_bytes(new_dir))
            print(rows[-1], file=sys.stderr)
    header = [
        "completed run",
        "before: bytes",
        "files",
        "after (default, checkpoints: last): bytes",
        "files",
        "+ clean --logs: bytes",
        "files",
        "checkpoints: none, clean --logs: bytes",
        "files",
    ]
    table = markdown(header, rows)
    print(table)
    atomic.write_text(
        args.out,
        "# Bytes and files per completed run (`python -m benchmarks.footprint`)\n\n"
        f"Before: crackhpc at {before[:10]}; after: this checkout. Two runs per sweep, one epoch, "
        "600 synthetic 64 px images; the run folder and its jobs' files in submitit/ (logs and pickles), "
        "the sweep's shared caches not.\n\n"
        + table
        + f"\n\nThe split manifest, before in every run folder and now once per sweep: {_mb(max(manifests))}.\n",
    )


if __name__ == "__main__":
    main()
