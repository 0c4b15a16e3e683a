"""What produced a run's numbers, recorded in its result.json under `provenance` (and the
submission part in sweep.json too):

- at submission, on the login node where the sweep file is: the git commit of the sweep file's
  repository and whether the checkout differs from it (`git_dirty`: tracked files changed, or the
  sweep file itself not committed), the sweep file's sha256, crackhpc's own commit when it runs
  from a checkout, and the submitting host;
- at run time, in the worker: the versions of crackhpc, Python, submitit, numpy and the run's
  framework (torch and torchvision, or tensorflow and keras; Horovod for its backend), the host,
  and the GPU model, NVIDIA driver and CUDA version where there is a GPU.

A Keras run never imports torch here, nor a torch run TensorFlow; the GPU comes from nvidia-smi,
which does not start a CUDA context in the worker before its framework sets the device up.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from . import __version__, procs, rundir
from .errors import CrackhpcError

# The summary.csv columns taken from a run's provenance.
COLUMNS = ("git_commit", "git_dirty", "framework_version", "gpu", "cuda")


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: Path) -> dict:
    """The commit of the repository holding `path` and whether the checkout differs from it."""
    folder = path if path.is_dir() else path.parent
    if not shutil.which("git") or not (top := _git(folder, "rev-parse", "--show-toplevel")):
        return {"git_commit": None}
    commit = _git(folder, "rev-parse", "HEAD")
    changed = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
    if path.is_file():
        # A sweep file that is not in the commit cannot be recovered from it.
        changed = changed or _git(folder, "ls-files", "--error-unmatch", path.name) is None
    return {"git_commit": commit, "git_dirty": changed, "git_repo": top}


def submission(sweep_file: str | Path) -> dict:
    path = Path(sweep_file).resolve()
    info = {**git_state(path), "sweep_file": str(path), "submitted_from": procs.HOST}
    if path.is_file():
        info["sweep_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    own = git_state(Path(__file__).resolve().parent)  # crackhpc run from a checkout: which commit of it
    if own.get("git_commit") and own.get("git_repo") != info.get("git_repo"):
        info.update(crackhpc_commit=own["git_commit"], crackhpc_dirty=own["git_dirty"])
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> dict:
    """The GPUs this process may use, as nvidia-smi names them (none: no keys)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = [[f.strip() for f in line.split(",")] for line in out.stdout.splitlines() if line.count(",") >= 3]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        chosen = [r for r in rows if r[0] in wanted or r[1] in wanted]
        rows = chosen or rows  # a cgroup may renumber the devices nvidia-smi lists
    if out.returncode or not rows:
        return {}
    names = sorted({r[2] for r in rows})
    return {"gpu": " + ".join(names), "gpu_count": len(rows), "nvidia_driver": rows[0][3]}


def runtime(framework: str, backend: str = "auto") -> dict:
    """The software and machine of this process; imports only the run's own framework."""
    info = {
        "crackhpc": __version__,
        "python": platform.python_version(),
        "submitit": _version("submitit"),
        "numpy": _version("numpy"),
        "host": procs.HOST,
        "platform": platform.platform(),
    }
    if framework == "torch":
        import torch
        import torchvision

        info.update(
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            cuda=torch.version.cuda,
            framework_version=f"torch {torch.__version__}",
        )
    else:
        import tensorflow as tf

        keras = _version("keras") or _version("tf-keras")
        info.update(
            tensorflow=tf.__version__,
            keras=keras,
            cuda=tf.sysconfig.get_build_info().get("cuda_version"),
            framework_version=f"tensorflow {tf.__version__}",
        )
    if backend == "horovod":
        info["horovod"] = _version("horovod")
    for var, key in (("SLURM_CLUSTER_NAME", "slurm_cluster"), ("SLURM_JOB_PARTITION", "slurm_partition")):
        if os.environ.get(var):
            info[key] = os.environ[var]
    return {**info, **gpus()}


def record_runtime(run_dir: Path, framework: str, backend: str) -> None:
    """Add this process's part to the run's provenance (the submission's part is there already)."""
    recorded = rundir.read_result(run_dir).get("provenance") or {}
    try:
        info = runtime(framework, backend)
    except Exception as exc:  # a record must never stop a run; the framework's own error comes from training
        info = {"runtime_error": f"{type(exc).__name__}: {exc}"}
    rundir.update_result(run_dir, provenance={**recorded, **info})


def columns(result: dict) -> dict:
    """A run's provenance as summary.csv columns."""
    prov = result.get("provenance") or {}
    out = {k: prov.get(k) for k in COLUMNS}
    if out["git_commit"]:
        out["git_commit"] = out["git_commit"][:12]
    return out


def report_rows(run_dirs: Iterable[Path]) -> tuple[list[str], list[list]]:
    """The report's provenance table: one row per distinct setting that produced runs, with their count."""
    header = ["runs", "git commit", "crackhpc", "python", "framework", "submitit", "GPU", "CUDA", "hosts"]
    groups: dict[tuple, list[str]] = {}
    for run_dir in run_dirs:
        try:
            prov = rundir.read_result(run_dir).get("provenance") or {}
        except CrackhpcError:  # a damaged result.json: the runs table says so
            continue
        if "python" not in prov:
            continue  # the worker has not started yet
        commit = prov.get("git_commit")
        commit = "-" if not commit else commit[:12] + (" (dirty)" if prov.get("git_dirty") else "")
        framework = " / ".join(
            f"{k} {prov[k]}" for k in ("torch", "torchvision", "tensorflow", "keras", "horovod") if prov.get(k)
        )
        gpu = f"{prov['gpu_count']} × {prov['gpu']}" if prov.get("gpu") else "none"
        key = (
            commit,
            prov.get("crackhpc") or "-",
            prov.get("python") or "-",
            framework or "-",
            prov.get("submitit") or "-",
            gpu,
            prov.get("cuda") or "-",
        )
        groups.setdefault(key, []).append(prov.get("host") or "?")
    rows = []
    for key, hosts in groups.items():
        names = sorted(set(hosts))
        rows.append(
            [len(hosts), *key, ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")]
        )
    return header, rows
