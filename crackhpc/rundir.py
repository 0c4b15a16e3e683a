"""The run folder: the one place a run's inputs and outputs live.

    <results>/<sweep>/<run_id>/
        config.yaml        resolved settings (the worker reads only this)
        split.csv          the manifest: which image is in which split
        metrics.csv        one row per epoch
        result.json        status (pending/running/completed/failed) and final numbers
        misclassified.csv  test images the model got wrong
        checkpoint.pt      last finished epoch, for resume and requeue
        worker.log         the worker's log
"""
from __future__ import annotations

import datetime as _dt
import socket
from pathlib import Path
from typing import Any

import yaml

from . import atomic
from .config import DataConfig, Resources, TrainConfig, from_plain
from .grid import RunSpec

CONFIG, SPLIT, METRICS, RESULT, MISCLASSIFIED, LOG = (
    "config.yaml", "split.csv", "metrics.csv", "result.json", "misclassified.csv", "worker.log")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "images_per_s")
TERMINAL = ("completed", "failed")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_config(run_dir: Path, spec: RunSpec) -> None:
    atomic.write_text(run_dir / CONFIG, yaml.safe_dump(spec.to_plain(), sort_keys=False))


def read_config(run_dir: str | Path) -> RunSpec:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a crackhpc run folder (config.yaml missing)")
    raw = yaml.safe_load(path.read_text())
    return RunSpec(
        run_id=raw["run_id"],
        sweep=raw["sweep"],
        train=from_plain(TrainConfig, raw["train"], f"{path}: train"),
        data=from_plain(DataConfig, raw["data"], f"{path}: data"),
        resources=from_plain(Resources, raw["resources"], f"{path}: resources"),
    )


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """The run's result.json, or {"status": "pending"} when the worker has not started."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        return {"status": "pending"}
    return atomic.read_json(path)


def update_result(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    result = read_result(run_dir)
    result.update(fields, updated=now(), host=socket.gethostname())
    atomic.write_json(Path(run_dir) / RESULT, result)
    return result


def is_completed(run_dir: str | Path) -> bool:
    return read_result(run_dir).get("status") == "completed"
