"""The one adapter between crackhpc and Slurm: resources → sbatch options (for submitit and for the
plain templates alike), the cluster's limits, and the sacct/squeue/scancel/sbatch/scontrol calls,
each with a time limit.

submitit is used through its public API; the dry-run's exact-script preview needs three of its
internals, isolated in `preview` (setup.cfg pins submitit's minor version, and
tests/test_slurm.py fails loudly if an upgrade changes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .attempts import START_SHELL
from .config import Resources
from .errors import CrackhpcError
from .states import RunState
from .usage import Usage, seconds, size_mb

# Job states that are not final: the job may still run, so its run must not be submitted again.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
SACCT_FIELDS = ("JobID", "State", "Elapsed", "NodeList", "AllocTRES", "Reason")
# What each job used against what it asked for (crackhpc.usage); MaxRSS is a step's, not the job's.
USAGE_FIELDS = ("ElapsedRaw", "TotalCPU", "MaxRSS", "ReqMem", "AllocCPUS", "TimelimitRaw")
# How far the clocks of the submitting host and of Slurm's controller may differ: sacct is asked
# from this long before a job's recorded submission.
SACCT_CLOCK_SKEW_S = 600
T = TypeVar("T")
# timeout(1)'s exit status when it stopped the command (TERM, then KILL for one that ignores TERM)
_TIMED_OUT = (124, 137)


class SlurmUnavailable(CrackhpcError):
    """Slurm's accounting did not answer, or answered what crackhpc cannot read."""


@dataclass(frozen=True)
class SlurmJob:
    """A job as sacct shows its allocation, with what its steps used."""

    state: str
    elapsed: str = ""
    node: str = ""
    tres: str = ""
    reason: str = ""
    usage: Usage | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def run_state(self) -> RunState:
        """Slurm's word for the job as a run state; held and requeued jobs wait like pending ones."""
        if self.active:
            return RunState.RUNNING if self.state in ("RUNNING", "COMPLETING") else RunState.PENDING
        return RunState.parse(self.state.lower())


# -- resources → options ------------------------------------------------------------------------


def options(res: Resources) -> dict:
    """The sbatch long options of one job shape; the sweep's own `resources.sbatch` come last.
    submitit jobs and `crackhpc sbatch` scripts both get exactly these."""
    opts = {
        "nodes": res.nodes,
        "ntasks-per-node": res.ntasks_per_node,
        "gpus-per-node": res.gpus_per_node or None,
        "cpus-per-task": res.cpus_per_task,
        "mem": f"{int(res.mem_gb * 1024)}M" if res.mem_gb else None,
        "time": res.timeout_min,
        "partition": res.partition,
        "account": res.account,
        "qos": res.qos,
        "constraint": res.constraint,
        # submitit requeues with `scontrol requeue`, which Slurm refuses for a job that is not
        # requeueable: the default where a cluster sets JobRequeue=0. Requeueable jobs are also
        # requeued by Slurm when a node fails under them; `sbatch: {no-requeue: true}` opts out.
        "requeue": None if res.sbatch.get("no-requeue") else True,
        **res.sbatch,
    }
    return {k: v for k, v in opts.items() if v is not None}


# submitit's own names for the options it writes itself (it also needs them: srun's tasks, the
# signal's timing); every other option goes through slurm_additional_parameters.
_SUBMITIT_NAMES = {
    "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_task",
    "time": "timeout_min",
}


def submitit_parameters(res: Resources, executor: str, name: str) -> dict:
    """AutoExecutor parameters of one job shape for the `slurm` or `local`/`debug` executor."""
    if executor != "slurm":
        if res.nodes > 1:
            raise CrackhpcError(
                f"resources.nodes={res.nodes}: the {executor} executor runs on this machine only; use --executor slurm"
            )
        return {
            "timeout_min": res.timeout_min,
            "nodes": 1,
            "tasks_per_node": res.ntasks_per_node,
            "cpus_per_task": res.cpus_per_task,
            "gpus_per_node": min(res.gpus_per_node, local_gpus()),
            "name": name,
        }
    opts = options(res)
    params = {submitit: opts.pop(option) for option, submitit in _SUBMITIT_NAMES.items() if option in opts}
    params.update(
        name=name,
        slurm_array_parallelism=res.array_parallelism,
        slurm_max_num_timeout=res.max_requeues,
        # The start line first: each start of a requeued job appends to the same logs.
        slurm_setup=[START_SHELL, *res.setup],
        slurm_additional_parameters=opts,
    )
    return params


