"""The run folder: the one place a run's inputs and outputs live.

<results>/<sweep>/<run_id>/
    config.yaml        resolved settings (the worker reads only this), naming the run's split manifest:
                       ../splits/<hash>.csv, the sweep's one copy (crackhpc.record); runs of sweeps
                       from before it was shared have their own split.csv here
    metrics.csv        one row per epoch
    result.json        status (see crackhpc.states) and final numbers
    misclassified.csv  test images the model got wrong
    checkpoint.pt      last finished epoch with the optimizer's state, for resume and requeue
                       (checkpoint.npz for Keras); once the run completes, the weights its
                       `checkpoints` setting keeps (last or best epoch), without the optimizer, or none
    best.pt            `checkpoints: best`: the best validation epoch's weights, while the run is live
                       (best.npz for Keras)
    worker.log         the worker's log
    tensorboard/       the worker's TensorBoard events: per-epoch scalars and the HParams record
    job.sbatch         the plain sbatch script (`crackhpc sbatch`), its logs slurm-<job id>.out/.err
    stop.json          a request to stop at the next epoch (`crackhpc cancel`), until the run's next attempt
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from . import atomic, procs
from .config import RunSpec, validate
from .errors import ConfigError, CrackhpcError, DamagedFileError
from .states import RunState

CONFIG, SPLIT, METRICS, RESULT, MISCLASSIFIED, LOG = (
    "config.yaml",
    "split.csv",
    "metrics.csv",
    "result.json",
    "misclassified.csv",
    "worker.log",
)
CHECKPOINT = {"torch": "checkpoint.pt", "keras": "checkpoint.npz"}
BEST = {"torch": "best.pt", "keras": "best.npz"}
TENSORBOARD = "tensorboard"
SBATCH_SCRIPT, SBATCH_LOG = "job.sbatch", "slurm-%j"
STOP = "stop.json"
CLEANED = "checkpoint_removed"  # result.json: when `crackhpc clean --checkpoints` removed the run's weights
MISCLASSIFIED_COLUMNS = ("path", "true", "predicted", "probability")


class Epoch(NamedTuple):
    """One row of metrics.csv, by name (checkpoints keep them as plain lists: `Epoch(*row)`)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    epoch_time_s: float
    images_per_s: float


