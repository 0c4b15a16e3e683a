"""The study's sweep with this checkout against another (today's main), one after the other on one machine.

    git worktree add --detach /tmp/main-ref main      # the reference checkout, once
    python -m benchmarks.versus_main --ref /tmp/main-ref [--n 2000] [--size 227] [--input-size 224]
        [--epochs 3] [--threads 2] [--order ref,this] [--out benchmarks/results/versus_main.md]

The study's three models (Keras VGG16, Keras ResNet50, torch ResNet18), frozen backbones with the
feature cache (random init: no ResNet/VGG ImageNet file offline; the speed is the same), batch 100,
Adam, on --n synthetic images: `crackhpc sweep --executor local` in a fresh process per checkout,
each importing its own crackhpc (PYTHONPATH), the same Python and packages, a fresh sweep folder.
Wall time of the whole command per checkout, and each run's precision and test accuracy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from crackhpc import atomic, rundir
from crackhpc.data.synth import synthesize

HERE = Path(__file__).resolve().parent.parent


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus_main", description=__doc__)
    p.add_argument("--ref", type=Path, required=True, help="the other checkout (today's main)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="cpus_per_task of each run")
    p.add_argument("--order", default="ref,this", help="which checkout runs first")
    p.add_argument("--work", type=Path, default=HERE / "benchmarks/results/.cache/versus_main")
    p.add_argument("--out", type=Path, default=HERE / "benchmarks/results/versus_main.md")
    return p.parse_args(argv)


def sweep_file(args, data: Path, name: str) -> Path:
    text = {
        "name": name,
        "executor": "local",
        "data": {"root": str(data), "split": [0.75, 0.2, 0.05], "split_seed": 0},
        "defaults": {
            "pretrained": False,
            "freeze_backbone": True,
            "feature_cache": True,
            "epochs": args.epochs,
            "batch_size": 100,
            "input_size": args.input_size,
        },
        "runs": [
            {"framework": "keras", "model": "vgg16"},
            {"framework": "keras", "model": "resnet50"},
            {"framework": "torch", "model": "resnet18"},
        ],
        "resources": {"gpus_per_node": 0, "cpus_per_task": args.threads, "timeout_min": 600},
    }
    path = args.work / f"{name}.yaml"
    atomic.write_text(path, yaml.safe_dump(text, sort_keys=False))
    return path


def run_checkout(label: str, checkout: Path, args, data: Path) -> dict:
    results = args.work / "results"
    sweep = sweep_file(args, data, f"versus-{label}")
    subprocess.run(["rm", "-rf", str(results / sweep.stem)], check=True)
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    command = [sys.executable, "-c", "import sys; from crackhpc.cli import main; sys.exit(main())"]
    command += ["sweep", str(sweep), "--executor", "local", "--results", str(results)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(
            f"{label}: crackhpc sweep failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    runs = []
    for run in sorted((results / sweep.stem).iterdir()):
        if (run / rundir.RESULT).is_file():
            result = json.loads((run / rundir.RESULT).read_text())
            runs.append(
                {
                    "run": run.name,
                    "wall_time_s": result.get("wall_time_s"),
                    "precision": result.get("precision", "fp32 (before auto)"),
                    "test_acc": result.get("test_acc"),
                }
            )
    print(f"[{label}] {wall:.1f} s: {runs}", flush=True)
    return {"label": label, "checkout": str(checkout), "wall_s": wall, "load_start": load, "runs": runs}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    data = args.work / "data" / f"synth-n{args.n}-{args.size}px-seed0"
    synthesize(data, args.n, size=args.size, seed=0, workers=args.threads)
    checkouts = {"ref": args.ref, "this": HERE}
    measured = {label: run_checkout(label, checkouts[label], args, data) for label in args.order.split(",")}
    ref, this = measured["ref"], measured["this"]
    lines = [
        f"# The study's sweep: this checkout against {args.ref} ({dt.date.today().isoformat()})",
        "",
        f"`python -m benchmarks.versus_main {' '.join(argv)}`: Keras VGG16, Keras ResNet50, torch ResNet18, "
        f"frozen, {args.n} synthetic {args.size} px images at {args.input_size} px, {args.epochs} epochs, "
        f"{args.threads} CPUs per run, one after the other ({args.order}).",
        "",
        "| checkout | wall s | load at start | run | run wall s | precision | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measured.values():
        for r in m["runs"]:
            lines.append(
                f"| {m['label']} | {m['wall_s']:.1f} | {m['load_start']:.1f} | {r['run']} | {r['wall_time_s']} "
                f"| {r['precision']} | {r['test_acc']} |"
            )
    lines += ["", f"**{ref['wall_s'] / this['wall_s']:.2f}x** ({ref['wall_s']:.0f} s against {this['wall_s']:.0f} s)."]
    text = "\n".join(lines) + "\n"
    atomic.write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
