"""`crackhpc logs SWEEP RUN_ID`: a run's Slurm stdout/stderr or worker.log, one attempt at a time.

The log paths of a run's latest job are in sweep.json; its earlier jobs (resubmissions with
--retry-failed) are in the run's `history`, and their files follow the job id the same way
(submitit: submitit/<job>_0_log.out, `crackhpc sbatch`: <run>/slurm-<job>.out). Each job's files
hold every start of that job, cut apart at the start lines described in crackhpc.attempts.
Attempts are numbered from 1 over the run's whole history: all starts of its first job, then of
the next one.
"""

from __future__ import annotations

import codecs
import difflib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import rundir
from .attempts import START_RE, WORKER_START_RE
from .errors import CrackhpcError
from .record import Job, SweepFolder, SweepRecord


@dataclass(frozen=True)
class Attempt:
    number: int
    job_id: str  # '' for a run folder that no job of sweep.json names (python -m crackhpc.worker)
    restart: int | None  # None: the job's files have no start lines (written before crackhpc.attempts)
    files: dict[str, Path | None]  # source → its file

    def describe(self, total: int) -> str:
        job = f"job {self.job_id}" if self.job_id else "no job recorded"
        return f"attempt {self.number} of {total}: {job}" + (
            "" if self.restart is None else f", restart {self.restart}"
        )


def _job_files(entry: Job, job_id: str) -> dict:
    """The .out/.err of one of the run's jobs: the recorded ones for the latest, the same names with
    the job id replaced for an earlier one."""
    files: dict[str, Path | None] = {}
    for source, name in (("out", entry.stdout), ("err", entry.stderr)):
        path = Path(name) if name else None
        if path is None or job_id == entry.job_id:
            files[source] = path
        else:
            files[source] = path.with_name(path.name.replace(entry.job_id, job_id))
    return files


def _segments(text: str, pattern) -> list[tuple[str, int, int]]:
    """(job id, restart, start offset) of each start line in a log's text."""
    return [(m["job"], int(m["restart"]), m.start()) for m in pattern.finditer(text)]


def _read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except OSError:  # not written yet, or not readable from here: shown as empty
        return ""


def attempts(folder: SweepFolder, run_id: str, record: SweepRecord) -> list[Attempt]:
    """Every start of the run's jobs, oldest first."""
    entry = record.runs.get(run_id)
    worker = folder.run(run_id) / rundir.LOG
    if not entry or not entry.job_id:
        return [Attempt(1, "", None, {"out": None, "err": None, "worker": worker})]
    found: list[Attempt] = []
    worker_starts = _segments(_read(worker), WORKER_START_RE)
    for job_id in [*entry.history, entry.job_id]:
        files = _job_files(entry, job_id)
        restarts = sorted(
            {r for source in ("out", "err") for j, r, _ in _segments(_read(files[source]), START_RE) if j == job_id}
            | {r for j, r, _ in worker_starts if j == job_id}
        )
        for restart in restarts or (None,):
            found.append(Attempt(len(found) + 1, job_id, restart, {**files, "worker": worker}))
    return found


def cut(text: str, attempt: Attempt, source: str) -> tuple[str, bool]:
    """The part of a log file that belongs to an attempt, and whether the file marks attempts at all
    (if not, the whole file is returned)."""
    marks = _segments(text, WORKER_START_RE if source == "worker" else START_RE)
    if not marks or attempt.restart is None:
        return text, bool(marks)
    for i, (job, restart, start) in enumerate(marks):
        if (job, restart) == (attempt.job_id, attempt.restart):
            end = marks[i + 1][2] if i + 1 < len(marks) else len(text)
            return text[start:end], True
    return "", True


def choose(sweep_dir: str | Path, run_id: str) -> tuple[SweepFolder, SweepRecord, list[Attempt]]:
    """The sweep folder, its record and the run's attempts; one-line errors for a sweep folder or
    run id that does not exist (with the run ids that come close)."""
    folder = SweepFolder(sweep_dir).check()
    record = folder.load()
    known = folder.run_ids(record)
    if run_id not in known:
        close = difflib.get_close_matches(run_id, known, n=5, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"`crackhpc status {folder.path}` lists its {len(known)} runs"
        )
        raise CrackhpcError(f"{folder.path}: no run {run_id!r}; {hint}")
    return folder, record, attempts(folder, run_id, record)


