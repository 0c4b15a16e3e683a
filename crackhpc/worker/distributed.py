"""Who am I in a multi-task job: rank, local rank, world size and rendezvous, from the environment.

Sources, first match wins: submitit's JobEnvironment (Slurm and local executors), plain
Slurm variables (an sbatch template launching with srun), horovodrun/mpirun's variables,
torchrun's variables, else one process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .. import slurm

# How long the ranks of a job wait for each other to meet (torch's TCPStore: rank 0 serves it at
# MASTER_ADDR:MASTER_PORT, the others connect). srun starts a step's tasks together, so a rank still
# missing after this long cannot reach rank 0 (a wrong address, a firewall, a dead node): the run
# fails with one line instead of waiting out torch's 30 minutes.
RENDEZVOUS_TIMEOUT_ENV = "CRACKHPC_RENDEZVOUS_TIMEOUT_S"


def rendezvous_timeout_s() -> float:
    return float(os.environ.get(RENDEZVOUS_TIMEOUT_ENV) or 300)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    job_id: str = ""
    nodes: tuple[str, ...] = ()  # the job's hosts in Slurm's order; empty: every task on master_addr
    restarts: int = 0  # SLURM_RESTART_COUNT: how often Slurm has requeued this job

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def host_of(self, rank: int) -> str:
        """Slurm's default block distribution: the first node's tasks take the lowest ranks."""
        if not self.nodes:
            return self.master_addr
        return self.nodes[rank * len(self.nodes) // self.world_size]

    def tf_config(self) -> str:
        """TF_CONFIG for MultiWorkerMirroredStrategy: each rank listens on master_port + rank,
        so tasks sharing a node do not collide."""
        workers = [f"{self.host_of(r)}:{self.master_port + r}" for r in range(self.world_size)]
        return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": self.rank}})

    def export(self) -> None:
        """Set the variables torch.distributed's env:// rendezvous reads."""
        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(self.local_rank),
            WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def _port(job_id: str) -> int:
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits[-6:]) % 20000


def from_environment() -> DistEnv:
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ:
        import submitit

        env = submitit.JobEnvironment()
        nodes = tuple(env.hostnames) if env.cluster == "slurm" else ()
        return DistEnv(
            env.global_rank,
            env.local_rank,
            env.num_tasks,
            nodes[0] if nodes else "127.0.0.1",
            _port(str(env.job_id)),
            str(env.job_id),
            nodes,
            restarts,
        )
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "")
        nodes = slurm.hostnames(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        return DistEnv(
            int(os.environ["SLURM_PROCID"]),
            int(os.environ.get("SLURM_LOCALID", 0)),
            int(os.environ.get("SLURM_NTASKS", 1)),
            nodes[0],
            _port(job),
            job,
            nodes,
            restarts,
        )
    for prefix in ("HOROVOD_", "OMPI_COMM_WORLD_"):  # horovodrun (Gloo), mpirun (Open MPI)
        if f"{prefix}RANK" in os.environ and f"{prefix}SIZE" in os.environ:
            return DistEnv(
                int(os.environ[f"{prefix}RANK"]),
                int(os.environ.get(f"{prefix}LOCAL_RANK", 0)),
                int(os.environ[f"{prefix}SIZE"]),
            )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(
            int(os.environ["RANK"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ.get("MASTER_PORT", 29500)),
        )
    return DistEnv()
