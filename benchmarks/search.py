"""A search against the full grid it samples from: does it find (within 1 point) the grid's best
validation accuracy with at most 40 % of the grid's epochs?

    python -m benchmarks.search                      # writes benchmarks/results/search.md
    python -m benchmarks.search --trials 12 --out /tmp/search.md

The problem: 600 synthetic crack images (`crackhpc.data.synth`, 64 px), split 0.6 / 0.2 / 0.2; two
models with frozen backbones that run every epoch (EfficientNet-Lite0 with its ImageNet weights,
ResNet18 from random init; no feature cache, so that an epoch takes seconds, as a search's controller
that looks once a second can act on), lr x batch size x model crossed into the grid, every run
trained `--epochs` epochs through the local executor, two at a time. The search (`search:` of a sweep
file, crackhpc.search) draws from the same lists with Optuna's TPE and prunes with ASHA
(min_resource 1, reduction factor 3), two trials at once. Both count the epochs their runs trained
(summary.csv's epochs_done, pruned runs included) and their best validation accuracy (a completed
run's best epoch, as `predict --best` picks it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml

from crackhpc.cli import main

HERE = Path(__file__).resolve().parent
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
BATCHES = [16, 32, 64]
MODELS = ["efficientnet_lite0", "resnet18"]
# GPU-hours an epoch would cost at the study's scale: the 30,000 training and 9,500 validation images
# of the real dataset at 224 px, trained end to end on one A100 at about 1,000 images/s: 40 s an
# epoch, 0.011 GPU-hours. An assumption, not a measurement (no GPU was lent): the ratio of the two
# columns does not depend on it.
GPU_HOURS_PER_EPOCH = 40 / 3600


def sweep(name: str, epochs: int, images: int, **top) -> dict:
    return {
        "name": name,
        "executor": "local",
        "data": {"synthetic": {"n": images, "size": 64, "seed": 0}, "split": [0.6, 0.2, 0.2]},
        # The backbone runs every epoch (no feature cache): epochs of seconds, as a controller that
        # polls once a second can stop; cached features train a head in milliseconds, over before it looks.
        "defaults": {
            "framework": "torch",
            "freeze_backbone": True,
            "feature_cache": False,
            "epochs": epochs,
            "input_size": 64,
        },
        "runs": [{"model": "efficientnet_lite0", "pretrained": True}, {"model": "resnet18", "pretrained": False}],
        "resources": {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 30},
        **top,
    }


def run(folder: Path, spec: dict) -> tuple[pd.DataFrame, float]:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep_dir = folder / "results" / spec["name"]
    timing = sweep_dir / "benchmark-seconds.txt"  # a reused sweep's wall time is the one it took to train
    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["sweep", str(path), "--results", str(folder / "results")])
    seconds = float(timing.read_text()) if timing.is_file() else time.monotonic() - start
    if code != 0:
        raise SystemExit(f"{path}: crackhpc sweep exited {code}")
    timing.write_text(f"{seconds}\n")
    return pd.read_csv(sweep_dir / "summary.csv"), seconds


def row(what: str, df: pd.DataFrame, seconds: float) -> dict:
    done = df[df["status"] == "completed"]
    best = done.loc[done["best_val_acc"].idxmax()]
    epochs = int(df["epochs_done"].sum())
    return {
        "": what,
        "runs": len(df),
        "pruned": int((df["status"] == "pruned").sum()),
        "epochs trained": epochs,
        "best val accuracy": round(float(best["best_val_acc"]), 4),
        "best run": f"{best['model']} lr={best['lr']:g} bs={best['batch_size']}",
        "CPU core-hours (measured)": round(float(df["compute_hours"].sum()), 4),
        "GPU-hours at the study's scale (assumed)": round(epochs * GPU_HOURS_PER_EPOCH, 2),
        "wall time (s)": round(seconds),
    }


def markdown(rows: list[dict], args, verdict: list[str]) -> str:
    header = list(rows[0])
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    )
    return (
        "# Search against the grid it samples (`python -m benchmarks.search`)\n\n"
        f"{args.images} synthetic 64 px images (split 0.6/0.2/0.2: {int(args.images * 0.2)} validation images), "
        f"frozen EfficientNet-Lite0 (ImageNet) and ResNet18 (random init), the backbone run every epoch; grid lr {LRS} x "
        f"batch size {BATCHES} x 2 models = {len(LRS) * len(BATCHES) * 2} runs of {args.epochs} epochs; search: "
        f"TPE over the same lists, {args.trials} trials, ASHA (min_resource 1, reduction factor {args.reduction_factor}), "
        "2 at a time; "
        "local executor, 2 processes at once, on a shared 2-core machine (wall times move with its load).\n\n"
        f"{table}\n\n"
        "GPU-hours: epochs trained x 40 s, an assumed A100 epoch of the real dataset's 39,500 training "
        "and validation images at 224 px, trained end to end (about 1,000 images/s). Not measured: no GPU was lent; "
        "the ratio of the two rows does not depend on it. CPU core-hours are summary.csv's compute_hours "
        "of these runs.\n\n" + "\n".join(f"- {line}" for line in verdict) + "\n"
    )


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    parser.add_argument("--reduction-factor", type=int, default=3, help="ASHA's: about 1 in this many goes on")
    parser.add_argument(
        "--reuse-grid", action="store_true", help="the grid's runs from the last call (they are deterministic)"
    )
    parser.add_argument("--folder", type=Path, default=HERE / "results" / ".cache" / "search")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "search.md")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    for stale in ("search",) if args.reuse_grid else ("grid", "search"):  # trained afresh (the images are kept)
        shutil.rmtree(args.folder / "results" / stale, ignore_errors=True)
    grid = sweep("grid", args.epochs, args.images, grid={"lr": LRS, "batch_size": BATCHES})
    space = {"lr": LRS, "batch_size": BATCHES}
    search = {"sampler": "tpe", "seed": args.seed, "trials": args.trials, "parallel": 2, "metric": "val_acc"}
    search.update(prune="asha", min_resource=1, reduction_factor=args.reduction_factor, space=space)
    rows = [
        row("grid", *run(args.folder, grid)),
        row("search", *run(args.folder, sweep("search", args.epochs, args.images, search=search))),
    ]
    gap = rows[0]["best val accuracy"] - rows[1]["best val accuracy"]
    share = rows[1]["epochs trained"] / rows[0]["epochs trained"]
    verdict = [
        f"best validation accuracy: search {rows[1]['best val accuracy']:.4f} against the grid's "
        f"{rows[0]['best val accuracy']:.4f}, {100 * gap:.2f} points below (target: within 1): "
        + ("met" if gap <= 0.01 + 1e-9 else "NOT met"),
        f"epochs: {rows[1]['epochs trained']} of the grid's {rows[0]['epochs trained']}, {share:.0%} "
        "(target: at most 40 %): " + ("met" if share <= 0.4 else "NOT met"),
    ]
    text = markdown(rows, args, verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