def local_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def preview(submitter, n_runs: int) -> str:
    """The submission script submitit writes for `n_runs` runs of this AutoExecutor, built the way
    submitit builds it: one run goes out as a plain job, more as one array. submitit internals
    (pinned in setup.cfg; tests/test_slurm.py checks them)."""
    from submitit.slurm.slurm import _make_sbatch_string

    slurm = submitter._executor
    params = dict(slurm.parameters, **({"map_count": n_runs} if n_runs > 1 else {}))
    return _make_sbatch_string(command=slurm._submitit_command_str, folder=slurm.folder, **params)


# -- Slurm's commands ---------------------------------------------------------------------------


def timeout_s() -> float:
    """How long any Slurm command may take: a hung slurmctld or slurmdbd must not hang crackhpc."""
    return float(os.environ.get("CRACKHPC_SLURM_TIMEOUT", 30))


def _timed(cmd: Sequence[str]) -> list[str]:
    """`cmd` under coreutils' timeout, which gives it a process group of its own and, when the time is
    up, stops the whole group: a site's wrapper script and whatever it started, not just the wrapper."""
    return ["timeout", "--kill-after=2", f"{timeout_s():g}", *cmd]


def _call(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command within timeout_s(); SlurmUnavailable if it did not answer in time."""
    if not shutil.which(cmd[0]):
        raise SlurmUnavailable(f"{cmd[0]} not found: run this on the cluster's login node")
    proc = subprocess.Popen(
        _timed(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate()
    except BaseException:  # Ctrl-C while waiting: the command's group goes with this process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode in _TIMED_OUT:
        raise SlurmUnavailable(
            f"`{cmd[0]}` did not answer in {timeout_s():g} s (set CRACKHPC_SLURM_TIMEOUT to wait longer)"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _why(out: subprocess.CompletedProcess[str]) -> str:
    return (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]


def _run(cmd: list[str], may_fail: bool = False) -> str:
    """stdout of a Slurm command; "" where it failed and `may_fail`, else SlurmUnavailable."""
    out = _call(cmd)
    if out.returncode and not may_fail:
        raise SlurmUnavailable(f"`{' '.join(cmd[:3])} …` failed: {_why(out)} (is slurmdbd running?)")
    return out.stdout if not out.returncode else ""


# The most job ids one command's `-j` list (one argument) or argument list holds: Linux refuses a
# single argument over 128 KiB (MAX_ARG_STRLEN), and 10,000 array tasks such as `12345678_9999` are
# 140 KB; so a long list goes out in several calls, each well within it.
MAX_IDS_PER_CALL = 2000


def batches(job_ids: Sequence[str]) -> list[list[str]]:
    """`job_ids` in lists of at most MAX_IDS_PER_CALL, in order."""
    size = MAX_IDS_PER_CALL
    return [list(job_ids[i : i + size]) for i in range(0, len(job_ids), size)]


def sacct(job_ids: list[str], since: str | None = None) -> dict[str, SlurmJob]:
    """Slurm's view of these jobs: one sacct call per MAX_IDS_PER_CALL job arrays (one call for a
    sweep, but for the largest), and as many squeue calls for what accounting does not know yet
    (slurmctld tells slurmdbd about new jobs in its own time, and a job submitted a moment ago must
    not look unsubmitted) or does not say (why a job is pending). Empty where there is no sacct.
    `since` (an ISO time: the earliest submission among them) keeps older jobs of the same ids out:
    where a cluster's job ids started again (a controller that lost its state, ids wrapped at
    MaxJobId), accounting holds an ended job under a reused id, which `sacct -j`, looking back for
    ever, gives while the new job has not reached accounting yet."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    fields = ",".join(SACCT_FIELDS + USAGE_FIELDS)
    window = _sacct_window(since)
    # one header for the whole table: each call prints its own
    texts = [_run(["sacct", "-P", *window, "-o", fields, "-j", ",".join(part)]) for part in batches(arrays)]
    jobs = parse_sacct(texts[0] + "".join(t.partition("\n")[2] for t in texts[1:]))
    ask = [
        j for j in job_ids if j not in jobs or (jobs[j].state == "PENDING" and not jobs[j].reason) or _requeued(jobs[j])
    ]
    if ask and shutil.which("squeue"):
        # squeue fails when it knows none of the ids: all of them have left the queue.
        rows = "".join(
            _run(["squeue", "-h", "-r", "-o", "%i|%T|%M|%N||%r", "-j", ",".join(part)], may_fail=True)
            for part in batches(ask)
        )
        queued = parse_sacct("|".join(SACCT_FIELDS) + "\n" + rows)
        for job_id, job in queued.items():
            known = jobs.get(job_id)
            jobs[job_id] = dataclasses.replace(known, state=job.state, reason=job.reason) if known else job
    return jobs


