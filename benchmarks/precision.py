"""fp32 against bf16, side by side in one process: the feature pass and the training step of each model.

    python -m benchmarks.precision [--models resnet18,efficientnet_lite0,resnet50,vgg16,keras:resnet50,keras:vgg16]
        [--phases features,train] [--size 224] [--batch 16] [--rounds 3] [--threads 1] [--compile]
        [--out benchmarks/results/precision.md]

Per model and phase, the settings are timed in turn, round after round (fastpath.interleaved: a
warm-up batch each, then the best of `--rounds`), so load from other processes weighs on each alike
and the ratios hold on a busy machine where the absolute images/s do not. Torch rows:
- `today`: main's path before bf16 on CPU: fp32, channels_last, torch.fx's fuse (EfficientNet-Lite0
  unfused: fx cannot trace it) for the feature pass; fp32 channels_last for training;
- `fp32`, `bf16` x `channels_last`, `contiguous`: the candidates the worker's probe times, on the
  network as the worker now runs it (torch_models.for_inference folds BatchNorm, EfficientNet's too);
- `auto`: what `precision: auto` chooses here (the probe's own run, and what it cost, are printed).
Keras rows: `float32` against `mixed_bfloat16`; the feature pass (inference in a tf.function) on
the network as built (main's) and BatchNorm-folded (keras_worker.for_inference, the worker's), the
training step (a GradientTape step with Adam) on the network as built. `--compile` adds
torch.compile's compile time and compiled speed for each torch model's feature pass, in fp32 and
bf16. TensorFlow is imported after the torch rows (see README: Triton), so name Keras models last.
The output is rewritten after every model.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crackhpc import atomic
from crackhpc.worker import fastpath
from crackhpc.worker.torch_models import build, for_inference

DEFAULT_MODELS = "resnet18,efficientnet_lite0,resnet50,vgg16,keras:resnet50,keras:vgg16"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__)
    p.add_argument("--models", default=DEFAULT_MODELS, type=lambda s: s.split(","))
    p.add_argument(
        "--phases",
        default="features,train",
        type=lambda s: [p for p in s.split(",") if p],
        help='features, train, or "" (with --compile: the compile table alone)',
    )
    p.add_argument("--size", default=224, type=int, help="input size (px)")
    p.add_argument("--batch", default=16, type=int)
    p.add_argument("--rounds", default=3, type=int)
    p.add_argument("--threads", default=1, type=int, help="torch and TensorFlow threads")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes per model)")
    p.add_argument("--out", default=Path("benchmarks/results/precision.md"), type=Path)
    return p.parse_args(argv)


def _today(model: str) -> nn.Module:
    """The feature pass as main ran it: torch.fx's fuse where it traces, eval mode, channels_last."""
    from torch.fx.experimental.optimization import fuse
    from torch.fx.proxy import TraceError

    torch.manual_seed(0)
    backbone, _, _ = build(model, False)
    try:
        backbone = fuse(backbone.eval(), inplace=True)
    except TraceError:
        backbone = backbone.eval()
    return backbone.to(memory_format=torch.channels_last)


