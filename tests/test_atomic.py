"""crackhpc.atomic: a reader sees the old file or the new one; a killed writer leaves only its hidden
temporary file, which `remove_stale` deletes once the writer's process is gone; files get 0666 less
the umask; a file crackhpc wrote that cannot be read back is one DamagedFileError naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from crackhpc import atomic, procs
from crackhpc.errors import DamagedFileError

from .conftest import killed_writer


def test_a_reader_sees_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with atomic.replacing(target) as tmp:
        tmp.write_text("new, half")
        assert target.read_text() == "old"
        assert re.fullmatch(rf"\.result\.json~{re.escape(procs.HOST)}~{os.getpid()}~\d+\.tmp", tmp.name)
        assert tmp.parent == tmp_path  # beside it: the rename stays on one file system
    assert target.read_text() == "new, half" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_write_that_raises_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic.replacing(target) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt  # Ctrl-C half-way
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_killed_writer_leaves_the_old_file_and_its_temporary_which_remove_stale_deletes(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last whole checkpoint")
    tmp = killed_writer(target)
    assert target.read_bytes() == b"the last whole checkpoint"
    assert atomic.remove_stale(tmp_path) == [tmp] and not tmp.exists()
    assert atomic.remove_stale(tmp_path) == [] and target.is_file()


def test_remove_stale_leaves_live_writers_other_hosts_and_other_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    kept = [
        f".a~{procs.HOST}~{os.getpid()}~0.tmp",  # a live writer: this process
        f".b~other-host~{dead.pid}~0.tmp",  # another host's process cannot be checked from here
        f".c~{procs.HOST}~notapid~0.tmp",
        ".d.tmp",
        "e~x~1~0.tmp",  # not hidden: not crackhpc's
        "result.json",
    ]
    stale = tmp_path / f".f~{procs.HOST}~{dead.pid}~3.tmp"
    for name in [*kept, stale.name]:
        (tmp_path / name).write_text("")
    assert atomic.remove_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert atomic.remove_stale(tmp_path / "no such folder") == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_are_created_0666_less_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for write in (
            lambda p: atomic.write_text(p, "x"),
            lambda p: atomic.write_json(p, {"a": 1}),
            lambda p: atomic.write_csv(p, ["a"], [[1]]),
        ):
            path = write(tmp_path / "f")
            assert path.stat().st_mode & 0o777 == mode
            path.unlink()
    finally:
        os.umask(old)


def test_writers_round_trip(tmp_path):
    atomic.write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"], [2, None]])
    assert (tmp_path / "t.csv").read_text() == 'a,b\n1,"x,y"\n2,\n'
    atomic.write_json(tmp_path / "t.json", {"b": 1, "a": [1, 2]})
    assert atomic.read_json(tmp_path / "t.json", "fix") == {"a": [1, 2], "b": 1}


def test_a_write_that_fails_names_its_file(tmp_path):
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "sweep.json"  # its folder is a file
    with pytest.raises(OSError) as raised:
        atomic.write_text(target, "{}")
    assert raised.value.filename == str(target) and raised.value.strerror


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"status": "compl', "not valid JSON ("),
        (bytes(range(256)), "binary or not UTF-8 text, not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"", "not valid JSON ("),
    ],
)
def test_a_damaged_json_file_is_one_error_naming_it_and_the_fix(tmp_path, content, problem):
    path = tmp_path / "result.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFileError) as raised:
        atomic.read_json(path, "delete it")
    assert str(raised.value).startswith(f"{path}: {problem}") and str(raised.value).endswith("; delete it")
    assert "\n" not in str(raised.value) and raised.value.path == path