def _sacct_window(since: str | None) -> list[str]:
    """sacct's -S (in this machine's local time) for jobs submitted from `since` on, less
    SACCT_CLOCK_SKEW_S; none for a time that cannot be read."""
    try:
        start = dt.datetime.fromisoformat(since).astimezone() if since else None
    except ValueError:
        return []
    if start is None:
        return []
    return ["-S", (start - dt.timedelta(seconds=SACCT_CLOCK_SKEW_S)).strftime("%Y-%m-%dT%H:%M:%S")]


def _requeued(job: SlurmJob) -> bool:
    """An end that Slurm may follow by requeueing the job (a node failed under it, or it was
    preempted): accounting shows the end a moment before the job's next pending row, while the queue
    already holds it again, and a queued job must not look ended (nor be submitted a second time)."""
    return job.state in ("NODE_FAIL", "PREEMPTED")


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """Job id → its row, from sacct -P output with its header: the allocations through submitit's
    parser (a pending array shows as one row, `123_[2-5%2]`, which each task gets), with the usage
    of their steps where sacct gave USAGE_FIELDS. Rows that cannot be read are left out."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    header = text.split("\n", 1)[0].split("|")
    if text.strip() and not set(SACCT_FIELDS) <= set(header):
        raise SlurmUnavailable(f"sacct answered something crackhpc cannot read: {text.strip().splitlines()[0][:80]!r}")
    peaks: dict[str, float] = {}
    for line in text.splitlines()[1:]:
        row = dict(zip(header, line.split("|")))
        job_id, _, step = row.get("JobID", "").partition(".")
        if step and (mb := size_mb(row.get("MaxRSS", ""))) is not None:
            peaks[job_id] = max(mb, peaks.get(job_id, 0.0))
    jobs = {}
    for job_id, row in SlurmInfoWatcher().read_info(text).items():
        if len(row) != len(header) or not row.get("State"):
            continue
        jobs[job_id] = SlurmJob(
            state=row["State"].split()[0],
            elapsed=row["Elapsed"],
            node="" if row["NodeList"] in ("None assigned", "(null)") else row["NodeList"],
            tres=row["AllocTRES"],
            reason="" if row["Reason"] == "None" else row["Reason"],
            usage=_usage(row, peaks.get(job_id)) if "ElapsedRaw" in row else None,
        )
    return jobs


def _usage(row: dict, peak_mb: float | None) -> Usage:
    cpus = int(row["AllocCPUS"]) if row["AllocCPUS"].isdigit() else None
    gpus = re.search(r"gres/gpu=(\d+)", row["AllocTRES"])
    return Usage(
        elapsed_s=float(row["ElapsedRaw"]) if row["ElapsedRaw"].isdigit() else None,
        limit_s=float(row["TimelimitRaw"]) * 60 if row["TimelimitRaw"].isdigit() else None,
        cpus=cpus,
        cpu_s=seconds(row["TotalCPU"]),
        req_mem_mb=size_mb(row["ReqMem"], cpus or 1),
        peak_mem_mb=peak_mb,
        gpus=int(gpus[1]) if gpus else 0,
    )


def scancel(job_ids: list[str], echo: Callable = print, poll_s: float = 1.0, timeout_s: float = 180.0) -> None:
    """Cancel the jobs in one call and wait until their processes are gone. (submitit's Job.cancel
    runs one scancel per job and does not wait.) Slurm sends SIGTERM, which submitit's jobs ignore,
    and SIGKILL KillWait seconds later: until then a worker may still write result.json."""
    if not shutil.which("scancel"):
        raise CrackhpcError("scancel not found: cancel Slurm runs on the cluster that runs them (its login node)")
    for part in batches(job_ids):
        out = _call(["scancel", *part])
        for line in out.stderr.strip().splitlines():
            echo(f"  {line}")  # e.g. a job that ended meanwhile; the others are cancelled all the same
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # squeue fails once no id of its list is known any more
        queue = "".join(
            _run(["squeue", "-h", "-o", "%i", "-j", ",".join(part)], may_fail=True) for part in batches(job_ids)
        )
        if not queue.strip():
            return
        time.sleep(poll_s)
    echo(f"  jobs still stopping after {timeout_s:.0f}s: {' '.join(queue.split())}")


def whole_arrays(job_ids: Sequence[str]) -> list[str]:
    """`job_ids` with the tasks of a job array (`123_4`) given as the array (`123`): for cancelling
    every job of a sweep, where one scancel of a 1,000-task array is one request to slurmctld, not
    1,000 (a pending array is one record until its tasks start)."""
    return list(dict.fromkeys(job_id.partition("_")[0] for job_id in job_ids))


def config_value(key: str) -> str | None:
    """One value of `scontrol show config` (None without Slurm, or where it is not set)."""
    if not shutil.which("scontrol"):
        return None
    match = re.search(rf"^{re.escape(key)}\s*=\s*(\S+)", _run(["scontrol", "show", "config"], may_fail=True), re.M)
    return match[1] if match else None


def hostnames(nodelist: str) -> tuple[str, ...]:
    """A job's hosts in Slurm's order, from its nodelist (`node[1-2],gpu7`); a plain list needs no scontrol."""
    if "[" not in nodelist:
        return tuple(h for h in nodelist.split(",") if h)
    return tuple(_run(["scontrol", "show", "hostnames", nodelist]).split())


def unavailable_nodes(nodelist: str) -> dict[str, str]:
    """The nodes of `nodelist` that Slurm holds down, drained, failed or not responding, each with
    Slurm's reason (e.g. `Not responding`); empty where all of them are back, or there is no sinfo."""
    if not nodelist or not shutil.which("sinfo"):
        return {}
    nodes = {}
    for line in _run(["sinfo", "-h", "-N", "-n", nodelist, "-o", "%N|%T|%E"], may_fail=True).splitlines():
        name, state, reason = (line.split("|", 2) + ["", ""])[:3]
        if state.endswith("*") or state.startswith(("down", "drain", "fail")):
            nodes[name] = reason if reason not in ("", "none") else state
    return nodes


