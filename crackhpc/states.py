"""A run's state: what its worker recorded, merged with what the scheduler knows.

The worker writes pending → running → completed | failed | cancelled (and requeued when a time
limit or preemption sends it back to the queue), or pruned when a search's controller stopped it
early (crackhpc.search: its epochs so far are its result); `crackhpc status` adds the states only the
scheduler, or a dead process, can tell: killed at the time limit, out of memory, a node failure,
a worker that died without a word, a run folder too damaged to read.
"""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    REQUEUED = "requeued"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # stopped early by a search (crackhpc.search), at the epoch in result.json's epochs_done
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    BOOT_FAIL = "boot_fail"
    DEADLINE = "deadline"
    UNREADABLE = "unreadable"  # result.json or config.yaml damaged: the run folder cannot say

    def __str__(self) -> str:
        return self.value

    @property
    def live(self) -> bool:
        """Queued, running or about to run again: its job must not be submitted a second time."""
        return self in LIVE

    @classmethod
    def parse(cls, text: str) -> RunState:
        """A state from its name, e.g. a Slurm state lower-cased; unknown names are failures."""
        try:
            return cls(text)
        except ValueError:
            return cls.FAILED


LIVE = frozenset({RunState.PENDING, RunState.RUNNING, RunState.REQUEUED})
# What only the worker (or `crackhpc cancel`) records: it describes the latest attempt, so it wins
# over the scheduler's view of the job.
RECORDED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.PRUNED})
# Ended as meant to: trained to its last epoch, or stopped early by its search, which has its value.
SUCCEEDED = frozenset({RunState.COMPLETED, RunState.PRUNED})
