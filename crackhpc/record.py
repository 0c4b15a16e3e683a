"""The sweep folder and its record, sweep.json: which job runs each run, readable from any shell later.

<results>/<sweep>/
    sweep.json      this record: the runs of the sweep file as last submitted, each run's latest job
                    (and its earlier job ids), the `crackhpc sweep` process that owns local jobs
    splits/<hash>.csv   the sweep's split manifests, one file per distinct manifest, named by its
                    hash (crackhpc.data.split.manifest_hash): each run's config.yaml names its own,
                    as ../splits/<hash>.csv; a dataset changed between submissions adds a file
    <run_id>/       one run folder per run (crackhpc.rundir)
    submitit/       submitit's scripts, pickles and logs
    .cache/         decoded images and backbone features shared by the sweep's runs
    .lock           held by the `crackhpc sweep` that submits (and, locally, runs) the jobs
    report-job.sbatch, report-job-<job id>.out/.err   `--then-report`'s job (crackhpc.then_report)
    search.db       a search's Optuna study (SQLite), written by its controller only (crackhpc.search)
    stop.json       `crackhpc cancel` of a search's sweep: its controller draws no new trials
    controller-job.sbatch, controller-job-<job id>.out/.err   `--controller slurm`'s job (crackhpc.search)
    .mlflow.lock    held by an MLflow import of the sweep into a tracking server (crackhpc.mlflow_import)
<results>/.data/    synthetic datasets, shared by sweeps
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import atomic, procs, rundir
from .data.layout import Item
from .data.split import manifest_hash, manifest_text
from .errors import CrackhpcError, DamagedFileError

RECORD, SUBMITIT, CACHE, LOCK, SPLITS = "sweep.json", "submitit", ".cache", ".lock", "splits"
SEARCH_DB = "search.db"  # a search's Optuna study, beside its runs (crackhpc.search)
PREDICTION = "prediction"  # the record's `kind` for a `crackhpc predict` folder (a sweep's has none)
DATA = ".data"
FIX_RECORD = (
    "move it aside and run `crackhpc sweep` again: it rebuilds the record from the run folders "
    "(jobs still queued are then not known to `status` and `cancel`)"
)


class Job(BaseModel):
    """A run's latest job. `process` is the local executor's controller (host, pid, start time)."""

    model_config = ConfigDict(extra="allow")
    job_id: str = ""
    executor: str = ""
    submitted: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    history: list[str] = Field(default_factory=list)
    process: dict | None = None
    owner: dict | None = None  # the `crackhpc sweep` (or predict) process that submitted it


def submitted_since(jobs: Iterable[Job]) -> str | None:
    """The earliest recorded submission of `jobs`: Slurm's accounting is asked about them from then
    on (slurm.sacct), not about older jobs under the same ids."""
    times = [job.submitted for job in jobs if job.submitted]
    return min(times) if times else None


class SweepRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    runs: dict[str, Job] = Field(default_factory=dict)
    current_runs: list[str] | None = None  # what the report compares; older runs stay on disk
    owner: dict | None = None  # the `crackhpc sweep` process that submits and, locally, runs them
    sweep: str | None = None
    yaml: str | None = None  # the sweep file, and the command line's --set edits of it
    overrides: list[str] = Field(default_factory=list)
    executor: str | None = None
    data_root: str | None = None
    submitted: str | None = None
    finished: str | None = None
    provenance: dict | None = None  # the submission's part (crackhpc.provenance), also in each run's result.json
    kind: str | None = None  # PREDICTION, or None for a sweep
    model: str | None = None  # a prediction's trained run folder
    report_job: Job | None = None  # `crackhpc sweep --then-report`: the report's job after the runs' (then_report)
    controller_job: Job | None = None  # `crackhpc sweep --controller slurm`: a search's controller (crackhpc.search)

    @property
    def command(self) -> str:
        """The command that submits (and, locally, runs) this folder's jobs."""
        return "crackhpc predict" if self.kind == PREDICTION else "crackhpc sweep"

    @property
    def resubmit(self) -> str:
        """How to submit this folder's failed or cancelled runs again."""
        return (
            "rerun `crackhpc predict …` with the same arguments"
            if self.kind == PREDICTION
            else "`crackhpc sweep --retry-failed`"
        )

    def add_job(self, run_id: str, job_id: str, executor: str, stdout=None, stderr=None, process=None) -> Job:
        """A run's new job; its earlier job ids go to its history."""
        previous = self.runs.get(run_id)
        history = (previous.history + [previous.job_id]) if previous and previous.job_id else []
        job = Job(
            job_id=str(job_id),
            executor=executor,
            submitted=rundir.now(),
            stdout=str(stdout) if stdout else None,
            stderr=str(stderr) if stderr else None,
            history=history,
            process=process,
            owner=self.owner,
        )
        self.runs[run_id] = job
        return job


