"""The report's tables: summary.csv (a row per run, pending and failed included) and comparison.csv
(mean, std and n over seeds per framework, model and the settings that vary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .. import atomic, provenance, rundir, scores, slurm
from ..data.layout import CLASSES, is_crack
from ..errors import CrackhpcError
from ..record import SweepRecord, submitted_since
from ..states import RunState
from ..usage import Usage
from .evidence import TestSplits, confusion
from .reading import HPARAMS, READ_CACHE, ReadCache, read_or_note, read_settings, runs_and_record

# From Slurm's accounting of each run's latest job (crackhpc.usage), where Slurm ran it.
RESOURCE_COLUMNS = ("slurm_elapsed_s", "mem_peak_gb", "mem_requested_gb", "cpu_efficiency", "resource_hints")
SUMMARY_COLUMNS = (
    "run_id",
    "framework",
    "model",
    *HPARAMS,
    "status",
    "epochs_done",
    "best_val_acc",
    "test_loss",
    "test_acc",
    "n_test",
    "tp",
    "fp",
    "fn",
    "tn",
    "wall_time_s",
    "images_per_s",
    "device",
    "world_size",
    "compute_hours",
    "compute_unit",
    "skipped_images",
    "requeues",
    "error",
    *provenance.COLUMNS,
    *RESOURCE_COLUMNS,
)
METRICS = ("test_acc", "test_loss", "best_val_acc", "wall_time_s", "images_per_s", "compute_hours")
NUMBERS = (
    "epochs_done",
    "best_val_acc",
    "test_loss",
    "test_acc",
    "n_test",
    "wall_time_s",
    "images_per_s",
    "world_size",
    "skipped_images",
    "requeues",
)


# How to redo a run whose result.json cannot be read.
RESULT_FIX = "delete it and run `crackhpc sweep <sweep file> --retry-failed`, which redoes the run"


def read_run_result(path: Path) -> dict:
    """A run's result.json, its numbers checked: a table of 1,000 runs must not stop at a stray string."""
    result = rundir.read_result(path.parent)
    for key in NUMBERS:
        if not isinstance(result.get(key), (int, float, type(None))) or isinstance(result.get(key), bool):
            raise ValueError(f"{key}: {result[key]!r} is not a number")
    if not isinstance(result.get("status", ""), str):
        raise ValueError(f"status: {result['status']!r} is not a run state")
    return result


def _slurm_usage(record: SweepRecord, notes: list[str]) -> dict[str, Usage]:
    """What each run's latest Slurm job used, from one sacct call; nothing without Slurm."""
    slurm_jobs = {run_id: job for run_id, job in record.runs.items() if job.executor == "slurm" and job.job_id}
    jobs = {run_id: job.job_id for run_id, job in slurm_jobs.items()}
    try:
        accounting = slurm.sacct(list(jobs.values()), since=submitted_since(slurm_jobs.values())) if jobs else {}
    except slurm.SlurmUnavailable as exc:
        notes.append(f"resources and device-hours from the runs' own clocks: {exc}")
        return {}
    return {run_id: used for run_id, job in jobs.items() if job in accounting and (used := accounting[job].usage)}


def _compute_hours(resources: dict, result: dict, usage: Usage | None) -> tuple[float | None, str | None]:
    """Device-hours a run held: time × tasks × what each task had. The time is Slurm's elapsed time of
    the job where Slurm ran it (what the allocation cost), else the worker's wall time. crackhpc runs
    one task per GPU, so a GPU run counts one GPU per task; a CPU run counts its cpus_per_task cores.
    The device comes from result.json ("cuda:0" from torch, "gpu:0" from keras, else "cpu"), not the
    request: a GPU request run by the local executor may get none."""
    wall = usage.elapsed_s if usage and usage.elapsed_s else result.get("wall_time_s")
    if wall is None:
        return None, None
    tasks = result.get("world_size") or resources["world_size"]
    device = result.get("device")
    on_gpu = device != "cpu" if device else resources["gpus_per_node"] > 0
    per_task = 1 if on_gpu else resources["cpus_per_task"]
    return wall * tasks * per_task / 3600, "GPU" if on_gpu else "CPU"


def _summary_row(run_dir: Path, notes: list[str], cache: ReadCache, splits: TestSplits, usage: Usage | None) -> dict:
    row: dict[str, Any] = {"run_id": run_dir.name}
    result = read_or_note(
        run_dir / rundir.RESULT,
        read_run_result,
        notes,
        RESULT_FIX,
    )
    if result is None:
        row.update(status=RunState.UNREADABLE.value, error=notes[-1])
        result = {}
    else:
        row.update({k: result.get(k) for k in SUMMARY_COLUMNS if k in result and k != "run_id"})
        row["status"] = result.get("status", RunState.PENDING.value)
        row.update(provenance.columns(result))
    config = None
    classes: list[str] = list(CLASSES)
    has_config = (run_dir / rundir.CONFIG).is_file()
    if has_config:
        config = read_or_note(run_dir / rundir.CONFIG, lambda p: cache.get(p, read_settings), notes)
        if config is not None:
            row.update(config["train"])
            row["compute_hours"], row["compute_unit"] = _compute_hours(config["resources"], result, usage)
            classes = config.get("classes") or classes
    if usage is not None:
        eff = usage.cpu_efficiency
        row.update(
            slurm_elapsed_s=usage.elapsed_s,
            mem_peak_gb=usage.peak_mem_mb and usage.peak_mem_mb / 1024,
            mem_requested_gb=usage.req_mem_mb and usage.req_mem_mb / 1024,
            cpu_efficiency=None if eff is None else round(eff, 3),
            resource_hints="; ".join(usage.hints()),
        )
    # A damaged config.yaml (noted above) names neither the classes nor the manifest: no confusion to count
    if row["status"] == RunState.COMPLETED.value and (config is not None or not has_config):
        manifest = rundir.manifest_path(run_dir, config.get("manifest")) if config else None
        cm = read_or_note(
            run_dir / rundir.MISCLASSIFIED, lambda _: confusion(run_dir, None, splits, classes, manifest), notes
        )
        if cm is not None and is_crack(classes):
            row.update(tp=cm.tp, fp=cm.fp, fn=cm.fn, tn=cm.tn)
        elif cm is not None:
            row.update(class_columns(cm.matrix, classes))
    return row


