"""What the torch and Keras workers share, so both write the same run folder and result keys:
the decoded data of a run, the per-epoch bookkeeping, the test outputs and the result dict.
Framework-free: a Keras run must not load torch, nor a torch run TensorFlow."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import atomic, rundir, scores
from ..config import RunSpec, TrainConfig
from ..data.images import ImageCache
from ..data.layout import CLASSES, Item
from ..data.split import FIX_SPLIT, manifest_hash, read_manifest
from ..errors import DataError
from ..jobs import Stopped
from ..record import CACHE
from ..states import RunState
from .distributed import DistEnv
from .features import FeatureKey, cached_features
from .tensorboard_log import EventLog

# (position in the manifest, predicted class, probability of that class)
Record = tuple[int, int, float]


@dataclass(frozen=True)
class RunData:
    items: list[Item]
    classes: tuple[str, ...]  # in label order
    images: np.ndarray  # uint8 (N, size, size, 3), memory-mapped; zeros where undecodable
    labels: np.ndarray  # int64 (N,)
    index: dict[str, np.ndarray]  # positions of the decodable images of each split
    skipped: int
    cache_dir: Path  # shared by the sweep's runs: decoded images and backbone features

    @property
    def manifest(self) -> str:
        return manifest_hash(self.items)


def cpu_workers(spec: RunSpec) -> int:
    """Processes for decoding and loading: the task's CPUs unless the run says otherwise."""
    return spec.train.num_workers if spec.train.num_workers is not None else spec.resources.cpus_per_task


def class_names(spec: RunSpec) -> tuple[str, ...]:
    """The run's classes in label order (a run folder from before they were recorded: the crack dataset's)."""
    return tuple(spec.data.classes) if spec.data.classes else CLASSES


def load_data(spec: RunSpec, run_dir: Path, workers: int, log) -> RunData:
    """The run's split manifest decoded at the run's input size (once per sweep, then reused)."""
    path = rundir.manifest_path(run_dir, spec.manifest)
    items = read_manifest(path)
    if spec.manifest and path.stem != manifest_hash(items):  # the shared copy is named by what it holds
        raise DataError(f"{path}: does not hold the manifest its name says (edited or damaged); {FIX_SPLIT}")
    classes = class_names(spec)
    if any(item.label >= len(classes) for item in items):
        raise DataError(
            f"{path}: labels beyond the {len(classes)} classes of {run_dir / rundir.CONFIG} "
            f"({', '.join(classes)}); the two files are from different submissions: "
            + rundir.FIX_REDO.format(run=run_dir)
        )
    cache_dir = run_dir.parent / CACHE
    t0 = time.perf_counter()
    images = ImageCache.build(items, str(spec.data.root), spec.train.input_size, cache_dir / "images", workers)
    log(f"image cache ready in {time.perf_counter() - t0:.1f}s ({images.n_corrupt} unreadable images skipped)")
    index = {
        s: np.array([k for k, it in enumerate(items) if it.split == s and images.ok[k]], dtype=np.int64)
        for s in ("train", "valid", "test")
    }
    if not len(index["train"]) or not len(index["test"]):
        raise DataError(
            f"{spec.data.root}: no readable images in the train or test split "
            f"({images.n_corrupt} of {len(items)} failed to decode; run `crackhpc data verify`)"
        )
    labels = np.array([i.label for i in items], dtype=np.int64)
    return RunData(items, classes, images.images, labels, index, images.n_corrupt, cache_dir)


