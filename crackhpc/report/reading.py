"""Reading a sweep's run folders, where any file may be damaged, and the read cache that spares a
second report of 1,000 runs from reading their config.yaml and split.csv again."""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from .. import atomic, rundir
from ..config import Resources, validate
from ..data.layout import CLASSES
from ..errors import CrackhpcError
from ..record import PREDICTION, SweepFolder, SweepRecord

T = TypeVar("T")
HPARAMS = ("pretrained", "freeze_backbone", "epochs", "batch_size", "optimizer", "lr", "input_size", "seed", "backend")
READ_CACHE = ".report-cache.json"  # in the sweep folder: see ReadCache


def problem_text(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "binary or not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg}, line {exc.lineno}): truncated or overwritten"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"not YAML ({exc.problem}, line {exc.problem_mark.line + 1})"
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_or_note(path: Path, reader: Callable[[Path], T], notes: list[str], fix: str | None = None) -> T | None:
    """reader(path), or None and one line in `notes` naming the file, what is wrong with it and what
    to do (`fix`; by default, redo the run). A CrackhpcError already says all of that; other errors
    are the reader's words for the problem. One damaged file must not hide the other runs."""
    try:
        return reader(path)
    except CrackhpcError as exc:
        notes.append(str(exc))
    except (OSError, ValueError, csv.Error, yaml.YAMLError) as exc:  # ValueError: JSON, UTF-8, pandas, ours
        if isinstance(exc, PermissionError):
            fix = "give the report's user read permission on it"
        notes.append(f"{path}: {problem_text(exc)}; {fix or rundir.FIX_REDO.format(run=path.parent)}")
    return None


@functools.lru_cache(maxsize=64)
def _resources(text: str) -> dict:
    """What compute hours need of a resources section, validated once per distinct section: a
    sweep's runs mostly share theirs."""
    res = validate(Resources, json.loads(text), "resources")
    return {"world_size": res.world_size, "gpus_per_node": res.gpus_per_node, "cpus_per_task": res.cpus_per_task}


def read_settings(path: Path) -> dict:
    """What the report needs of a run's config.yaml: the settings, the resources, the data root and classes.
    The YAML is read as written rather than as a RunSpec: validating each of 1,000 train sections
    costs more than the rest of the report."""
    raw = rundir.load_config_yaml(path.read_bytes().decode("utf-8"))
    train = raw.get("train") if isinstance(raw, dict) else None
    if not isinstance(train, dict) or not {"framework", "model"} <= set(train):
        raise ValueError("not a run's config.yaml (no train section with framework and model)")
    try:
        resources = _resources(json.dumps(raw.get("resources") or {}, sort_keys=True, default=str))
    except CrackhpcError as exc:
        raise ValueError(str(exc)) from None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    classes = data.get("classes") or list(CLASSES)  # a run folder from before they were recorded: the crack dataset's
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"data.classes: {classes!r} is not a list of two or more class names")
    return {
        "train": {k: train.get(k) for k in ("framework", "model", *HPARAMS)},
        "resources": resources,
        "root": data.get("root"),
        "manifest": raw.get("manifest"),
        "classes": classes,
    }


CACHE_VERSION = 2  # of what the readers return: a change to read_settings or TestSplits raises it


class ReadCache:
    """What was read from run-folder files, by file identity (size, modification time, inode): a
    file is read again only once it changed, so a second report of 1,000 runs reads no config.yaml
    or split.csv. <sweep>/.report-cache.json keeps it between reports; a missing or damaged one is
    rebuilt, and one that cannot be written (a read-only results folder) is only slower."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.old: dict = {}
        self.new: dict = {}
        if path is not None and path.is_file():
            try:
                self.old = json.loads(path.read_bytes())
            except (OSError, ValueError):
                pass
        # what another version of the readers read is read again (a config.yaml read without its classes)
        ours = isinstance(self.old, dict) and self.old.get("version") == CACHE_VERSION
        self.old = self.old["entries"] if ours and isinstance(self.old.get("entries"), dict) else {}

    def get(self, path: Path, reader: Callable[[Path], T]) -> T:
        st = path.stat()
        identity, key = [st.st_size, st.st_mtime_ns, st.st_ino], f"{path.parent.name}/{path.name}"
        entry = self.old.get(key)
        value = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] == identity else reader(path)
        self.new[key] = [identity, value]
        return value

    def save(self) -> None:
        if self.path is not None and self.new != self.old:
            try:  # compact: json's C encoder, a tenth of the time of an indented dump of 1,000 runs
                cached = {"version": CACHE_VERSION, "entries": self.new}
                atomic.write_text(self.path, json.dumps(cached, separators=(",", ":")))
            except OSError:
                pass


def run_dirs(sweep_dir: Path, everything: bool = True, notes: list[str] | None = None) -> list[Path]:
    """The run folders of a sweep (SweepFolder.run_ids); a damaged sweep.json is noted, and then
    every run folder found is a run."""
    return runs_and_record(Path(sweep_dir), everything, [] if notes is None else notes)[0]


def runs_and_record(sweep_dir: Path, everything: bool, notes: list[str]) -> tuple[list[Path], SweepRecord]:
    folder = SweepFolder(sweep_dir)
    if (folder.path / rundir.CONFIG).is_file():
        raise CrackhpcError(
            f"{folder.path}: a run folder, not a sweep folder: give its sweep folder, {folder.path.parent}"
        )
    record = read_or_note(folder.record_path, lambda _: folder.load(), notes) or SweepRecord()
    if record.kind == PREDICTION:  # its summary.csv is a table of photos, which a report would replace
        raise CrackhpcError(
            f"{folder.path}: a prediction folder of `crackhpc predict`, not a sweep folder: its tables are "
            f"summary.csv and predictions.csv there, its page index.html; `crackhpc status {folder.path}` follows it"
        )
    return [folder.run(run_id) for run_id in folder.run_ids(record, everything)], record