def torch_rows(model: str, phase: str, args) -> list[dict]:
    torch.manual_seed(0)
    backbone, head, _ = build(model, False)
    x = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
    if phase == "features":
        net = for_inference(backbone)
        today = _today(model)
    else:
        net = nn.Sequential(backbone, head).train()
        optimizer = torch.optim.Adam(net.parameters(), 1e-4)
        y = torch.randint(0, 2, (args.batch,))

    def run(module, precision: str):
        def batch():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                if phase == "features":
                    with torch.no_grad():
                        module(x)
                    return
                loss = nn.functional.cross_entropy(module(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return batch

    job = fastpath.Job("torch", model, args.size, phase, "auto", "auto", args.batch, 10**6)
    t0 = time.perf_counter()
    choice = fastpath.torch_choice(job, net, torch.device("cpu"), None, lambda m: print(f"  [{model}] {m}"))
    probe_s = time.perf_counter() - t0
    candidates = {}
    if phase == "features":
        candidates["today (fp32 channels_last)"] = ((lambda: None), run(today, "fp32"))
    for fmt in fastpath.FORMATS:  # one format after the other, as the probe orders them
        prepare = _formatter(net, fmt)
        for precision in ("fp32", "bf16"):
            candidates[f"{precision} {fmt}"] = (prepare, run(net, precision))
    speeds = fastpath.interleaved(candidates, args.batch, args.rounds)
    base = speeds["today (fp32 channels_last)"] if phase == "features" else speeds["fp32 channels_last"]
    auto = speeds[f"{choice.precision} {choice.memory_format}"]
    rows = [{"model": model, "phase": phase, "setting": k, "img_s": v, "vs_today": v / base} for k, v in speeds.items()]
    rows.append(
        {
            "model": model,
            "phase": phase,
            "setting": f"auto → {choice.precision} {choice.memory_format} (probe {probe_s:.1f} s)",
            "img_s": auto,
            "vs_today": auto / base,
        }
    )
    return rows


def _formatter(net: nn.Module, fmt: str):
    return lambda: fastpath.set_memory_format(net, fmt)


def compile_rows(model: str, args) -> list[dict]:
    """torch.compile of the feature pass: first call (compiling) and steady speed against eager."""
    return [_compiled(model, precision, args) for precision in ("fp32", "bf16")]


def _compiled(model: str, precision: str, args) -> dict:
    torch.manual_seed(0)
    net = fastpath.set_memory_format(for_inference(build(model, False)[0]), "channels_last")
    x = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)

    def call(module):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            module(x)

    t0 = time.perf_counter()
    compiled = torch.compile(net)
    call(compiled)
    compile_s = time.perf_counter() - t0
    speeds = fastpath.interleaved(
        {"eager": ((lambda: None), lambda: call(net)), "compiled": ((lambda: None), lambda: call(compiled))},
        args.batch,
        args.rounds,
    )
    torch._dynamo.reset()
    gain = speeds["compiled"] / speeds["eager"]
    row = {
        "model": model,
        "precision": precision,
        "compile_s": compile_s,
        "eager_img_s": speeds["eager"],
        "compiled_img_s": speeds["compiled"],
        "gain": gain,
        # compiling pays once the eager pass would run longer than this
        "pays_after_s": compile_s / (1 - 1 / gain) if gain > 1 else float("inf"),
    }
    print(f"  [{model}] compile {precision}: {row}", flush=True)
    return row


def keras_rows(model: str, phase: str, args) -> list[dict]:
    """Feature pass: main's network (float32, BatchNorm as built) against the worker's
    (keras_worker.for_inference folds BatchNorm) in float32 and mixed_bfloat16, and bf16 unfolded
    so that the fold's share is visible. Training step: float32 against mixed_bfloat16."""
    import keras
    import tensorflow as tf

    from crackhpc.worker.keras_worker import APPLICATIONS, for_inference

    application = APPLICATIONS[model]
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32))
    y = tf.constant(np.random.default_rng(1).integers(0, 2, args.batch))
    candidates = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        net = application(include_top=False, weights=None, input_shape=(args.size, args.size, 3), pooling="avg")
        if phase == "features":
            for label, network in ((f"{policy} as built", net), (f"{policy} folded", for_inference(net))):
                candidates[label] = ((lambda: None), tf.function(lambda network=network: network(x, training=False)))
            continue
        inp = keras.Input((args.size, args.size, 3))
        whole = keras.Model(inp, keras.layers.Dense(2, activation="softmax", dtype="float32")(net(inp)))
        optimizer = keras.optimizers.Adam(1e-4)

        def train_step(whole=whole, optimizer=optimizer):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, whole(x, training=True)))
            grads = tape.gradient(loss, whole.trainable_variables)
            optimizer.apply_gradients(zip(grads, whole.trainable_variables))

        candidates[policy] = ((lambda: None), tf.function(train_step))
    keras.mixed_precision.set_global_policy("float32")
    speeds = fastpath.interleaved(candidates, args.batch, args.rounds)
    base = speeds["float32 as built" if phase == "features" else "float32"]
    label = f"keras:{model}"
    return [{"model": label, "phase": phase, "setting": k, "img_s": v, "vs_today": v / base} for k, v in speeds.items()]


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compile:  # cold compiles, as a job's first on a node: not inductor's cache of an earlier run
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold = tempfile.mkdtemp(prefix="crackhpc-inductor-")
        atexit.register(shutil.rmtree, cold, True)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows: list[dict] = []
    compiled: list[dict] = []

    def write() -> str:  # after every model: a run cut short keeps what it measured
        text = report(args, argv, load, rows, compiled)
        atomic.write_text(args.out, text + "\n")
        return text

    keras_started = False
    for label in args.models:
        framework, _, model = label.rpartition(":")
        if framework == "keras" and not keras_started:  # TensorFlow after torch (README: Triton)
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
            keras_started = True
        for phase in args.phases:
            print(f"[{label}] {phase}", flush=True)
            rows += keras_rows(model, phase, args) if framework == "keras" else torch_rows(model, phase, args)
        if args.compile and framework != "keras":
            compiled += compile_rows(model, args)
        write()
    print(write())
    return 0


def report(args, argv: list[str], load: float, rows: list[dict], compiled: list[dict]) -> str:
    title = "fp32 against bf16" if rows else "torch.compile on CPU"
    text = (
        f"# {title} ({dt.date.today().isoformat()})\n\n"
        f"`python -m benchmarks.precision {' '.join(argv)}`: {fastpath.cpu_label(args.threads)}, torch "
        f"{torch.__version__}, {args.size} px, batch {args.batch}, best of {args.rounds} interleaved rounds; load "
        f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} now. `vs_today`: images/s over main's fp32 "
        f"path (Keras: over float32)."
    )
    if rows:
        text += "\n\n" + table(rows, ["model", "phase", "setting", "img_s", "vs_today"])
    if compiled:
        text += "\n\n## torch.compile, feature pass\n\n" + table(
            compiled, ["model", "precision", "compile_s", "eager_img_s", "compiled_img_s", "gain", "pays_after_s"]
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
