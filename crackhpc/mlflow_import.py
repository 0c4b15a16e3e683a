"""`crackhpc report results/<sweep> --mlflow [URI]`: a sweep imported into MLflow, from the login node.

In MLflow's terms: an experiment named after the sweep; in it a parent run per sweep folder, which
carries summary.csv, comparison.csv, report.md/.html and the report's figures; under it one run per
crackhpc run, named by its run id:
- params: the settings of its config.yaml (train's by their names, the others as `data.root`,
  `resources.cpus_per_task`...; lists and numbers as JSON);
- metrics: the columns of metrics.csv per epoch (step = the epoch), then the final numbers of
  summary.csv (test accuracy and loss, best validation accuracy, wall time...) at the last epoch;
- tags: `crackhpc.run_id`, `crackhpc.state` (as `crackhpc status` says), `crackhpc.job_id`,
  `crackhpc.git_commit`, `crackhpc.host`, `crackhpc.gpu`, `crackhpc.error`; the MLflow status follows
  the state (pending: SCHEDULED, completed: FINISHED, cancelled: KILLED, failed or killed: FAILED);
- artifacts: config.yaml and the run's figures in report/, where the report drew them.

Idempotent: a run is found again by its `crackhpc.run_id` tag under its sweep's parent run and gets
only what changed (later epochs, its final numbers, its state, its figures); an unchanged run costs
no call. A run whose metrics no longer continue what was logged (retrained from its first epoch)
replaces its MLflow run. MLflow keeps a run's first value of each param.

Workers never talk to MLflow: compute nodes often have no network, and SQLite's locking is
unreliable across NFS clients, so the one writer is this import (on the login node, or the sweep's
report job), one at a time per store: a lock file beside the SQLite database (`mlflow.db.lock`; the
report jobs of two sweeps may end together), or per sweep folder for a tracking server
(`.mlflow.lock`: two imports of one sweep would both create its runs).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from . import rundir
from .errors import CrackhpcError
from .record import SweepFolder, SweepRecord
from .report.build import REPORT_DIR, REPORT_HTML, REPORT_MD, file_identity
from .report.evidence import read_metrics
from .report.reading import read_or_note, read_settings
from .report.tables import RESULT_FIX, read_run_result
from .states import RunState
from .status import RunStatus, run_statuses
from .then_report import absolute

DB, ARTIFACTS, LOCK = "mlflow.db", "mlartifacts", ".mlflow.lock"
LOCK_WAIT_S = 600  # another import of 1,000 runs takes a minute or two
# MLflow's limits (mlflow.utils.validation): per log_batch call, and on the length of a value.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
MAX_PARAM_VALUE, MAX_TAG_VALUE = 6000, 8000
RUN_ID, SWEEP_KEY = "crackhpc.run_id", "crackhpc.sweep_key"
# "N digest": the first N epochs of metrics.csv are logged; the digest tells whether metrics.csv still begins with them.
EPOCHS = "crackhpc.epochs_logged"
UPLOADED = "crackhpc.artifacts"  # which artifact files (by size and modification time) were uploaded
PARENT = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
# summary.csv's final numbers, logged at the last epoch (images_per_s is also per epoch: not repeated)
FINAL = (
    "best_val_acc",
    "test_acc",
    "test_loss",
    "wall_time_s",
    "compute_hours",
    "tp",
    "fp",
    "fn",
    "tn",
    "macro_f1",
    "requeues",
    "skipped_images",
    "slurm_elapsed_s",
    "mem_peak_gb",
    "cpu_efficiency",
)
STATUS = {
    RunState.COMPLETED: "FINISHED",
    RunState.CANCELLED: "KILLED",
    RunState.PRUNED: "KILLED",  # stopped early by its search, as MLflow's Optuna integration marks pruned trials
    RunState.PENDING: "SCHEDULED",
    RunState.REQUEUED: "SCHEDULED",
    RunState.RUNNING: "RUNNING",
}  # any other state (failed, timeout, out of memory...) is FAILED
TERMINAL = ("FINISHED", "FAILED", "KILLED")
AGAIN = "the report files are written and runs imported so far are kept; run `crackhpc report {sweep} --mlflow {uri}` again (it updates, never duplicates)"


def default_uri(sweep_dir: str | Path) -> str:
    """SQLite in the results folder (MLflow's own default backend since 3.7)."""
    return f"sqlite:///{Path(sweep_dir).resolve().parent / DB}"


def ui_hint(uri: str, experiment_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"mlflow ui --backend-store-uri {uri}"


@dataclass
class Wanted:
    """What one MLflow run should hold: a crackhpc run's, or the sweep's parent run."""

    name: str
    status: str
    start_ms: int | None = None
    end_ms: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    rows: list[tuple] = field(default_factory=list)  # metrics.csv
    epoch_ms: list[int] = field(default_factory=list)  # a timestamp per row
    final: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, its folder among the artifacts)

    def digest(self, n: int) -> str:
        return hashlib.sha1(json.dumps(self.rows[:n]).encode()).hexdigest()[:16]

    def continues(self, run) -> bool:
        """Whether what `run` has logged is the start of these epochs (nothing logged: yes)."""
        logged = run.data.tags.get(EPOCHS)
        if not logged:
            return True
        n, _, digest = logged.partition(" ")
        return n.isdigit() and int(n) <= len(self.rows) and self.digest(int(n)) == digest

    def metrics(self, run, fresh: bool) -> list:
        """The epochs after those `run` has logged, and the final numbers it lacks (all of them
        when there are new epochs: they are logged at the last one)."""
        from mlflow.entities import Metric

        done = 0 if fresh or not run.data.tags.get(EPOCHS) else int(run.data.tags[EPOCHS].split()[0])
        columns = rundir.METRIC_COLUMNS
        out = [
            Metric(key, float(value), ms, int(row[0]))
            for row, ms in zip(self.rows[done:], self.epoch_ms[done:])
            for key, value in zip(columns[1:], row[1:])
        ]
        step, ms = len(self.rows), self.end_ms or _now_ms()
        have = run.data.metrics if done == step else {}  # the final numbers go at the last epoch
        return out + [Metric(k, v, ms, step) for k, v in self.final.items() if have.get(k) != v]

    def uploaded(self) -> str:
        files = [[str(p), folder, *(file_identity(p) or [])] for p, folder in self.artifacts]
        return hashlib.sha1(json.dumps(files).encode()).hexdigest()[:16]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(iso: Any) -> int | None:
    try:
        return int(_dt.datetime.fromisoformat(str(iso)).timestamp() * 1000)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def params(config: dict) -> dict[str, str]:
    """config.yaml's settings as MLflow params: train's by their names, the other sections' as
    `section.key` (nested ones `section.key.sub`); strings as they are, other values as JSON."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = _text(value)[:MAX_PARAM_VALUE]

    walk("", config.get("train") or {})
    for section in ("data", "resources"):
        walk(section, config.get(section) or {})
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def wanted_run(folder: SweepFolder, row: dict, status: RunStatus, notes: list[str]) -> Wanted | None:
    """What the MLflow run of one crackhpc run should hold, read with the report's readers; None
    (and its files' problems in `notes`, in the report's words) for a damaged run folder."""
    run_dir = folder.run(row["run_id"])
    mine: list[str] = []
    result = read_or_note(run_dir / rundir.RESULT, read_run_result, mine, RESULT_FIX)
    config = None
    if (run_dir / rundir.CONFIG).is_file() and read_or_note(run_dir / rundir.CONFIG, read_settings, mine) is not None:
        config = rundir.load_config_yaml(
            (run_dir / rundir.CONFIG).read_bytes().decode("utf-8")
        )  # read_settings read it
    metrics = None
    if (run_dir / rundir.METRICS).is_file():
        metrics = read_or_note(run_dir / rundir.METRICS, read_metrics, mine)
    notes += mine
    if mine or result is None:
        return None
    provenance = result.get("provenance") or {}
    start = _ms(result.get("started"))
    rows = [] if metrics is None else metrics[list(rundir.METRIC_COLUMNS)].astype(float).values.tolist()
    elapsed = itertools.accumulate(r[rundir.METRIC_COLUMNS.index("epoch_time_s")] for r in rows)
    state = status.state
    figures = (
        folder.path / REPORT_DIR / f"{kind}-{row['run_id']}.png" for kind in ("curves", "confusion", "misclassified")
    )
    files = [run_dir / rundir.CONFIG, *figures]
    return Wanted(
        name=row["run_id"],
        status=STATUS.get(state, "FAILED"),
        start_ms=start,
        end_ms=_ms(result.get("finished") or result.get("cancelled")),
        params=params(config) if isinstance(config, dict) else {},
        tags={
            RUN_ID: row["run_id"],
            "crackhpc.state": state.value,
            "crackhpc.job_id": status.job_id,
            "crackhpc.git_commit": provenance.get("git_commit") or "",
            "crackhpc.host": provenance.get("host") or result.get("host") or "",
            "crackhpc.gpu": provenance.get("gpu") or "none",
            "crackhpc.note": status.note[:MAX_TAG_VALUE],  # as `crackhpc status` shows it: the error of a failed run
        },
        rows=rows,
        epoch_ms=[(start or _now_ms()) + int(1000 * s) for s in elapsed],
        final={k: v for k in FINAL if (v := _number(row.get(k))) is not None},
        artifacts=[(p, None) for p in files if p.is_file()],
    )


def wanted_parent(folder: SweepFolder, record: SweepRecord, statuses: list[RunStatus], sweep_key: str) -> Wanted:
    """The sweep's parent run: its tables and report as artifacts, its runs' states as a tag."""
    counts = Counter(s.state.value for s in statuses)
    live = any(s.live for s in statuses)
    files = [(folder.path / name, None) for name in ("summary.csv", "comparison.csv", REPORT_MD, REPORT_HTML)]
    figures = sorted((folder.path / REPORT_DIR).glob("*.png"))
    provenance = record.provenance or {}
    return Wanted(
        name=folder.path.name,
        status="RUNNING" if live else "FINISHED",
        start_ms=_ms(record.submitted),
        end_ms=None if live else _ms(record.finished),
        tags={
            k: v
            for k, v in {
                SWEEP_KEY: sweep_key,
                "crackhpc.sweep_dir": str(folder.path),
                "crackhpc.sweep_file": record.yaml,
                "crackhpc.executor": record.executor,
                "crackhpc.git_commit": provenance.get("git_commit"),
                "crackhpc.state": ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            }.items()
            if v
        },
        artifacts=[f for f in files if f[0].is_file()] + [(p, REPORT_DIR) for p in figures],
    )


def _batches(metrics: list, params: dict[str, str], tags: dict[str, str], last: dict[str, str]) -> Iterator[tuple]:
    """log_batch calls within MLflow's limits; the tags in `last` go with the final call, so that
    an interrupted import does not record as done what it had not sent."""
    from mlflow.entities import Param, RunTag

    ps = [Param(k, v) for k, v in params.items()]
    ts = [RunTag(k, v) for k, v in tags.items()]
    while True:
        p, ps = ps[:MAX_PARAMS], ps[MAX_PARAMS:]
        t, ts = ts[:MAX_TAGS], ts[MAX_TAGS:]
        room = MAX_ENTITIES - len(p) - len(t)
        m, metrics = metrics[: min(room, MAX_METRICS)], metrics[min(room, MAX_METRICS) :]
        if not (ps or ts or metrics):
            final = [RunTag(k, v) for k, v in last.items()]
            if len(t) + len(final) <= MAX_TAGS and len(p) + len(t) + len(m) + len(final) <= MAX_ENTITIES:
                yield m, p, t + final
                return
            yield m, p, t
            yield [], [], final
            return
        yield m, p, t


class Importer:
    """Brings MLflow runs in line with what they should hold (`Wanted`), one call per change."""

    def __init__(self, client, experiment_id: str, notes: list[str]):
        self.client, self.experiment_id, self.notes = client, experiment_id, notes

    def find(self, key: str, filter_string: str) -> dict[str, Any]:
        """The active runs of the experiment that match `filter_string`, by their tag `key`; of two
        with the same value (two imports at once) the later is deleted."""
        from mlflow.entities import ViewType

        found: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page:
                value = run.data.tags.get(key)
                if value is None:
                    continue
                if value in found:
                    self.client.delete_run(run.info.run_id)
                else:
                    found[value] = run
            token = page.token
            if not token:
                return found

    def sync(self, want: Wanted, have, parent: str | None = None) -> tuple[str, str]:
        """(what was done: created, replaced, updated or unchanged; the MLflow run id)."""
        done = "updated"
        if have is not None and not want.continues(have):
            self.client.delete_run(have.info.run_id)  # retrained from scratch: its old history would mislead
            have, done = None, "replaced"
        fresh = have is None
        if have is None:
            tags = {**want.tags, **({PARENT: parent} if parent else {})}
            have = self.client.create_run(self.experiment_id, start_time=want.start_ms, tags=tags, run_name=want.name)
            done = "created" if done == "updated" else done
        run_id = have.info.run_id
        tags = {k: v for k, v in want.tags.items() if have.data.tags.get(k) != v}
        changed = [k for k, v in want.params.items() if have.data.params.get(k, v) != v]
        if changed:
            self.notes.append(
                f"MLflow run {run_id} of {want.name} keeps its first value of {', '.join(changed)} "
                f"(MLflow params cannot change; config.yaml now says {', '.join(want.params[k] for k in changed)})"
            )
        params = {k: v for k, v in want.params.items() if k not in have.data.params}
        metrics = want.metrics(have, fresh)
        last = {}
        if want.rows and have.data.tags.get(EPOCHS) != (logged := f"{len(want.rows)} {want.digest(len(want.rows))}"):
            last[EPOCHS] = logged
        if want.artifacts and have.data.tags.get(UPLOADED) != (uploaded := want.uploaded()):
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            # The run's store from the run at hand: client.log_artifact would fetch the run again first.
            store = get_artifact_repository(have.info.artifact_uri, tracking_uri=self.client.tracking_uri)
            for path, folder in want.artifacts:
                store.log_artifact(str(path), folder)
            last[UPLOADED] = uploaded
        if have.info.status != want.status:
            if want.status in TERMINAL:
                self.client.set_terminated(run_id, want.status, want.end_ms)
            else:
                self.client.update_run(run_id, want.status)
        elif not (fresh or tags or params or metrics or last):
            return "unchanged", run_id
        if tags or params or metrics or last:
            for batch in _batches(metrics, params, tags, last):
                self.client.log_batch(run_id, *batch)
        return done, run_id


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and alembic's log lines off: a failure is one line of ours, its message included."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _persistent_journal() -> Iterator[None]:
    """SQLite's rollback journal kept between commits (PERSIST) instead of created and deleted at each:
    MLflow commits every call, five for a new run. On the development VM's ext4 a bare commit took
    5-18 ms so and 1-3 ms kept, a new MLflow run 29 ms and 23 (medians of interleaved rounds). The
    same durability, and unlike WAL it works on NFS."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def persist(connection, _record) -> None:
        if type(connection).__module__.startswith("sqlite3"):
            connection.execute("PRAGMA journal_mode=PERSIST")

    event.listen(Engine, "connect", persist)
    try:
        yield
    finally:
        event.remove(Engine, "connect", persist)


def reachable(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server that does not answer is one line at once, not MLflow's minutes of retries.
    Any HTTP answer counts (a proxy may want a login for /health)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise CrackhpcError(
            f"--mlflow {uri}: no MLflow tracking server answers there ({why}); start it or correct the URI; "
            f"the report files are written"
        ) from None


def _lock_path(folder: SweepFolder, uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :] + ".lock"
    return str(folder.path / LOCK)


@dataclass
class Imported:
    uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    done: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what MLflow could not take as it is (a changed param)

    def line(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.done.items()))
        skipped = f"; {len(self.skipped)} damaged run folder(s) skipped (problem lines)" if self.skipped else ""
        return (
            f"mlflow: {sum(self.done.values())} runs in experiment {self.experiment!r} (id {self.experiment_id}) "
            f"under parent run {self.parent_run_id}: {counts or 'none'}{skipped}; open it: "
            f"{ui_hint(self.uri, self.experiment_id)}"
        )


def import_sweep(sweep_dir: str | Path, uri: str | None, df: pd.DataFrame, notes: list[str]) -> Imported:
    """Import the runs of `df` (the report's summary) of `sweep_dir` into the MLflow at `uri`
    (default: SQLite beside the sweep folder). A damaged run folder is skipped, its problems added
    to `notes`; an MLflow that cannot be reached or refuses is one CrackhpcError."""
    folder = SweepFolder(Path(sweep_dir).resolve())
    uri = absolute(uri or default_uri(folder.path))
    again = AGAIN.format(sweep=sweep_dir, uri=uri)
    reachable(uri)
    # A flaky network gets a few tries, not MLflow's default of minutes; what the user set wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    lock = FileLock(_lock_path(folder, uri), timeout=LOCK_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        raise CrackhpcError(
            f"--mlflow {uri}: another import into it has been running for {LOCK_WAIT_S // 60} minutes "
            f"(it holds {lock.lock_file}); let it end, then run this again; the report files are written"
        ) from None
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        with _quiet(), _persistent_journal():
            return _import(folder, uri, df, notes, MlflowClient(tracking_uri=uri))
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        lines = str(exc).strip().splitlines()
        raise CrackhpcError(
            f"--mlflow {uri}: MLflow refused the import ({lines[0][:300] if lines else type(exc).__name__}); {again}"
        ) from None
    finally:
        lock.release()


