"""Pre-flight checks of a submission on the login node, before anything waits in a queue:

- ImageNet weights: every pretrained run's file must be in the offline cache (crackhpc.weights).
  A real submission refuses without them; a dry run warns and names the prefetch that fixes it.
- Slurm: `sbatch --test-only` on the very script submitit would submit for a job shape. Slurm
  checks partition, account, QOS, GRES, limits and time against its configuration and answers
  with the reason it would refuse the job, or when it expects to start it; nothing is queued.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import WeightsError


def missing_weights(specs: Iterable) -> dict[tuple[str, str], str]:
    """(framework, model) → why its weights are not usable, for each pretrained model of the runs."""
    from .weights import locate

    missing = {}
    for key in dict.fromkeys((s.train.framework, s.train.model) for s in specs if s.train.pretrained):
        try:
            locate(*key)
        except WeightsError as exc:
            missing[key] = str(exc)
    return missing


def prefetch_command(missing: Iterable[tuple[str, str]]) -> str:
    return "crackhpc prefetch --models " + ",".join(f"{framework}:{model}" for framework, model in missing)


def require_weights(specs: Iterable) -> None:
    """A real submission: one line naming what is missing and the prefetch that fetches it."""
    missing = missing_weights(specs)
    if len(missing) == 1:
        raise WeightsError(next(iter(missing.values())))
    if missing:
        raise WeightsError(f"pretrained weights not found for {', '.join(' '.join(k) for k in missing)}: run "
                           f"`{prefetch_command(missing)}` on the login node, or set `pretrained: false`")


def weights_warnings(specs: Iterable) -> list[str]:
    """A dry run: the problems as warnings, and the command that fixes them all."""
    missing = missing_weights(specs)
    if not missing:
        return []
    return [f"warning: {why}" for why in missing.values()] + [
        f"warning: a real submission refuses these runs; on the login node: {prefetch_command(missing)}"]


@dataclass(frozen=True)
class SlurmAnswer:
    accepted: bool
    lines: tuple[str, ...]  # sbatch's own words, without its `sbatch: ` prefix

    def __str__(self) -> str:
        verdict = "accepted" if self.accepted else "REFUSED"
        return f"sbatch --test-only: {verdict}: " + " / ".join(self.lines or ("(no answer)",))


def ask_slurm(script: str) -> SlurmAnswer | None:
    """Slurm's answer to `sbatch --test-only` for this job script; None where there is no sbatch."""
    if not shutil.which("sbatch"):
        return None
    with tempfile.TemporaryDirectory(prefix="crackhpc-preflight-") as tmp:
        path = Path(tmp) / "job.sh"
        path.write_text(script)
        try:
            out = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return SlurmAnswer(False, ("no answer from slurmctld within 60 s",))
    lines = tuple(line.removeprefix("sbatch: ").strip() for line in (out.stderr + out.stdout).splitlines() if line.strip())
    return SlurmAnswer(out.returncode == 0, lines)
