"""The benchmark's output: latest.csv (one row per model) and latest.md, whose tables are also printed."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crackhpc import atomic

# The acceptance: crackhpc at least this many times faster over the sweep, and every
# run's test accuracy within this many percentage points of the naive loop's.
MIN_SPEEDUP = 12.0
MAX_ACC_POINTS = 0.5
# With pretrained weights one backbone serves every run of the sweep (the study's setting), so
# crackhpc makes one backbone pass where the naive loop makes one per run and epoch.
MIN_SPEEDUP_SHARED = 20.0

SUMMARY = (
    "model",
    "weights",
    "n_images",
    "image_px",
    "input_px",
    "runs",
    "epochs",
    "naive_precision",
    "crackhpc_precision",
    "naive_s",
    "naive_epoch_s",
    "crackhpc_s",
    "speedup",
    "crackhpc_feature_s",
    "limit",
    "naive_cpu_s",
    "crackhpc_cpu_s",
    "cpu_speedup",
    "naive_img_s",
    "crackhpc_img_s",
    "naive_backbone_images",
    "crackhpc_backbone_images",
    "crackhpc_feature_passes",
    "baseline_rss_mb",
    "naive_peak_rss_mb",
    "crackhpc_peak_rss_mb",
    "n_test",
    "max_acc_diff_points",
    "max_acc_diff_images",
    "max_disagree_images",
    "one_epoch_naive_s",
    "one_epoch_crackhpc_s",
    "one_epoch_speedup",
    "decode_pil_img_s",
    "decode_cache_img_s",
    "runs_lr_seed",
    "naive_test_acc",
    "crackhpc_test_acc",
    "threads",
    "loadavg_start",
    "loadavg_end",
    "versions",
    "date",
)
RUNS = (
    "model",
    "lr",
    "seed",
    "naive_test_acc",
    "crackhpc_test_acc",
    "diff_points",
    "diff_images",
    "disagree_images",
    "naive_run_s",
    "crackhpc_run_s",
    "feature_cache",
)


def cell(value: Any) -> str:
    """Three significant figures, whole numbers from 100 up: enough to read a benchmark by."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _csv(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def target(row: dict) -> float:
    return MIN_SPEEDUP if row["weights"] == "random" else MIN_SPEEDUP_SHARED


def verdicts(row: dict) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return (
        f"- **{row['model']}** ({row['n_images']} images, {row['runs']} runs x {row['epochs']} epochs, "
        f"{'random weights' if row['weights'] == 'random' else 'ImageNet weights, one backbone for all runs'}): "
        f"speedup {row['speedup']:.1f}x (>= {target(row):g}x: {met(row['speedup'] >= target(row))}); "
        f"largest test-accuracy difference {row['max_acc_diff_points']:.2f} points = "
        f"{row['max_acc_diff_images']} of {row['n_test']} test images "
        f"(<= {MAX_ACC_POINTS:g} points: {met(row['max_acc_diff_points'] <= MAX_ACC_POINTS)}), "
        f"predictions differ on at most {row['max_disagree_images']} test images; "
        f"1-epoch run {row['one_epoch_speedup']:.1f}x (no slower than naive: {met(row['one_epoch_speedup'] >= 1)})"
        + (limit_note(row) if row["limit"] != "" else "")
    )


def limit_note(row: dict) -> str:
    """How far the speedup is from the most it could be, what sets that limit, and what takes the rest of the time."""
    rest = row["crackhpc_s"] - row["crackhpc_feature_s"]
    fewer = row["naive_backbone_images"] / row["crackhpc_backbone_images"]
    cheaper = row["limit"] / fewer  # the naive loop's time per backbone image over the feature pass's
    return (
        f"; limit {row['limit']:.1f}x (the naive sweep's time over crackhpc's {row['crackhpc_feature_passes']} "
        f"backbone pass(es) alone, {row['crackhpc_feature_s']:.0f} s): {row['speedup'] / row['limit']:.0%} of it. "
        f"The limit is {fewer:.1f}x fewer images through the backbone ({row['crackhpc_backbone_images']} against "
        f"{row['naive_backbone_images']}) times {cheaper:.2f}x less time per image (a feature pass has no autograd, "
        f"runs channels_last and reads images decoded once; a naive step decodes each image every epoch); "
        f"the other {rest:.0f} s of crackhpc's {row['crackhpc_s']:.0f} s go to decoding the images, building "
        f"and loading the network in each of the {row['runs']} runs, training the heads and writing the run folders"
    )


