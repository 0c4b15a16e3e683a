"""`crackhpc clean results/<sweep>`: the space and files (inodes) a sweep's completed runs no longer need.

- `--checkpoints`: each completed run's trained weights (checkpoint.pt/.npz, best.pt/.npz); its
  result.json says when (rundir.CLEANED), so that predict and export say why there are none.
- `--logs`: submitit's files of each completed run's jobs, every attempt's (stdout, stderr and the
  pickles of the job and its result), and the plain sbatch scripts' slurm-<job id>.out/.err.
  worker.log, metrics.csv and result.json stay: they are the run's own account, and the report's.
- `--caches`: the sweep's decoded images and backbone features (.cache/), which a run computes
  again when it needs them; only when no run of the sweep is live, since live runs read them.

Only runs that `crackhpc status` shows completed, and not live, are touched: the same merge of
result.json, Slurm's accounting and the local processes. Queued, running, requeued, failed,
cancelled and unreadable runs are left as they are (a failed or cancelled run resumes from its
checkpoint).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .errors import CrackhpcError
from .record import SweepFolder, SweepRecord
from .states import RunState
from .status import SlurmQuery, collect

WHAT = ("checkpoints", "logs", "caches")
# submitit's files of one job (array task `123_4`, plain job `123`, local pid `4567`): its pickle,
# and per task its stdout, stderr and result
_SUBMITIT_FILE = re.compile(r"^(?P<job>.+?)_(submitted\.pkl|\d+_log\.out|\d+_log\.err|\d+_result\.pkl)$")


@dataclass
class Found:
    """What one kind of cleaning frees: files and their bytes."""

    what: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    note: str = ""

    def add(self, paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                self.bytes += path.lstat().st_size
            except FileNotFoundError:
                continue
            self.files.append(path)


def size(n: int) -> str:
    """Bytes as people read them: 1.2 GB, 16 kB (powers of 1000, as df -H and du --si)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _submitit_files(folder: SweepFolder) -> dict[str, list[Path]]:
    """The submitit folder's files by job id, listed once (10,000 runs leave 40,000 of them)."""
    by_job: dict[str, list[Path]] = {}
    if folder.submitit.is_dir():
        with os.scandir(folder.submitit) as entries:
            for entry in entries:
                if match := _SUBMITIT_FILE.match(entry.name):
                    by_job.setdefault(match["job"], []).append(Path(entry.path))
    return by_job


def _job_ids(record: SweepRecord, run_id: str) -> list[str]:
    job = record.runs.get(run_id)
    return [*job.history, job.job_id] if job and job.job_id else []


def _files_under(path: Path) -> list[Path]:
    return [Path(root) / name for root, _, names in os.walk(path) for name in names]


def find(
    sweep_dir: str | Path, what: Sequence[str], query: SlurmQuery | None = None
) -> tuple[list[str], list[Found], list[str]]:
    """(completed runs, what each kind frees, lines about what was left alone)."""
    statuses, problems = collect(sweep_dir, query)
    folder = SweepFolder(sweep_dir)
    record = folder.load() if not problems else SweepRecord()
    done = [s.run_id for s in statuses if s.state is RunState.COMPLETED and not s.live]
    live = [s.run_id for s in statuses if s.live]
    found = {w: Found(w) for w in what}
    if "checkpoints" in found:
        names = [*rundir.CHECKPOINT.values(), *rundir.BEST.values()]
        found["checkpoints"].add(folder.run(r) / name for r in done for name in names)
    if "logs" in found:
        by_job = _submitit_files(folder)
        found["logs"].add(path for r in done for job in _job_ids(record, r) for path in by_job.get(job, ()))
        found["logs"].add(path for r in done for path in folder.run(r).glob("slurm-*.[oe][ur][tr]"))
    if "caches" in found:
        if live:
            found["caches"].note = f"kept: {len(live)} live run(s) read them"
        else:
            found["caches"].add(_files_under(folder.cache))
    # A run with a file that cannot be read is named, with the file and the fix: it may be one that
    # completed, whose space stays taken until it is readable again.
    unreadable = [
        f"{s.run_id}: left alone: {s.damaged[0]}" for s in statuses if s.damaged and not s.live and s.run_id not in done
    ]
    others = len(statuses) - len(done) - len(live) - len(unreadable)
    left = [f"{len(live)} live run(s) left alone"] * bool(live)
    left += [f"{others} failed or cancelled run(s) left alone (they resume from their checkpoints)"] * bool(others)
    return done, list(found.values()), problems + left + unreadable


def clean(
    sweep_dir: str | Path,
    what: Sequence[str],
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    query: SlurmQuery | None = None,
) -> tuple[int, int]:
    """Remove (or, `dry_run`, list) what `what` names of the sweep's completed runs; says what and
    how much, and returns (bytes, files) freed."""
    folder = SweepFolder(sweep_dir).check()
    if not what:
        raise CrackhpcError(f"clean {sweep_dir}: say what to remove: --checkpoints, --logs and/or --caches")
    done, found, notes = find(folder.path, what, query)
    verb = "would free" if dry_run else "freed"
    echo(f"clean {folder.path}: {len(done)} completed run(s)")
    for line in notes:
        echo(f"  {line}")
    for item in found:
        if not dry_run:  # removed before it is said freed: a file that cannot be removed ends the command
            for path in item.files:
                path.unlink(missing_ok=True)
            if item.what == "checkpoints":
                for run_id in {p.parent.name for p in item.files}:
                    rundir.update_result(folder.run(run_id), **{rundir.CLEANED: rundir.now()})
            if item.what == "caches" and item.files:
                shutil.rmtree(folder.cache, ignore_errors=True)
        echo(
            f"  {item.what}: {verb} {size(item.bytes)} in {len(item.files)} file(s)"
            + (f"; {item.note}" * bool(item.note))
        )
    total, files = sum(f.bytes for f in found), sum(len(f.files) for f in found)
    echo(f"{verb} {size(total)} ({total:,} bytes) in {files:,} file(s)")
    return total, files