def max_array_size() -> int | None:
    """A job array's indices run 0..MaxArraySize-1: a job shape with more runs goes out as several arrays."""
    value = config_value("MaxArraySize")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def split_arrays(groups: Sequence[list[T]], limit: int | None) -> list[list[T]]:
    """Each group cut into arrays of at most `limit` runs (no limit: as they are)."""
    if not limit:
        return [list(g) for g in groups]
    return [list(g[i : i + limit]) for g in groups for i in range(0, len(g), limit)]


@dataclass(frozen=True)
class SlurmAnswer:
    accepted: bool
    lines: tuple[str, ...]  # sbatch's own words, without its `sbatch: ` prefix

    def __str__(self) -> str:
        verdict = "accepted" if self.accepted else "REFUSED"
        return f"sbatch --test-only: {verdict}: " + " / ".join(self.lines or ("(no answer)",))


def ask_test_only(script: str) -> SlurmAnswer | None:
    """Slurm's answer to `sbatch --test-only` for this job script (partition, account, QOS, GRES,
    limits, and when it expects to start it; nothing is queued); None where there is no sbatch."""
    if not shutil.which("sbatch"):
        return None
    with tempfile.TemporaryDirectory(prefix="crackhpc-preflight-") as tmp:
        path = Path(tmp) / "job.sh"
        path.write_text(script)
        try:
            out = _call(["sbatch", "--test-only", str(path)])
        except SlurmUnavailable as exc:
            return SlurmAnswer(False, (str(exc),))
    lines = tuple(
        line.removeprefix("sbatch: ").strip() for line in (out.stderr + out.stdout).splitlines() if line.strip()
    )
    return SlurmAnswer(out.returncode == 0, lines)