def _is_class_column(key: str) -> bool:
    return key in ("macro_f1", "classes", "confusion") or key.startswith(("precision_", "recall_", "f1_"))


def class_columns(matrix: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """summary.csv's columns of a run of N classes (not the crack dataset's two): macro-F1, each
    class's precision, recall and F1, the classes and the confusion matrix (rows the true class)."""
    scored = scores.per_class(matrix, classes)
    out: dict[str, Any] = {"macro_f1": scores.macro_f1(scored)}
    for name, s in scored.items():
        out.update({f"{key}_{name}": s[key] for key in ("precision", "recall", "f1")})
    out.update(classes=" ".join(classes), confusion=json.dumps(matrix, separators=(",", ":")))
    return out


def summary(sweep_dir: str | Path, everything: bool = False, notes: list[str] | None = None) -> pd.DataFrame:
    """One row per run of the current sweep file (`everything`: also runs of its earlier versions).
    A damaged file is a line in `notes`; its run stays a row (status "unreadable" when it is the
    result.json)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CrackhpcError(f"{sweep_dir}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)")
    notes = [] if notes is None else notes
    cache = ReadCache(sweep_dir / READ_CACHE)
    splits = TestSplits(cache)
    dirs, record = runs_and_record(sweep_dir, everything, notes)
    usage = _slurm_usage(record, notes)
    rows = [_summary_row(run_dir, notes, cache, splits, usage.get(run_dir.name)) for run_dir in dirs]
    if not rows:
        raise CrackhpcError(f"{sweep_dir}: no runs in it (no sweep.json, no run folders)")
    cache.save()
    # A sweep of N classes adds its class columns after tn (which its runs leave blank).
    extra = list(dict.fromkeys(k for row in rows for k in row if _is_class_column(k)))
    at = SUMMARY_COLUMNS.index("tn") + 1
    df = pd.DataFrame(rows).reindex(columns=[*SUMMARY_COLUMNS[:at], *extra, *SUMMARY_COLUMNS[at:]])
    return df.astype({k: "Int64" for k in ("tp", "fp", "fn", "tn")})  # counts: 3, not 3.0, beside the blanks


def varying_keys(df: pd.DataFrame) -> list[str]:
    """The settings, seed aside, that differ between runs: what tells comparison groups apart."""
    return [c for c in HPARAMS if c != "seed" and df[c].nunique(dropna=True) > 1]


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of each metric per framework, model and the hyper-parameters that vary, over seeds."""
    keys = ["framework", "model", *varying_keys(df)]
    metrics = [*METRICS, *(["macro_f1"] if "macro_f1" in df.columns else [])]
    done = df[df["status"] == RunState.COMPLETED.value].copy()
    for col in metrics:
        done[col] = pd.to_numeric(done[col], errors="coerce")
    counts = df.groupby(keys, dropna=False).agg(runs=("run_id", "count"))
    counts["completed"] = (
        df.assign(ok=df["status"].eq(RunState.COMPLETED.value)).groupby(keys, dropna=False)["ok"].sum()
    )
    stats = done.groupby(keys, dropna=False)[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    units = done.groupby(keys, dropna=False)["compute_unit"].agg(lambda s: "/".join(sorted(set(s.dropna()))))
    return counts.join(stats).join(units).reset_index()


def write_reports(
    sweep_dir: str | Path, everything: bool = False, notes: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    sweep_dir = Path(sweep_dir)
    atomic.remove_stale(sweep_dir)  # a killed report's half tables (or a killed submitter's sweep.json)
    df = summary(sweep_dir, everything, notes)
    comp = comparison(df)
    atomic.write_text(sweep_dir / "summary.csv", df.to_csv(index=False))
    atomic.write_text(sweep_dir / "comparison.csv", comp.to_csv(index=False))
    return df, comp


def format_table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    view = df if columns is None else df[[c for c in columns if c in df.columns]]
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def sort_runs(df: pd.DataFrame, column: str | None, descending: bool = False) -> pd.DataFrame:
    """The runs ordered by `column`; missing values (pending runs) go last either way."""
    if not column:
        return df
    if column not in df.columns:
        raise CrackhpcError(f"--sort {column}: unknown column (columns: {', '.join(df.columns)})")
    return df.sort_values(column, ascending=not descending, na_position="last", kind="stable")


# -- per-run evidence: curves, confusion matrix, misclassified images --------------------------------


def to_json(df: pd.DataFrame, comp: pd.DataFrame) -> str:
    return json.dumps(
        {"summary": json.loads(df.to_json(orient="records")), "comparison": json.loads(comp.to_json(orient="records"))},
        indent=2,
    )