def pick(found: list[Attempt], number: int | None) -> Attempt:
    if number is None:
        return found[-1]
    if not 1 <= number <= len(found):
        listed = "; ".join(f"{a.number} ({a.describe(len(found)).split(': ', 1)[1]})" for a in found)
        raise CrackhpcError(f"--attempt {number}: the run has {len(found)} attempt{'s' * (len(found) > 1)}: {listed}")
    return found[number - 1]


def source_path(attempt: Attempt, source: str) -> Path | None:
    """The file to show; the Slurm stdout falls back to worker.log where there is none (executor
    debug, a run folder trained by hand), since the worker logs the same lines to both."""
    path = attempt.files.get(source)
    if source == "out" and (path is None or not path.is_file()):
        return attempt.files["worker"]
    return path


def _note(line: str) -> None:
    sys.stdout.flush()  # the log's text so far comes before the note, where both go to one terminal
    print(line, file=sys.stderr, flush=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def show(
    sweep_dir, run_id: str, source: str = "out", number: int | None = None, write=_write, note=_note
) -> tuple[Attempt, Path | None, int]:
    """Write one attempt's part of a log; returns the attempt, the file shown and how many of its
    bytes were read."""
    _, _, found = choose(sweep_dir, run_id)
    attempt = pick(found, number)
    path = source_path(attempt, source)
    note(f"==> {path} ({attempt.describe(len(found))}) <==")
    if path is None or not path.is_file():
        missing = attempt.files.get(source) or path
        note(
            f"no {source} log yet"
            + (
                f": {missing} does not exist (the job has not started, or ran where this folder is not shared)"
                if missing
                else " recorded for this run"
            )
        )
        return attempt, path, 0
    raw = path.read_bytes()
    text, marked = cut(raw.decode(errors="replace"), attempt, "worker" if path == attempt.files["worker"] else source)
    if not marked and len(found) > 1:
        note(f"{path.name} has no start lines: the whole file (all starts of job {attempt.job_id})")
    write(text)
    return attempt, path, len(raw)


def _is_live(sweep_dir: Path, run_id: str) -> bool:
    from .status import run_statuses

    folder = SweepFolder(sweep_dir)
    return run_statuses(folder, [run_id], folder.load())[0].live


@dataclass(frozen=True)
class Following:
    """How `follow` prints and polls (the tests poll faster and judge liveness themselves)."""

    write: Callable[[str], object] = _write
    note: Callable[[str], object] = _note
    poll_s: float = 1.0  # between looks at the log
    check_s: float = 5.0  # between looks at the run's state and its latest job
    is_live: Callable[[Path, str], bool] = _is_live


def follow(sweep_dir, run_id: str, source: str = "out", how: Following = Following()) -> None:
    """Show the latest attempt, then what its log gains, until the run has ended. A requeue appends
    to the same file (its start line shows where); a new job (--retry-failed), or a log that appears
    once a queued job starts, switches files."""
    write, note, poll_s, check_s, is_live = how.write, how.note, how.poll_s, how.check_s, how.is_live
    attempt, path, offset = show(sweep_dir, run_id, source, None, write, note)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end inside a character
    checked, live = time.monotonic(), True
    while True:
        grew = False
        if path and path.is_file() and path.stat().st_size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            write(decoder.decode(chunk))
            grew = True
        if time.monotonic() - checked >= check_s:
            checked = time.monotonic()
            latest = choose(sweep_dir, run_id)[2][-1]
            if source_path(latest, source) != path:
                path, offset = source_path(latest, source), 0
                note(f"==> {path} (job {latest.job_id}) <==")
                continue
            was_live, live = live, is_live(sweep_dir, run_id)
            if not live and not was_live and not grew:
                return  # ended, and its log has had a poll to catch up
        time.sleep(poll_s)
