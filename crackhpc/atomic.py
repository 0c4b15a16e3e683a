"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file a report or a resumed run reads goes through here, because jobs are killed (time
limit, preemption, a full disk) at arbitrary points. A write goes to a hidden temporary file
beside its target, named after the writing host and process, and is renamed into place when
complete; a writer killed before that leaves only the temporary file, which `remove_stale`
deletes once its process is gone. Files get the usual permissions (0666 less the umask), so a
project group on a shared file system can read the results.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import procs
from .errors import DamagedFileError

_SEQ = itertools.count()


_BATCH = threading.local()  # a thread's writes within `deferred()`: (temporary file, target)


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}~{procs.HOST}~{os.getpid()}~{next(_SEQ)}.tmp"


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """This thread's write_bytes (and the writes built on it) within the block are renamed into
    place at its end, after one sync of the file systems for them all instead of an fsync each:
    the 20,000 files of a 10,000-run submission take seconds, not minutes of fsyncs. Each file is
    still seen old or new; if the block raises, none of them is renamed."""
    pending: list[tuple[Path, Path]] = []
    _BATCH.pending = pending
    try:
        yield
        os.sync()
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        _BATCH.pending = None
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)  # not renamed: the block raised


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block ends without
    error, removed when it raises (or is interrupted)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writers on this host that died before renaming them (a
    killed worker's half checkpoint, a half image cache): nothing else would ever remove them."""
    removed = []
    for tmp in Path(folder).glob(".*~*~*~*.tmp"):
        _, host, pid, _ = tmp.name.rsplit("~", 3)
        if host == procs.HOST and pid.isdigit() and not procs.pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    pending = getattr(_BATCH, "pending", None)
    if pending is not None:
        tmp = _temporary(Path(path))
        with open(tmp, "xb") as fh:
            fh.write(data)
        pending.append((tmp, Path(path)))
        return Path(path)
    try:
        with replacing(path) as tmp, open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # shared file systems: the data is on disk before the rename publishes it
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # a full disk's write names no file
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike, fix: str) -> dict:
    """A JSON object written by crackhpc, or a DamagedFileError naming the file and `fix`."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except UnicodeDecodeError:
        raise DamagedFileError(path, "binary or not UTF-8 text, not JSON", fix) from None
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not valid JSON ({exc}): truncated or overwritten", fix) from None
    if not isinstance(obj, dict):
        raise DamagedFileError(path, f"expected a JSON object, got {type(obj).__name__}", fix)
    return obj