class SweepFolder:
    """A sweep's folder: where its record, runs, caches and logs are."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def record_path(self) -> Path:
        return self.path / RECORD

    @property
    def submitit(self) -> Path:
        return self.path / SUBMITIT

    @property
    def cache(self) -> Path:
        return self.path / CACHE

    def run(self, run_id: str) -> Path:
        return self.path / run_id

    def store_manifest(self, items: Sequence[Item]) -> str:
        """The manifest stored once for all the sweep's runs, content-addressed, and how a run's
        config.yaml names it (RunSpec.manifest, relative to the run folder: crackhpc.rundir.manifest_path).
        A copy that differs from what it should hold (damaged, edited) is written again."""
        path = self.path / SPLITS / f"{manifest_hash(items)}.csv"
        text = manifest_text(items)
        if not path.is_file() or path.read_bytes() != text.encode():
            atomic.write_text(path, text)
        return f"../{SPLITS}/{path.name}"

    def check(self) -> SweepFolder:
        if self.path.exists() and not self.path.is_dir():
            raise CrackhpcError(f"{self.path}: not a sweep folder but a file")
        if not self.path.is_dir():
            raise CrackhpcError(f"{self.path}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)")
        return self

    def claim(self, kind: str | None, fix: str) -> SweepRecord:
        """The record of a folder a command is about to write into as a sweep's (`kind` None) or a
        prediction's folder. One of the other kind, or a run folder, is refused in one line ending in
        `fix`: writing would replace its record and tables (its runs would vanish from `report`)."""
        what = "a prediction folder" if kind == PREDICTION else "a sweep folder"
        if (self.path / rundir.CONFIG).is_file():
            raise CrackhpcError(f"{self.path}: a run folder (it has {rundir.CONFIG}), not {what}: {fix}")
        record = self.load()
        if not self.record_path.is_file():  # a new folder, or a sweep's that lost its record but has runs
            record.kind = None if kind == PREDICTION and self.run_ids(record) else kind
        if record.kind != kind:
            other = "a prediction folder of `crackhpc predict`" if record.kind == PREDICTION else "a sweep folder"
            raise CrackhpcError(f"{self.path}: {other}, not {what}: {fix}")
        return record

    def load(self) -> SweepRecord:
        """The record, empty before the first submission; a DamagedFileError if it cannot be read."""
        if not self.record_path.is_file():
            return SweepRecord()
        try:
            return SweepRecord.model_validate(atomic.read_json(self.record_path, FIX_RECORD))
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise DamagedFileError(
                self.record_path, f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}", FIX_RECORD
            ) from None

    def save(self, record: SweepRecord) -> None:
        # pydantic's own encoder: a tenth of json.dumps(indent=2)'s time on a 10,000-run record,
        # which is saved after each job array
        atomic.write_text(self.record_path, record.model_dump_json(exclude_none=True, indent=2) + "\n")

    def run_ids(self, record: SweepRecord, everything: bool = True) -> list[str]:
        """The runs of the sweep: those in its record and those with a run folder. Without
        `everything`, only the runs of the sweep file as last submitted: an edited YAML (another lr,
        a model dropped) leaves its earlier runs' folders behind, which a comparison should not mix in."""
        if not everything and record.current_runs is not None:
            return sorted(record.current_runs)
        found = {p.name for p in self.path.iterdir() if (p / rundir.CONFIG).is_file()} if self.path.is_dir() else set()
        return sorted(set(record.runs) | found)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held by the one `crackhpc sweep` that may submit to this folder: two at once would train
        every run twice into the same folders, and the last to save the record would lose the
        other's job ids. The kernel releases it when its process dies, so it never goes stale."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            record = self.load()
            owner = record.owner or {}
            who = (
                f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"
                if owner
                else "another process"
            )
            raise CrackhpcError(
                f"{self.path}: another `{record.command}` ({who}) is submitting or running this folder's "
                f"jobs; wait for it (`crackhpc status {self.path}`) or stop it first"
            ) from None
        try:
            atomic.remove_stale(self.path)  # a killed submitter's half sweep.json: its one writer holds the lock
            yield
        finally:
            lock.release()


def owner_alive(record: SweepRecord) -> bool:
    return bool(procs.alive(record.owner))
