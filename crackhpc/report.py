"""`crackhpc report results/<sweep>`: run folders → summary.csv (a row per run) and
comparison.csv (per framework and model, across seeds). Pending and failed runs stay in as rows."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from . import atomic, rundir
from .errors import CrackhpcError

HPARAMS = ("pretrained", "freeze_backbone", "epochs", "batch_size", "optimizer", "lr", "input_size", "seed", "backend")
SUMMARY_COLUMNS = ("run_id", "framework", "model", *HPARAMS, "status", "epochs_done", "best_val_acc", "test_loss",
                   "test_acc", "wall_time_s", "images_per_s", "skipped_images", "requeues", "error")
METRICS = ("test_acc", "test_loss", "best_val_acc", "wall_time_s", "images_per_s")


def _run_dirs(sweep_dir: Path) -> list[Path]:
    named = set(atomic.read_json(sweep_dir / "sweep.json").get("runs", {})) if (sweep_dir / "sweep.json").is_file() else set()
    found = {p.name for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file()}
    return [sweep_dir / name for name in sorted(named | found)]


def summary(sweep_dir: str | Path) -> pd.DataFrame:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CrackhpcError(f"{sweep_dir}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)")
    rows = []
    for run_dir in _run_dirs(sweep_dir):
        row = {"run_id": run_dir.name}
        config = run_dir / rundir.CONFIG
        if config.is_file():
            train = yaml.safe_load(config.read_text())["train"]
            row.update(framework=train["framework"], model=train["model"], **{k: train.get(k) for k in HPARAMS})
        result = rundir.read_result(run_dir)
        row.update({k: result.get(k) for k in SUMMARY_COLUMNS if k in result and k != "run_id"})
        row["status"] = result.get("status", "pending")
        rows.append(row)
    if not rows:
        raise CrackhpcError(f"{sweep_dir}: no runs in it (no sweep.json, no run folders)")
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of each metric per framework, model and the hyper-parameters that vary, over seeds."""
    varying = [c for c in HPARAMS if c != "seed" and df[c].nunique(dropna=True) > 1]
    keys = ["framework", "model", *varying]
    done = df[df["status"] == "completed"].copy()
    for col in METRICS:
        done[col] = pd.to_numeric(done[col], errors="coerce")
    counts = df.groupby(keys, dropna=False).agg(runs=("run_id", "count"))
    counts["completed"] = df.assign(ok=df["status"].eq("completed")).groupby(keys, dropna=False)["ok"].sum()
    stats = done.groupby(keys, dropna=False)[list(METRICS)].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    return counts.join(stats).reset_index()


def write_reports(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    sweep_dir = Path(sweep_dir)
    df = summary(sweep_dir)
    comp = comparison(df)
    atomic.write_text(sweep_dir / "summary.csv", df.to_csv(index=False))
    atomic.write_text(sweep_dir / "comparison.csv", comp.to_csv(index=False))
    return df, comp


def format_table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    view = df if columns is None else df[[c for c in columns if c in df.columns]]
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
