"""crackhpc.record: the sweep folder's record (sweep.json) and its lock, one submitter at a time,
released by the kernel when its holder dies; a killed writer's half sweep.json is cleaned under it."""

from __future__ import annotations

import json

import pytest

from crackhpc import procs, rundir
from crackhpc.errors import CrackhpcError, DamagedFileError
from crackhpc.record import PREDICTION, SweepFolder, SweepRecord, owner_alive

from .conftest import killed_writer, lock_holder


def test_a_folder_without_a_record_has_an_empty_one_and_a_saved_record_reads_back(tmp_path):
    folder = SweepFolder(tmp_path)
    assert folder.load() == SweepRecord()
    record = SweepRecord(sweep="s", owner=procs.identity(), current_runs=["a"])
    record.add_job("a", "12_0", "slurm", stdout="/o", stderr="/e")
    folder.save(record)
    assert folder.load() == record
    assert json.loads(folder.record_path.read_text())["runs"]["a"]["job_id"] == "12_0"


def test_a_new_job_keeps_the_earlier_ids_and_the_submitters_identity():
    record = SweepRecord(owner={"host": "h", "pid": 1, "pid_start": "5"})
    record.add_job("a", 11, "slurm")
    record.add_job("a", "12", "slurm")
    job = record.add_job("a", "13", "local", process={"host": "h", "pid": 2})
    assert (job.job_id, job.history, job.owner) == ("13", ["11", "12"], record.owner)
    assert record.runs["a"] is job and job.submitted


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"runs": {"a": {"job_id": "1"', "not valid JSON ("),
        (b"\x00\x01garbage", "not valid JSON ("),
        (b"[]", "expected a JSON object, got list"),
        (b'{"runs": []}', "runs: Input should be a valid dictionary"),
    ],
)
def test_a_damaged_record_names_the_file_and_how_to_rebuild_it(tmp_path, content, problem):
    (tmp_path / "sweep.json").write_bytes(content)
    with pytest.raises(DamagedFileError) as raised:
        SweepFolder(tmp_path).load()
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'sweep.json'}: {problem}"), message
    assert "move it aside and run `crackhpc sweep` again: it rebuilds the record from the run folders" in message


def test_the_runs_are_the_recorded_ones_and_the_run_folders_or_only_the_current_ones(tmp_path):
    folder = SweepFolder(tmp_path)
    for run in ("old", "new"):
        (tmp_path / run).mkdir()
        (tmp_path / run / rundir.CONFIG).write_text("")
    (tmp_path / "submitit").mkdir()
    record = SweepRecord(current_runs=["new", "queued"])
    record.add_job("queued", "9", "slurm")
    assert folder.run_ids(record) == ["new", "old", "queued"]
    assert folder.run_ids(record, everything=False) == ["new", "queued"]
    assert SweepFolder(tmp_path / "none").run_ids(SweepRecord()) == []


def test_a_prediction_folder_names_its_own_command():
    assert (SweepRecord().command, SweepRecord(kind=PREDICTION).command) == ("crackhpc sweep", "crackhpc predict")
    assert "--retry-failed" in SweepRecord().resubmit and "predict" in SweepRecord(kind=PREDICTION).resubmit


def test_a_sweep_folder_that_is_a_file_or_missing_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(CrackhpcError, match="not a sweep folder but a file"):
        SweepFolder(tmp_path / "f").check()
    with pytest.raises(CrackhpcError, match=r"no such sweep folder \(run `crackhpc sweep"):
        SweepFolder(tmp_path / "nope").check()


def test_the_lock_refuses_a_second_submitter_naming_the_holder_until_the_holder_dies(tmp_path):
    folder = SweepFolder(tmp_path / "s")
    with lock_holder(folder.path) as holder:
        owner = folder.load().owner
        assert owner_alive(folder.load())
        with pytest.raises(CrackhpcError) as raised, folder.lock():
            pass
        assert str(raised.value) == (
            f"{folder.path}: another `crackhpc sweep` (pid {holder.pid} on {procs.HOST}, since {owner['since']}) "
            f"is submitting or running this folder's jobs; wait for it (`crackhpc status {folder.path}`) or stop it first"
        )
    assert not owner_alive(folder.load())
    with folder.lock():  # the kernel released it with its process: never stale
        pass


def test_the_lock_holder_cleans_a_killed_writers_half_record(tmp_path):
    folder = SweepFolder(tmp_path)
    folder.save(SweepRecord(sweep="s"))
    half = killed_writer(folder.record_path)
    with folder.lock():
        assert not half.exists()
    assert folder.load().sweep == "s"