def helper_script(comment: str, sbatch_options: dict, res: Resources, command: Sequence[str]) -> str:
    """The script of a small job of crackhpc's own (the report job, a search's controller): its
    `sbatch_options`, the sweep's partition, account and QOS, the sweep's setup lines, then `command`."""
    where = {k: v for k, v in options(res).items() if k in ("partition", "account", "qos")}
    return "\n".join(
        [
            "#!/bin/bash",
            f"# {comment}",
            *(f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in {**sbatch_options, **where}.items()),
            *res.setup,
            "exec " + " ".join(map(shlex.quote, command)),
            "",
        ]
    )


def sbatch(script: Path, *options: str) -> str:
    """Submit a script, with sbatch `options` (e.g. `--dependency=afterany:123`); returns the job id."""
    if not shutil.which("sbatch"):
        raise CrackhpcError(
            "sbatch not found: --submit works on a Slurm login node; without it the scripts are only written"
        )
    out = _call(["sbatch", "--parsable", *options, str(script)])
    if out.returncode:
        raise CrackhpcError(f"{script}: sbatch refused it: {_why(out)}")
    return out.stdout.strip().split(";")[0]  # --parsable prints `id` or `id;cluster`


@contextlib.contextmanager
def submission(what: str, hint: str) -> Iterator[None]:
    """Around submitit's submissions: its sbatch call runs within timeout_s() like every other Slurm
    command here (submitit gives it none), and sbatch's refusal (a partition that does not exist, an
    unreachable controller) or silence becomes one line naming what was submitted, instead of
    submitit's copy of sbatch's stderr and a traceback; the run folders stay ready for a retry."""
    from submitit.core.utils import FailedJobError
    from submitit.slurm.slurm import SlurmExecutor

    command = SlurmExecutor._make_submission_command
    # Class-wide, not per instance: submitit submits an array through a fresh SlurmExecutor.
    SlurmExecutor._make_submission_command = lambda self, path: _timed(["sbatch", str(path)])  # type: ignore[method-assign,assignment]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except FailedJobError as exc:
        code = getattr(exc.__cause__, "returncode", None)
        if code in _TIMED_OUT:
            why = f"sbatch did not answer in {timeout_s():g} s (set CRACKHPC_SLURM_TIMEOUT to wait longer; `squeue --me` shows whether it queued anything)"
        else:
            why = "Slurm refused the job: " + " / ".join(
                line.removeprefix("sbatch: ") for line in str(exc).strip().splitlines()
            )
        raise CrackhpcError(f"{what}: {why} ({hint})") from None
    finally:
        SlurmExecutor._make_submission_command = command  # type: ignore[method-assign]
