"""How a run uses the hardware it lands on: fp32 or bf16 autocast, channels_last or contiguous
memory, and torch.compile, decided per (framework, model, input size, phase, device).

Why a probe and not a list of models: on CPUs with bf16 units (AMX, AVX512-BF16; Arm's BF16)
bf16 autocast ran 1.5-3.4x as fast as fp32 for 224 px convolutions on this project's machine, but
slower for EfficientNet-Lite0's training step at 64 px (0.6-0.7x), and bf16 is slower everywhere on CPUs without
the units; which memory format wins also changes with the network and the size. So on a CPU the
worker times a few batches of the run's own network at the run's input size in each candidate
setting, interleaved so that other load on the node weighs on each alike, and keeps the fastest.
bf16 must win by MARGIN: it keeps 8 bits of mantissa, worth it only for a clear gain; so must
contiguous memory over channels_last, the default before the probe.
The timings are cached in the sweep's cache folder per (framework, model, input size, phase,
batch, device, threads), so every run of a sweep and every rank of a job takes the same decision
(the feature cache, keyed by precision, relies on that), and the probe is paid once.

On a GPU `auto` is bf16 autocast and channels_last without a probe (tensor cores). The CPU's
units are read from /proc/cpuinfo; CRACKHPC_CPU_BF16=0 or 1 overrides that reading (a CPU
that the kernel misreports, and the tests of both branches).

This module imports no framework at load: torch_choice and keras_choice import theirs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .. import atomic
from ..config import TrainConfig
from ..errors import CrackhpcError

ENV_BF16 = "CRACKHPC_CPU_BF16"
BF16_UNITS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 flags; `bf16` in an Arm CPU's Features line
FORMATS = ("channels_last", "contiguous")
MARGIN = 1.1  # what bf16 (or contiguous memory) must gain over fp32 (over channels_last) to be chosen
PROBE_BATCH = 8
PROBE_ROUNDS = 3
# A phase that pushes fewer images than this many times the probe's own is not probed (a smoke
# run, a test): it keeps fp32 (or the precision it sets) and channels_last.
PROBE_PAYS = 10
# Why `compile: auto` is off (README, Speed; benchmarks/results/compile.md): measured on this
# project's two CPUs; on a GPU, benchmarks/gpu.sh measures it.
COMPILE_OFF = {
    "features": "auto: off, compiling the feature pass took 8-103 s and ran it 0.72-1.79x as fast on two CPUs "
    "measured, a loss as often as a gain on one (GPU: not measured yet); compile: true where it was measured to pay",
    "train": "auto: off, the training step ran 0.92x as fast on CPU here after 83 s of compiling",
}


@dataclass(frozen=True)
class Job:
    """What a decision depends on. phase: `features` (a frozen backbone's inference pass, also
    predict's) or `train` (forward and backward). `images`: how many the phase will push through."""

    framework: str
    model: str
    input_size: int
    phase: str
    precision: str  # the run's setting: auto | fp32 | bf16
    compile: bool | str  # auto | True | False
    batch: int
    images: int

    @classmethod
    def of(cls, cfg: TrainConfig, phase: str, images: int) -> Job:
        return cls(cfg.framework, cfg.model, cfg.input_size, phase, cfg.precision, cfg.compile, cfg.batch_size, images)

    @property
    def probe_batch(self) -> int:
        return max(1, min(PROBE_BATCH, self.batch))


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16
    precision_reason: str
    memory_format: str  # channels_last | contiguous
    compile: bool = False
    compile_reason: str = "compile: false in the run's settings"

    def fields(self) -> dict:
        """The keys result.json records."""
        return {
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "memory_format": self.memory_format,
            "compile": self.compile,
            "compile_reason": self.compile_reason,
        }

    def describe(self) -> str:
        """The worker.log line."""
        return (
            f"precision {self.precision} ({self.precision_reason}); memory {self.memory_format}; "
            f"compile {'on' if self.compile else 'off'} ({self.compile_reason})"
        )


# -- the CPU ------------------------------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU has bf16 units, and what says so."""
    forced = os.environ.get(ENV_BF16)
    if forced is not None:
        if forced not in ("0", "1"):
            raise CrackhpcError(
                f"{ENV_BF16}={forced!r}: 1 (this CPU has bf16 units), 0 (it has none) or unset (read /proc/cpuinfo)"
            )
        return forced == "1", f"{ENV_BF16}={forced}"
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    units = [u for u in BF16_UNITS if u in flags]
    if units:
        return True, " ".join(units)
    return False, "no amx_bf16, avx512_bf16 or bf16 in /proc/cpuinfo" if info else "no /proc/cpuinfo"


def cpu_label(threads: int) -> str:
    name = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    return f"cpu {name} ({cpu_bf16()[1]}), {threads} thread{'s' if threads != 1 else ''}"


# -- the probe ----------------------------------------------------------------------------
Candidate = tuple[Callable[[], None], Callable[[], None]]  # (prepare, one batch): only the batch is timed


def interleaved(candidates: dict[str, Candidate], images: int, rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """Images/s of each candidate: a warm-up round, then `rounds` rounds taking each in turn, the
    best of each kept (load from other processes only ever slows a batch down). A `prepare` that
    differs from the previous candidate's (another memory format: new weight tensors, which the
    convolution library lays out again on their first use) is followed by an untimed batch, as a
    run pays that once; candidates sharing one `prepare` object should be adjacent."""
    best = dict.fromkeys(candidates, math.inf)
    last = None
    for round_ in range(rounds + 1):
        for name, (prepare, batch) in candidates.items():
            if prepare is not last:
                prepare()
                if round_:  # the warm-up round's batch is untimed anyway
                    batch()
                last = prepare
            t0 = time.perf_counter()
            batch()
            if round_:
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: round(images / max(s, 1e-9), 2) for name, s in best.items()}


def probe(
    cache_dir: Path | None, key: str, candidates: list[str], measure: Callable[[list[str]], dict[str, float]]
) -> tuple[dict[str, float], bool]:
    """(timings of `candidates`, whether any were measured here). Those another run of the sweep
    measured come from the cache (a run that sets its precision reads auto's timings); the rest
    are measured under the cache's lock, so concurrent tasks wait for one probe instead of each
    running its own on the same cores."""
    if cache_dir is None:
        return measure(candidates), True
    folder = Path(cache_dir) / "fastpath"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    with FileLock(str(path.with_suffix(".lock"))):
        saved: dict[str, float] = {}
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            if found.get("key") == key and isinstance(found.get("timings"), dict):
                saved = found["timings"]
        except (OSError, ValueError):
            pass  # none yet, or damaged: it is derived data, measured again
        missing = [c for c in candidates if c not in saved]
        if missing:
            saved.update(measure(missing))
            atomic.write_text(path, json.dumps({"key": key, "timings": saved}, indent=1))
        return {c: saved[c] for c in candidates}, bool(missing)


def _precisions(setting: str, device_is_cpu: bool) -> tuple[list[str], str]:
    """The precisions to consider, and why only fp32 where that is all."""
    if setting != "auto":
        return [setting], f"precision: {setting} in the run's settings"
    if not device_is_cpu:
        return ["bf16"], "auto on a GPU: bf16 autocast"
    units, why = cpu_bf16()
    return (["fp32", "bf16"], why) if units else (["fp32"], f"auto: fp32, this CPU has no bf16 units ({why})")


def _decide(job: Job, timings: dict[str, float], where: str, fixed_reason: str) -> tuple[str, str, str]:
    """(precision, memory format, reason) from a probe's timings ("precision/format" -> img/s).
    Each precision keeps channels_last (the default before the probe) unless contiguous wins by
    MARGIN; then bf16 must win by MARGIN over fp32: timings of a few batches move with the load
    on a shared node, and a change should be worth that noise."""
    best: dict[str, tuple[float, str]] = {}
    for precision in ("fp32", "bf16"):
        by_format = {f: timings[f"{precision}/{f}"] for f in FORMATS if f"{precision}/{f}" in timings}
        if by_format:
            fmt = (
                "contiguous"
                if by_format.get("contiguous", 0) >= MARGIN * by_format.get("channels_last", 0)
                else FORMATS[0]
            )
            best[precision] = (by_format[fmt], fmt)
    if len(best) == 1:
        ((precision, (_, fmt)),) = best.items()
        return precision, fmt, fixed_reason
    ratio = best["bf16"][0] / best["fp32"][0]
    precision = "bf16" if ratio >= MARGIN else "fp32"
    reason = (
        f"auto: bf16 ran {ratio:.2f}x as fast as fp32 ({'>=' if precision == 'bf16' else '<'} {MARGIN}x) "
        f"in a probe of {job.model} at {job.input_size} px ({job.phase}, {where})"
    )
    return precision, best[precision][1], reason


def _compile(job: Job) -> tuple[bool, str]:
    """Whether to torch.compile, and why."""
    if job.compile != "auto":
        return bool(job.compile), f"compile: {str(job.compile).lower()} in the run's settings"
    if job.framework != "torch":
        return False, "auto: torch.compile is torch's"
    return False, COMPILE_OFF[job.phase]


def choose(job: Job, cpu: str | None, measure: Callable[[list[str]], dict[str, float]], cache_dir, log) -> Choice:
    """The decision for `job` on `cpu` (cpu_label(threads); None: a GPU). `measure(candidates)`
    times the candidates ("precision/format") on the real network; called only on a cache miss,
    and not at all where there is one candidate (a GPU; a Keras run with its precision set)."""
    precisions, fixed_reason = _precisions(job.precision, cpu is not None)
    formats = FORMATS if job.framework == "torch" and cpu is not None else FORMATS[:1]  # Keras is NHWC
    candidates = [f"{p}/{f}" for p in precisions for f in formats]
    probe_images = len(candidates) * (PROBE_ROUNDS + 1) * job.probe_batch
    if len(candidates) == 1 or job.images < PROBE_PAYS * probe_images:
        precision = "fp32" if "fp32" in precisions else precisions[0]
        if len(precisions) > 1:
            fixed_reason = (
                f"auto: fp32, {job.images} images are too few for a probe of {probe_images} to pay "
                f"(bf16 is probed from {PROBE_PAYS * probe_images} on)"
            )
        return Choice(precision, fixed_reason, formats[0], *_compile(job))
    key = f"{job.framework}|{job.model}|{job.input_size} px|{job.phase}|batch {job.probe_batch}|{cpu}"
    t0 = time.perf_counter()
    timings, measured = probe(cache_dir, key, candidates, measure)
    log(
        f"probe of {job.model} at {job.input_size} px ({job.phase}, batch {job.probe_batch}, {cpu}): "
        + ", ".join(f"{k} {v:.1f} img/s" for k, v in timings.items())
        + (f" (measured in {time.perf_counter() - t0:.1f}s)" if measured else " (cached)")
    )
    precision, memory_format, reason = _decide(job, timings, str(cpu), fixed_reason)
    return Choice(precision, reason, memory_format, *_compile(job))


# -- the frameworks -----------------------------------------------------------------------
def torch_choice(job: Job, module, device, cache_dir: Path | None, log) -> Choice:
    """The decision for a torch module on uint8 NHWC batches (Normalize first), as it will run:
    `features` in eval mode without gradients, `train` in its current mode with backward. The
    probe leaves the module as it found it: buffers (BatchNorm's statistics), gradients and the
    random number generator are restored, so a cached probe and a fresh one train alike."""
    import torch

    if device.type != "cpu":
        return choose(job, None, lambda c: {}, cache_dir, log)

    def measure(candidates: list[str]) -> dict[str, float]:
        b, s = job.probe_batch, job.input_size
        x = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        buffers = [(buf, buf.detach().clone()) for buf in module.buffers()]

        formats = {fmt: (lambda fmt=fmt: set_memory_format(module, fmt)) for fmt in FORMATS}

        def candidate(name: str) -> Candidate:
            precision, fmt = name.split("/")

            def batch() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    if job.phase == "features":
                        with torch.no_grad():
                            module(x)
                    else:
                        module(x).float().sum().backward()

            return formats[fmt], batch

        try:
            with torch.random.fork_rng(devices=[]):  # one memory format after the other: fewer re-layouts
                ordered = sorted(candidates, key=lambda name: FORMATS.index(name.split("/")[1]))
                return interleaved({name: candidate(name) for name in ordered}, b)
        finally:
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
            for p in module.parameters():
                p.grad = None

    return choose(job, cpu_label(torch.get_num_threads()), measure, cache_dir, log)


def set_memory_format(module, name: str):
    """`module` with its weights in the memory format of that name (Choice.memory_format), and
    its submodules that make the network's input (torch_models.Normalize: a `memory_format`
    attribute) making it in that format: a convolution runs channels_last if its input or its
    weight is channels_last, so both must change."""
    import torch

    fmt = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[name]
    for sub in module.modules():
        if hasattr(sub, "memory_format"):
            sub.memory_format = fmt
    return module.to(memory_format=fmt)


def torch_autocast(choice: Choice):
    """The dtype for torch.autocast, None for fp32."""
    import torch

    return torch.bfloat16 if choice.precision == "bf16" else None


def keras_policy(choice: Choice) -> str:
    return "mixed_bfloat16" if choice.precision == "bf16" else "float32"  # bf16 needs no loss scaling


def keras_choice(
    job: Job, build: Callable[[], object], device: str, threads: int, cache_dir: Path | None, log
) -> Choice:
    """The decision for a Keras network that `build()` makes under the current global policy
    (the backbone for `features`, the whole model for `train`); the global policy is restored."""
    import keras
    import numpy as np
    import tensorflow as tf

    if device != "cpu":
        return choose(job, None, lambda c: {}, cache_dir, log)

    def measure(candidates: list[str]) -> dict[str, float]:
        b, s = job.probe_batch, job.input_size
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (b, s, s, 3)).astype(np.float32))
        before = keras.mixed_precision.global_policy().name
        steps: dict[str, Candidate] = {}
        try:
            for name in candidates:
                keras.mixed_precision.set_global_policy(keras_policy(Choice(name.split("/")[0], "", "")))
                net = build()
                if job.phase == "features":
                    fn = tf.function(lambda net=net: net(x, training=False))
                else:

                    def fn(net=net):
                        with tf.GradientTape() as tape:
                            loss = tf.reduce_sum(tf.cast(net(x, training=True), tf.float32))
                        return tape.gradient(loss, net.trainable_variables)

                    fn = tf.function(fn)
                steps[name] = (lambda: None, fn)
            return interleaved(steps, b)
        finally:
            keras.mixed_precision.set_global_policy(before)

    return choose(job, cpu_label(threads), measure, cache_dir, log)