METRIC_COLUMNS = Epoch._fields
FIX_RERUN = "delete it and rerun the run with `crackhpc sweep --retry-failed`"
# A damaged config.yaml (or other input) of a run: without result.json the run is resubmitted, and
# its config.yaml and split.csv are written again.
FIX_REDO = "delete {run}/result.json and run `crackhpc sweep <sweep file> --retry-failed`, which redoes the run"
# libyaml's parser where PyYAML has it: `status` and `report` read a config.yaml per run (1,000 of them).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=256)
def _yaml_block(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config_yaml(text: str):
    """yaml.safe_load of a block-style mapping, one top-level key at a time, each distinct block
    parsed once: the runs of a sweep share their data and resources blocks, which are two thirds of
    a config.yaml. Anything else (a block that is not a mapping or does not parse alone) is parsed
    whole, so a damaged file fails as it would."""
    blocks: list[str] = []
    for line in text.splitlines(keepends=True):
        if blocks and line[:1] in " -#\t\r\n":  # indented, a list item, a comment, blank: the same key
            blocks[-1] += line
        else:
            blocks.append(line)
    raw: dict = {}  # its values are shared with the cache: read them, never change them
    try:
        for block in blocks:
            part = _yaml_block(block)
            if not isinstance(part, dict) or raw.keys() & part.keys():
                raise ValueError
            raw.update(part)
    except (ValueError, yaml.YAMLError):
        return yaml.load(text, Loader=_Loader)
    return raw


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.lru_cache(maxsize=256)
def _dumped(key: str, value_json: str) -> str:
    return yaml.dump({key: json.loads(value_json)}, Dumper=_Dumper, sort_keys=False)


def dump_config_yaml(plain: dict) -> str:
    """yaml.safe_dump(plain, sort_keys=False), one top-level key at a time, each distinct block
    dumped once: a sweep's runs share their data and resources blocks (load_config_yaml's mirror;
    10,000 config.yaml at submission)."""
    return "".join(_dumped(key, json.dumps(value)) for key, value in plain.items())


def write_config(run_dir: Path, spec: RunSpec) -> None:
    atomic.write_text(run_dir / CONFIG, dump_config_yaml(spec.to_plain()))


def read_config(run_dir: str | Path) -> RunSpec:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a crackhpc run folder (config.yaml missing)")
    fix = FIX_REDO.format(run=run_dir)
    try:
        raw = load_config_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFileError(path, "binary, not YAML text", fix) from None
    except yaml.YAMLError as exc:
        raise DamagedFileError(path, f"not valid YAML ({getattr(exc, 'problem', exc)})", fix) from None
    if not isinstance(raw, dict):
        raise DamagedFileError(path, "not a run's settings", fix)
    try:
        return validate(RunSpec, raw, str(path))
    except ConfigError as exc:  # edited by hand: checked like the sweep it came from
        raise DamagedFileError(path, str(exc)[len(str(path)) + 2 :], fix) from None


def manifest_path(run_dir: str | Path, manifest: str | None) -> Path:
    """The run's split manifest, from its config.yaml's `manifest` (RunSpec.manifest): relative to
    the run folder, so a sweep folder moved or copied whole still finds it; without one (sweeps from
    before the manifest was shared), the run folder's own split.csv."""
    return Path(run_dir) / (manifest or SPLIT)


def manifest_of(run_dir: str | Path) -> Path:
    """manifest_path from the run's config.yaml, read as written (no validation: the report asks
    this of 1,000 runs); where config.yaml cannot be read (whoever reads it says so), the run
    folder's own split.csv."""
    try:
        raw = load_config_yaml((Path(run_dir) / CONFIG).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    manifest = raw.get("manifest") if isinstance(raw, dict) else None
    return manifest_path(run_dir, manifest if isinstance(manifest, str) else None)


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """The run's result.json, or {"status": "pending"} when the worker has not started; a
    DamagedFileError when it cannot be read."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        return {"status": RunState.PENDING.value}
    return atomic.read_json(path, FIX_RERUN)


def state_of(result: dict) -> RunState:
    return RunState.parse(str(result.get("status", RunState.PENDING.value)))


def _result_or_empty(run_dir: str | Path) -> dict[str, Any]:
    """result.json for a writer: a damaged one is replaced (what it said is lost already)."""
    try:
        return read_result(run_dir)
    except DamagedFileError:
        return {}


def update_result(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    return _write_result(run_dir, {**_result_or_empty(run_dir), **fields})


def reset_result(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """A new attempt's result.json, keeping only the earlier attempts' requeue count (and no stop
    request of an earlier attempt)."""
    (Path(run_dir) / STOP).unlink(missing_ok=True)
    return _write_result(run_dir, {"requeues": _result_or_empty(run_dir).get("requeues", 0), **fields})


def request_stop(run_dir: str | Path, state: RunState, why: str) -> None:
    """Ask the run's worker to stop at its next epoch and record `state` (or not to start at all):
    the one way to reach a worker that this process cannot signal, or that it could not see start."""
    atomic.write_json(Path(run_dir) / STOP, {"state": state.value, "why": why, "at": now()})


def stop_requested(run_dir: str | Path) -> dict | None:
    """The stop request of the current attempt ({"state", "why", "at"}), if any; a damaged one still
    asks to stop."""
    path = Path(run_dir) / STOP
    if not path.is_file():
        return None
    try:
        return atomic.read_json(path, "")
    except DamagedFileError:
        return {"state": RunState.CANCELLED.value, "why": f"{path} (damaged)"}


def _write_result(run_dir: str | Path, result: dict) -> dict:
    result = {k: (v.value if isinstance(v, RunState) else v) for k, v in result.items()}
    result.update(updated=now(), host=procs.HOST)
    atomic.write_json(Path(run_dir) / RESULT, result)
    return result


def read_epochs(run_dir: str | Path) -> list[Epoch]:
    """metrics.csv's rows (none before the first epoch); a DamagedFileError if it cannot be read."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [Epoch(int(r["epoch"]), *(float(r[c]) for c in METRIC_COLUMNS[1:])) for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
        # The run's result stands without it; only its learning curves are lost.
        fix = "the run's learning curves are lost; delete the file, or " + FIX_REDO.format(run=run_dir)
        raise DamagedFileError(path, f"not a metrics table ({type(exc).__name__})", fix) from None


def is_completed(run_dir: str | Path) -> bool:
    try:
        return state_of(read_result(run_dir)) is RunState.COMPLETED
    except DamagedFileError:
        return False


T = TypeVar("T")
# A checkpoint that cannot be read, of a run still training and of a completed run
FIX_RESTART = "delete it to restart the run from its first epoch, then `crackhpc sweep --retry-failed`"
FIX_RETRAIN = "the trained weights are lost: " + FIX_REDO


def read_checkpoint(path: Path, read: Callable[[Path], T], fix: str) -> T:
    """`read(path)`, the framework loading a checkpoint (and the model taking its weights), or one
    DamagedFileError naming the file and `fix`: truncated, overwritten or of another model, each
    framework has its own words for it (torch's RuntimeError, numpy's BadZipFile, an OSError)."""
    try:
        return read(path)
    except CrackhpcError:
        raise
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        raise DamagedFileError(path, f"cannot be read ({type(exc).__name__}: {why})", fix) from None