def report(rows: list[dict], runs: list[dict], argv: list[str]) -> str:
    speed = (
        "model",
        "n_images",
        "runs",
        "epochs",
        "naive_precision",
        "crackhpc_precision",
        "naive_s",
        "naive_epoch_s",
        "crackhpc_s",
        "speedup",
        "limit",
        "cpu_speedup",
        "naive_img_s",
        "crackhpc_img_s",
        "naive_backbone_images",
        "crackhpc_backbone_images",
        "one_epoch_naive_s",
        "one_epoch_crackhpc_s",
    )
    other = (
        "model",
        "baseline_rss_mb",
        "naive_peak_rss_mb",
        "crackhpc_peak_rss_mb",
        "n_test",
        "max_acc_diff_points",
        "max_acc_diff_images",
        "max_disagree_images",
        "decode_pil_img_s",
        "decode_cache_img_s",
    )
    first = rows[0]
    load = ", ".join(f"{r['loadavg_start']:.1f}->{r['loadavg_end']:.1f}" for r in rows)
    return (
        "\n\n".join(
            [
                "# Frozen-backbone sweep: naive loop vs crackhpc",
                f"`python -m benchmarks.frozen_backbone {' '.join(argv)}` on {os.cpu_count()} CPUs, "
                f"{first['threads']} threads, {', '.join(sorted({r['versions'] for r in rows}))}, "
                f"{', '.join(sorted({str(r['date']) for r in rows}))}; "
                f"1-minute load average {load} (above {os.cpu_count()}: other processes competed for the CPUs)."
                + (
                    " With --merge: only the models named were run; the other rows are kept from the earlier run "
                    "(its command and date: the `date` column of latest.csv and git history)."
                    if "--merge" in argv
                    else ""
                ),
                "Weights: " + "; ".join(f"{r['model']} {r['weights']}" for r in rows) + ".",
                markdown(speed, [[r[k] for k in speed] for r in rows]),
                markdown(other, [[r[k] for k in other] for r in rows]),
                "\n".join(verdicts(r) for r in rows),
                "## Runs",
                markdown(RUNS, [[r[k] for k in RUNS] for r in runs]),
            ]
        )
        + "\n"
    )


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read(out: Path, exclude: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
    """The rows of an earlier `write` (and the runs of its markdown), less the models in `exclude`;
    columns added since that run read as "" (not measured), `weights` as "random" (all there was)."""
    if not out.exists():
        return [], []
    with open(out, newline="", encoding="utf-8") as fh:
        rows = [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(fh) if r["model"] not in exclude]
    rows = [{**{k: "" for k in SUMMARY}, **r} for r in rows]
    for r in rows:
        r["weights"] = r["weights"] or "random"
    runs = []
    md = out.with_suffix(".md")
    if md.exists():
        table = md.read_text(encoding="utf-8").partition("## Runs")[2]
        for line in [line for line in table.splitlines() if line.startswith("|")][2:]:  # below header and rule
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == len(RUNS) and cells[0] not in exclude:
                runs.append({k: _value(c) for k, c in zip(RUNS, cells)})
    return rows, runs


def write(out: Path, rows: list[dict], runs: list[dict], argv: list[str]) -> str:
    """The CSV at `out`, the markdown next to it; returns the markdown."""
    atomic.write_csv(out, SUMMARY, [[_csv(r[k]) for k in SUMMARY] for r in rows])
    text = report(rows, runs, argv)
    atomic.write_text(out.with_suffix(".md"), text)
    return text
