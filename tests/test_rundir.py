"""crackhpc.rundir: the run folder's config.yaml and result.json, written atomically and read back
as the worker wrote them, or as one DamagedFileError naming the file and the fix."""

from __future__ import annotations

import socket

import pytest
import yaml

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.errors import DamagedFileError
from crackhpc.grid import expand
from crackhpc.states import RunState

from .conftest import tiny_sweep


@pytest.fixture
def spec(tmp_path, write_yaml, tiny_data):
    (spec,) = expand(load_sweep(write_yaml(tiny_sweep(tiny_data, defaults={"lr": 3e-4}))))
    return spec


def test_config_yaml_reads_back_the_run_it_was_written_from(tmp_path, spec):
    rundir.write_config(tmp_path, spec)
    assert rundir.read_config(tmp_path) == spec
    text = (tmp_path / rundir.CONFIG).read_text()
    assert rundir.load_config_yaml(text) == yaml.safe_load(text)  # block by block, the same as whole


@pytest.mark.parametrize(
    "text",
    [
        "run_id: r\nsweep: s\ntrain:\n  lr: 0.001\n  seed: 1\ndata:\n  split:\n  - 0.6\n  - 0.4\nresources: {}\n",
        "# comment\ntrain:\n  note: |\n    two\n\n    lines\n  list:\n  - a\nb: 'quoted: x'\n\"c\": yes\n",
        "---\ntrain: {lr: 1e-3}\n...\n",
        "a: 1\na: 2\n",  # duplicate keys: YAML's last one wins
        "a: &x {k: 1}\nb: *x\n",  # an alias into another block
        "a: [1,\n2]\nb: 2\n",  # a flow list over two lines
    ],
)
def test_config_yaml_read_block_by_block_is_yaml(text):
    assert rundir.load_config_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "content, problem",
    [
        (bytes(range(256)), "binary, not YAML text"),
        (b"train: [framework: torch\nmodel", "not valid YAML ("),
        (b"- just\n- a list\n", "not a run's settings"),
        (b"run_id: x\n", "sweep: required"),
    ],
)
def test_a_damaged_config_yaml_names_the_file_and_how_to_redo_the_run(tmp_path, spec, content, problem):
    rundir.write_config(tmp_path, spec)
    (tmp_path / rundir.CONFIG).write_bytes(content)
    with pytest.raises(DamagedFileError) as raised:
        rundir.read_config(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / rundir.CONFIG}: ") and problem in message, message
    assert message.endswith(rundir.FIX_REDO.format(run=tmp_path)) and "\n" not in message


def test_a_folder_without_config_yaml_is_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a crackhpc run folder"):
        rundir.read_config(tmp_path)


def test_a_run_without_result_json_is_pending(tmp_path):
    assert rundir.read_result(tmp_path) == {"status": "pending"}
    assert rundir.state_of(rundir.read_result(tmp_path)) is RunState.PENDING
    assert not rundir.is_completed(tmp_path)


def test_update_result_merges_fields_and_stamps_host_and_time(tmp_path):
    rundir.update_result(tmp_path, status=RunState.RUNNING, epochs_done=1)
    result = rundir.update_result(tmp_path, epochs_done=2, test_acc=0.5)
    assert rundir.read_result(tmp_path) == result
    assert (result["status"], result["epochs_done"], result["test_acc"]) == ("running", 2, 0.5)
    assert result["host"] == socket.gethostname() and result["updated"].endswith("+00:00")
    rundir.update_result(tmp_path, status=RunState.COMPLETED)
    assert rundir.is_completed(tmp_path)


def test_a_new_attempt_keeps_only_the_requeue_count(tmp_path):
    rundir.update_result(tmp_path, status="failed", error="boom", requeues=2, epochs_done=3)
    result = rundir.reset_result(tmp_path, status=RunState.PENDING, run_id="r")
    assert {k: result[k] for k in ("status", "run_id", "requeues")} == {
        "status": "pending",
        "run_id": "r",
        "requeues": 2,
    }
    assert "error" not in result and "epochs_done" not in result


def test_a_damaged_result_json_is_read_as_an_error_and_replaced_by_the_next_write(tmp_path):
    (tmp_path / rundir.RESULT).write_text('{"status": "comp')
    with pytest.raises(DamagedFileError) as raised:
        rundir.read_result(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / rundir.RESULT}: not valid JSON")
    assert str(raised.value).endswith(rundir.FIX_RERUN)
    assert not rundir.is_completed(tmp_path)
    rundir.update_result(tmp_path, status=RunState.FAILED)  # what it said is lost already
    assert rundir.read_result(tmp_path)["status"] == "failed"


def test_an_unknown_recorded_status_is_a_failure(tmp_path):
    rundir.update_result(tmp_path, status="exploded")
    assert rundir.state_of(rundir.read_result(tmp_path)) is RunState.FAILED
