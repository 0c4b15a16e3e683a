"""crackhpc.states: which states are live (never submitted twice), which only the worker records
(they win over the scheduler's view), and how a name, a Slurm state among them, is read."""

from __future__ import annotations

import pytest

from crackhpc import status
from crackhpc.slurm import SlurmJob
from crackhpc.states import LIVE, RECORDED, SUCCEEDED, RunState


def test_live_states_are_queued_running_or_about_to_run_again():
    assert {s for s in RunState if s.live} == LIVE == {RunState.PENDING, RunState.RUNNING, RunState.REQUEUED}


def test_the_worker_records_only_outcomes_and_none_is_live():
    assert RECORDED == {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.PRUNED}
    assert not RECORDED & LIVE and SUCCEEDED == {RunState.COMPLETED, RunState.PRUNED}


@pytest.mark.parametrize("slurm_state", ["COMPLETED", "RUNNING", "CANCELLED"])
def test_a_pruned_run_is_final_whatever_slurm_says_of_its_job(slurm_state):
    """The worker stopped at the search's request and exited 0: Slurm's COMPLETED (or a RUNNING seen a
    moment before the job ended) must not turn it into failed or live."""
    assert status.merge(RunState.PRUNED, SlurmJob(slurm_state)) is RunState.PRUNED


@pytest.mark.parametrize("state", list(RunState))
def test_a_state_reads_back_from_its_name_and_prints_as_it(state):
    assert RunState.parse(state.value) is state and str(state) == f"{state}" == state.value


@pytest.mark.parametrize(
    "slurm, state",
    [("TIMEOUT", RunState.TIMEOUT), ("OUT_OF_MEMORY", RunState.OUT_OF_MEMORY), ("NODE_FAIL", RunState.NODE_FAIL)],
)
def test_slurm_states_lower_cased_are_run_states(slurm, state):
    assert RunState.parse(slurm.lower()) is state


@pytest.mark.parametrize("name", ["special_exit", "revoked", "", "COMPLETED"])
def test_an_unknown_name_is_a_failure(name):
    assert RunState.parse(name) is RunState.FAILED
