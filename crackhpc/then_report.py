"""`crackhpc sweep --then-report [--mlflow [URI]]`: the sweep's report written on the cluster when its
jobs end, with no crackhpc process waiting on the login node.

On Slurm, one small CPU job (1 task, 1 CPU, 4 GB, 60 min, in the sweep's partition, account and
QOS, after its setup lines) that Slurm starts once every job array of the submission has ended,
whatever their outcome (`--dependency=afterany:`), and that runs `crackhpc report` (and, with
--mlflow, the MLflow import) with this Python. Its job id and logs are in sweep.json
(`report_job`); `crackhpc status` shows it and `crackhpc cancel` of the whole sweep cancels it.
Where the sweep waits for its jobs (local executor, --wait) the report runs after the wait instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import atomic, rundir, slurm
from .config import Resources
from .errors import CrackhpcError
from .record import Job, SweepFolder, SweepRecord

SCRIPT, LOG = "report-job.sbatch", "report-job-%j"
OPTIONS = {"nodes": 1, "ntasks": 1, "cpus-per-task": 1, "mem": "4G", "time": 60}


def absolute(uri: str) -> str:
    """A SQLite URI with a relative path made absolute: the report job runs in another folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


@dataclass
class ThenReport:
    """What --then-report asked for; `job_id` once the report job went out."""

    mlflow: str | None = None  # None: no import; "": the default store (sqlite beside the sweep)
    job_id: str | None = None

    def arguments(self, sweep_dir: Path) -> list[str]:
        """`crackhpc report`'s command line for the sweep folder."""
        mlflow = [] if self.mlflow is None else ["--mlflow", *([absolute(self.mlflow)] if self.mlflow else [])]
        return ["report", str(sweep_dir), *mlflow]

    def script(self, folder: SweepFolder, resources: Resources) -> str:
        options = {
            "job-name": f"{resources.job_name}-{folder.path.name}-report",
            **OPTIONS,
            "output": folder.path / f"{LOG}.out",
            "error": folder.path / f"{LOG}.err",
        }
        command = [sys.executable, "-m", "crackhpc.cli", *self.arguments(folder.path)]
        what = f"`crackhpc report` of sweep {folder.path.name} once its jobs have ended (crackhpc sweep --then-report)"
        return slurm.helper_script(what, options, resources, command)

    def submit(self, folder: SweepFolder, record: SweepRecord, job_ids: list[str], resources: Resources) -> str:
        """Submit the report job after the arrays (or single jobs) of `job_ids` and record it in
        sweep.json; returns the line that says so. A refusal is one line: the runs' jobs stay queued."""
        arrays = sorted({job_id.split("_")[0] for job_id in job_ids}, key=lambda j: (len(j), j))
        script = atomic.write_text(folder.path / SCRIPT, self.script(folder, resources))
        try:
            self.job_id = slurm.sbatch(script, f"--dependency=afterany:{':'.join(arrays)}")
        except CrackhpcError as exc:
            raise CrackhpcError(
                f"--then-report: the report job was not submitted ({exc}); the runs' jobs are queued "
                f"(ids in {folder.record_path}): run `crackhpc report {folder.path}` once they end"
            ) from None
        logs = [folder.path / f"{LOG.replace('%j', self.job_id)}.{ext}" for ext in ("out", "err")]
        command = " ".join(["crackhpc", *self.arguments(folder.path)])
        record.report_job = Job.model_validate(
            {
                "job_id": self.job_id,
                "executor": "slurm",
                "submitted": rundir.now(),
                "stdout": str(logs[0]),
                "stderr": str(logs[1]),
                "after": arrays,
                "command": command,
            }
        )
        folder.save(record)
        return f"  report job {self.job_id}: `{command}` once job(s) {', '.join(arrays)} end; log {logs[0]}"