def per_rank_batch(batch_size: int, env: DistEnv) -> int:
    """This rank's share of the global batch (`batch_size`, as in the study)."""
    return max(1, -(-batch_size // env.world_size))


def features(
    data: RunData, key: FeatureKey, compute: Callable[[], np.ndarray], log: Callable[[str], None]
) -> tuple[np.ndarray, str]:
    """The frozen backbone's features of every image, and whether this run "computed" or "reused" them."""
    t0 = time.perf_counter()
    feats, computed = cached_features(data.cache_dir / "features", key.name(data.manifest), compute)
    status = "computed" if computed else "reused"
    log(f"features {status} ({feats.shape[1]}-d) in {time.perf_counter() - t0:.1f}s")
    return feats, status


def record_choice(run_dir: Path, env: DistEnv, log, choice) -> None:
    """How the run uses the hardware (a fastpath.Choice), in worker.log and in result.json as soon
    as it is decided: a running run already says it."""
    log(choice.describe())
    if env.is_main:
        rundir.update_result(run_dir, **choice.fields())


def bookkeeping(epoch: int, rows: list, elapsed: float, data: RunData, weights_epoch: int | None = None) -> dict:
    """What a checkpoint holds besides the weights: where the run is, on which split it trained, and
    of which epoch its weights are (the best validation epoch's, in a completed `checkpoints: best` run)."""
    return {
        "epoch": epoch,
        "rows": rows,
        "elapsed": elapsed,
        "manifest": data.manifest,
        "weights_epoch": epoch if weights_epoch is None else weights_epoch,
    }


def resume(path: Path, data: RunData, log, read: Callable[[Path], dict]) -> dict:
    """The bookkeeping of the checkpoint at `path` (a fresh start without one). `read` loads the
    framework's file into the model and optimizer and returns its bookkeeping."""
    if not path.exists():
        return {"epoch": 0, "rows": [], "elapsed": 0.0}
    state = rundir.read_checkpoint(path, read, rundir.FIX_RESTART)
    if state.get("manifest", data.manifest) != data.manifest:
        # A dataset changed between a kill and the resume re-draws the split: resuming would test on trained images.
        raise DataError(
            f"{path}: trained on another split of the data (manifest {state['manifest']}, now {data.manifest}): "
            f"the dataset changed since; restore it, or delete the checkpoint to train this run afresh"
        )
    log(f"resumed from {path.name} after epoch {state['epoch']}")
    return state


class Trainer(Protocol):
    """What `fit` and `result` need of a framework's trainer."""

    spec: RunSpec
    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    data: RunData
    feature_cache: str  # computed, reused or off
    backend: str
    device: Any  # torch.device or Keras's "cpu"/"gpu:N": recorded as its str()

    def log(self, message: str) -> None: ...
    def train_epoch(self, epoch: int) -> tuple[float, float, int]: ...
    def evaluate(self, split: str) -> tuple[float, float, list[Record]]: ...
    def save_checkpoint(self, epoch: int, rows: list, elapsed: float) -> None: ...
    def save_weights(self, path: Path, state: dict) -> None: ...  # the model alone, with bookkeeping `state`
    def load_weights(self, path: Path) -> None: ...
    def agree(self, flag: bool) -> bool: ...  # True on every rank if it is on any


@dataclass(frozen=True)
class Outcome:
    """A finished training: the epochs (this attempt's and the resumed ones) and the test split."""

    rows: list[rundir.Epoch]
    test_loss: float
    test_acc: float
    records: list[Record]
    wall_s: float
    weights_epoch: int  # the epoch whose weights the model holds (and the run keeps)


def best_epoch(rows: Sequence[rundir.Epoch]) -> rundir.Epoch | None:
    """The epoch of the best validation accuracy, the first of equals (as np.argmax)."""
    return max(rows, key=lambda r: r.val_acc, default=None)


def _record_epoch(trainer: Trainer, rows: list[rundir.Epoch], elapsed_s: float, events: EventLog | None) -> None:
    """Rank 0 writes metrics.csv and the TensorBoard events, then the checkpoint, then result.json:
    a resumed run restarts after the last epoch the checkpoint holds, and metrics.csv never lags it
    (nor do the events, which each attempt rewrites from the checkpoint's epochs)."""
    row = rows[-1]
    trainer.log(
        f"epoch {row.epoch}/{trainer.cfg.epochs}: train loss {row.train_loss:.4f} acc {row.train_acc:.4f}, "
        f"val loss {row.val_loss:.4f} acc {row.val_acc:.4f} ({row.epoch_time_s:.1f}s)"
    )
    request = None
    if trainer.env.is_main:
        atomic.write_csv(trainer.run_dir / rundir.METRICS, rundir.METRIC_COLUMNS, rows)
        if events is not None:
            events.epoch(row, trainer.cfg.lr)
        trainer.save_checkpoint(row.epoch, rows, elapsed_s)
        if trainer.cfg.checkpoints == "best" and best_epoch(rows) is row:
            trainer.save_weights(_best_path(trainer), bookkeeping(row.epoch, rows, elapsed_s, trainer.data))
        rundir.update_result(trainer.run_dir, status=RunState.RUNNING, epochs_done=row.epoch)
        request = rundir.stop_requested(trainer.run_dir)
    if trainer.agree(request is not None):  # every rank stops at the same epoch, or collectives would hang
        raise Stopped(request or {})


def fit(trainer: Trainer, start: float, state: dict) -> Outcome:
    """The loop both workers share: epochs from the checkpoint's on, then the test split."""
    rows, elapsed_before = [rundir.Epoch(*r) for r in state["rows"]], state["elapsed"]
    # No learning-rate schedule: the optimizer's rate is the configured one throughout.
    events = (
        EventLog.start(trainer.run_dir, trainer.spec, rows, trainer.cfg.lr, trainer.log)
        if trainer.env.is_main
        else None
    )
    try:
        for epoch in range(state["epoch"] + 1, trainer.cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc, n_train = trainer.train_epoch(epoch)
            val_loss, val_acc, val_records = trainer.evaluate("valid")
            seconds = time.perf_counter() - t0
            rows.append(
                rundir.Epoch(
                    epoch, train_loss, train_acc, val_loss, val_acc, seconds, (n_train + len(val_records)) / seconds
                )
            )
            _record_epoch(trainer, rows, elapsed_before + time.perf_counter() - start, events)
        # the epoch the model's weights are of: the checkpoint's, then each epoch trained
        held = rows[-1].epoch if len(rows) > state["epoch"] else state.get("weights_epoch", state["epoch"])
        weights_epoch = _restore_best(trainer, rows, held)
        test_loss, test_acc, records = trainer.evaluate("test")
    except Stopped:
        raise  # as asked (crackhpc cancel): the run did not fail, and its events say nothing of its end
    except Exception:
        if events is not None:
            events.end(len(rows), None)
        raise
    if trainer.env.is_main:
        write_misclassified(trainer.run_dir, trainer.data, records)
    if events is not None:
        best = best_epoch(rows)
        final = {"best_val_acc": best.val_acc if best else float("nan"), "test_acc": test_acc, "test_loss": test_loss}
        events.end(len(rows), final)
    return Outcome(rows, test_loss, test_acc, records, elapsed_before + time.perf_counter() - start, weights_epoch)


def _best_path(trainer: Trainer) -> Path:
    return trainer.run_dir / rundir.BEST[trainer.cfg.framework]


def _restore_best(trainer: Trainer, rows: list[rundir.Epoch], held: int) -> int:
    """`checkpoints: best`: the best validation epoch's weights back in the model (every rank), so
    that the test split scores the weights the run keeps. The epoch the model's weights are of."""
    best = best_epoch(rows)
    if trainer.cfg.checkpoints != "best" or best is None:
        return held
    if best.epoch != held:
        path = _best_path(trainer)
        rundir.read_checkpoint(path, trainer.load_weights, rundir.FIX_RESTART)
        trainer.log(f"testing the weights of epoch {best.epoch}, the best by validation accuracy ({path.name})")
    return best.epoch


def finish(trainer: Trainer, outcome: Outcome) -> dict:
    """Rank 0, once the run has its test numbers: the checkpoint becomes what `checkpoints` keeps,
    the weights alone (no optimizer state: two thirds of an Adam checkpoint), or nothing; result.json's
    `checkpoint` fields say which. Until then a requeued or resumed run has its full checkpoint."""
    policy, path = trainer.cfg.checkpoints, trainer.run_dir / rundir.CHECKPOINT[trainer.cfg.framework]
    if policy == "none":
        path.unlink(missing_ok=True)
    else:
        last = outcome.rows[-1]
        state = bookkeeping(last.epoch, outcome.rows, outcome.wall_s, trainer.data, outcome.weights_epoch)
        trainer.save_weights(path, state)
    _best_path(trainer).unlink(missing_ok=True)
    return {
        "checkpoint": policy,
        "checkpoint_epoch": None if policy == "none" else outcome.weights_epoch,
        "checkpoint_bytes": path.stat().st_size if path.is_file() else 0,
    }


def accuracy(records: Sequence[Record], labels: np.ndarray) -> float:
    return sum(1 for pos, pred, _ in records if pred == labels[pos]) / max(len(records), 1)


def write_misclassified(run_dir: Path, data: RunData, records: Iterable[Record]) -> None:
    wrong = [
        (data.items[p].path, data.classes[data.labels[p]], data.classes[pred], round(prob, 6))
        for p, pred, prob in records
        if pred != data.labels[p]
    ]
    atomic.write_csv(run_dir / rundir.MISCLASSIFIED, rundir.MISCLASSIFIED_COLUMNS, wrong)


def state_digest(arrays: Iterable[np.ndarray]) -> str:
    """Bitwise fingerprint of a model's parameters: data-parallel replicas must agree on it."""
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def result(trainer: Trainer, outcome: Outcome, params_in_sync: bool | None) -> dict:
    """result.json's numbers of a completed run."""
    data, rows = trainer.data, outcome.rows
    best = best_epoch(rows)
    n_images = trainer.cfg.epochs * (len(data.index["train"]) + len(data.index["valid"]))
    wall = outcome.wall_s
    out = {
        "epochs_done": len(rows),
        "best_val_acc": best.val_acc if best else None,
        "best_epoch": best.epoch if best else None,
        "test_loss": outcome.test_loss,
        "test_acc": outcome.test_acc,
        "n_train": int(len(data.index["train"])),
        "n_valid": int(len(data.index["valid"])),
        "n_test": len(outcome.records),
        **scores.result_fields(
            scores.confusion_matrix(len(data.classes), [(int(data.labels[p]), pred) for p, pred, _ in outcome.records]),
            data.classes,
        ),
        "skipped_images": data.skipped,
        "wall_time_s": round(wall, 3),
        "images_per_s": round(n_images / wall, 2) if wall > 0 else None,
        "world_size": trainer.env.world_size,
        "device": str(trainer.device),
        "feature_cache": trainer.feature_cache,
        "backend": trainer.backend,
    }
    if params_in_sync is not None:
        out["params_in_sync"] = params_in_sync
    if trainer.env.is_main:
        out.update(finish(trainer, outcome))
    return out
