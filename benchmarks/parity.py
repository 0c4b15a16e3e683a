"""Does bf16 change what a run learns? fp32 against bf16, beside the seed-to-seed spread.

    python -m benchmarks.parity [--n 2000] [--seeds 0,1,2] [--threads 2]
        [--frozen efficientnet_lite0] [--frozen-size 224] [--trainable resnet18] [--trainable-size 112]
        [--epochs 4] [--out benchmarks/results/parity.md]

Real crackhpc runs (benchmarks.worker_sweep: the launcher's run folders, the worker on each), one
sweep per precision (`precision: fp32` and `precision: bf16`, each forced) over the seeds, on the
same synthetic images and split:
- frozen: the pretrained backbone (EfficientNet-Lite0's ImageNet weights, the one file pip
  installs), features through the feature cache, the head trained on them;
- trainable: the whole network from random init (no ResNet ImageNet file offline), Adam.
Per seed: each precision's test accuracy, the difference, and the share of test images both
get right or both get wrong (two classes: both predict alike); per precision, the mean and the
spread (sample standard deviation) across seeds, so a bf16 difference can be read against what
another seed alone changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from pathlib import Path

import torch
import yaml

from crackhpc import atomic
from crackhpc.data.synth import synthesize

from .worker_sweep import run_sweep

PRECISIONS = ("fp32", "bf16")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__)
    p.add_argument("--n", type=int, default=2000, help="synthetic 227 px images")
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frozen", default="efficientnet_lite0", help='a pretrained torch backbone, or "" for none')
    p.add_argument("--frozen-size", type=int, default=224)
    p.add_argument("--trainable", default="resnet18", help='a torch model trained whole, or "" for none')
    p.add_argument("--trainable-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=4, help="the trainable runs' (frozen: 3)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/results/.cache/parity"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/parity.md"))
    return p.parse_args(argv)


def _sweep(args, data: Path, name: str, run: dict) -> str:
    return yaml.safe_dump(
        {
            "name": name,
            "executor": "local",
            "data": {"root": str(data), "split": [0.75, 0.2, 0.05], "split_seed": 0},
            "defaults": {"batch_size": 100, "optimizer": "adam", **run},
            "grid": {"seed": args.seeds},
            "resources": {"gpus_per_node": 0, "cpus_per_task": args.threads},
        },
        sort_keys=False,
    )


def compare(args, data: Path, label: str, run: dict) -> dict:
    by_precision = {}
    for precision in PRECISIONS:
        name = f"parity-{label}-{precision}"
        results = run_sweep(args.work, _sweep(args, data, name, {**run, "precision": precision}))
        by_precision[precision] = {r["seed"]: r for r in results}
        print(f"[{label} {precision}] " + ", ".join(f"seed {r['seed']}: {r['test_acc']:.4f}" for r in results))
    rows = []
    for seed in args.seeds:
        fp32, bf16 = by_precision["fp32"][seed], by_precision["bf16"][seed]
        rows.append(
            {
                "seed": seed,
                "fp32": fp32["test_acc"],
                "bf16": bf16["test_acc"],
                "difference": bf16["test_acc"] - fp32["test_acc"],
                # right in one precision and wrong in the other, as frozen_backbone counts disagreement
                "same": 1 - len(fp32["wrong"] ^ bf16["wrong"]) / fp32["n_test"],
                "test_images": fp32["n_test"],
                "seconds": (fp32["run_s"], bf16["run_s"]),
            }
        )
    return {"label": label, "run": run, "rows": rows}


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def report(args, argv, compared: list[dict], load: float) -> str:
    lines = [
        f"# bf16 against fp32, beside the seed-to-seed spread ({dt.date.today().isoformat()})",
        "",
        f"`python -m benchmarks.parity {' '.join(argv)}`: {args.n} synthetic 227 px images, split 0.75/0.2/0.05, "
        f"batch 100, Adam, {args.threads} CPUs, torch {torch.__version__}; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end. `same`: share of the test images both precisions get right or both get wrong.",
    ]
    for c in compared:
        run = c["run"]
        lines += [
            "",
            f"## {c['label']}: {run['model']}, {run['input_size']} px, {run['epochs']} epochs, "
            f"{'frozen, pretrained' if run['freeze_backbone'] else 'trainable, random init'}",
            "",
            "| seed | fp32 test acc | bf16 test acc | bf16 − fp32 | same prediction | test images | run s (fp32, bf16) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in c["rows"]:
            lines.append(
                f"| {r['seed']} | {r['fp32']:.4f} | {r['bf16']:.4f} | {r['difference']:+.4f} | {r['same']:.1%} "
                f"| {r['test_images']} | {r['seconds'][0]:.0f}, {r['seconds'][1]:.0f} |"
            )
        fp32 = [r["fp32"] for r in c["rows"]]
        bf16 = [r["bf16"] for r in c["rows"]]
        diffs = [abs(r["difference"]) for r in c["rows"]]
        lines += [
            "",
            f"Across seeds (mean ± standard deviation): fp32 {_spread(fp32)}, bf16 {_spread(bf16)}; "
            f"|bf16 − fp32| per seed: mean {statistics.mean(diffs):.4f}, largest {max(diffs):.4f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    data = args.work / "data" / f"synth-n{args.n}-227px-seed0"
    synthesize(data, args.n, size=227, seed=0, workers=args.threads)
    compared = []
    common = {"framework": "torch", "feature_cache": True}
    if args.frozen:
        frozen = {**common, "model": args.frozen, "pretrained": True, "freeze_backbone": True}
        compared.append(compare(args, data, "frozen", {**frozen, "input_size": args.frozen_size, "epochs": 3}))
    if args.trainable:
        trainable = {**common, "model": args.trainable, "pretrained": False, "freeze_backbone": False}
        compared.append(
            compare(args, data, "trainable", {**trainable, "input_size": args.trainable_size, "epochs": args.epochs})
        )
    text = report(args, argv, compared, load)
    atomic.write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
