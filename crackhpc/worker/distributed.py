"""Who am I in a multi-task job: rank, local rank, world size and rendezvous, from the environment.

Sources, first match wins: submitit's JobEnvironment (Slurm and local executors), plain
Slurm variables (an sbatch template launching with srun), torchrun's variables, else one process.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    job_id: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        """Set the variables torch.distributed's env:// rendezvous and Keras/TF read."""
        os.environ.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank),
                          WORLD_SIZE=str(self.world_size), MASTER_ADDR=self.master_addr,
                          MASTER_PORT=str(self.master_port))


def _port(job_id: str) -> int:
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits[-6:]) % 20000


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0]


def from_environment() -> DistEnv:
    if "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ:
        import submitit

        env = submitit.JobEnvironment()
        host = env.hostnames[0] if env.cluster == "slurm" else "127.0.0.1"
        return DistEnv(env.global_rank, env.local_rank, env.num_tasks, host, _port(str(env.job_id)), str(env.job_id))
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "")
        return DistEnv(int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", 0)),
                       int(os.environ.get("SLURM_NTASKS", 1)), _first_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")),
                       _port(job), job)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]),
                       os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 29500)))
    return DistEnv()