def _import(folder: SweepFolder, uri: str, df: pd.DataFrame, notes: list[str], client) -> Imported:
    record = read_or_note(folder.record_path, lambda _: folder.load(), notes) or SweepRecord()
    sweep_key = hashlib.sha1(str(folder.path).encode()).hexdigest()[:16]
    rows = df.to_dict("records")
    statuses = {s.run_id: s for s in run_statuses(folder, [r["run_id"] for r in rows], record)}
    name = record.sweep or folder.path.name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):  # beside the database, not in whatever folder the import runs from
            location = (Path(uri[len("sqlite:///") :]).parent / ARTIFACTS).as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    importer = Importer(client, experiment_id, [])
    parents = importer.find(SWEEP_KEY, f"tags.`{SWEEP_KEY}` = '{sweep_key}'")
    _, parent_id = importer.sync(
        wanted_parent(folder, record, list(statuses.values()), sweep_key), parents.get(sweep_key)
    )
    existing = importer.find(RUN_ID, f"tags.{PARENT} = '{parent_id}'")
    imported = Imported(uri, name, experiment_id, parent_id, notes=importer.notes)
    for row in rows:
        want = wanted_run(folder, row, statuses[row["run_id"]], notes)
        if want is None:
            imported.skipped.append(row["run_id"])
            continue
        done, _ = importer.sync(want, existing.get(row["run_id"]), parent_id)
        imported.done[done] += 1
    return imported
