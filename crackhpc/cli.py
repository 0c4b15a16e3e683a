"""The `crackhpc` command. Each subcommand is a thin shell over one module."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import CrackhpcError

SUMMARY_VIEW = [
    "run_id",
    "status",
    "epochs_done",
    "best_val_acc",
    "test_loss",
    "test_acc",
    "wall_time_s",
    "images_per_s",
]


def load_with_profile(args):
    """The sweep file with --set edits and the cluster profile (--cluster, else Slurm's cluster name)."""
    import os

    from .config import load_sweep
    from .profiles import apply_profile, select_profile

    profile = select_profile(args.cluster)
    if profile is not None:
        print(profile.describe())
        if profile.cache:  # this process's weights checks look where the jobs will
            os.environ.setdefault("CRACKHPC_CACHE", os.path.expandvars(profile.cache))
    limit = {"max_runs": args.max_runs} if hasattr(args, "max_runs") else {}
    return load_sweep(args.sweep, overrides=args.overrides, edit=lambda raw: apply_profile(raw, profile), **limit)


def cmd_sweep(args) -> int:
    """Exit status: 0 when every run this call waited for completed (or, not waiting, every job was
    submitted), 1 when one failed, died or was cancelled, so that a script or CI job can tell."""
    from .launcher import Submission, submit
    from .record import SweepFolder
    from .report.tables import format_table, write_reports
    from .states import SUCCEEDED
    from .then_report import ThenReport

    if args.mlflow is not None and not args.then_report:
        raise CrackhpcError("--mlflow: give it with --then-report (or import later: crackhpc report DIR --mlflow)")
    then = ThenReport(args.mlflow) if args.then_report else None
    sweep = load_with_profile(args)
    how = Submission(args.executor, args.dry_run, args.retry_failed, wait=True if args.wait else None, then_report=then)
    if sweep.search is None and args.controller != "here":
        raise CrackhpcError(f"--controller {args.controller}: for a sweep with a search: block; a grid needs none")
    if args.controller == "slurm" and args.executor not in ("auto", "slurm"):
        raise CrackhpcError(
            f"--controller slurm: its trials go out as Slurm jobs; leave out --executor {args.executor}"
        )
    if sweep.search is not None and args.controller == "slurm" and not args.dry_run:
        from .search import submit_controller

        submit_controller(sweep, Path(args.results), _controller_flags(args))
        return 0
    if sweep.search is not None:
        from .search import submit as search

        states = search(sweep, Path(args.results), how)
    else:
        states = submit(sweep, Path(args.results), how)
    sweep_dir = Path(args.results) / sweep.name
    reported = 0
    if then and not args.dry_run and then.job_id is None:  # the jobs have ended (or none went out): report now
        reported = cmd_report(build_parser().parse_args(then.arguments(sweep_dir)))
    elif not args.dry_run and not states and _left_to_slurm(sweep_dir):
        # every run just submitted is queued: a table would list them pending (10,000 rows of it)
        print(f"`crackhpc status {sweep_dir}` follows the jobs, `crackhpc report {sweep_dir}` tabulates their runs")
    elif not args.dry_run and SweepFolder(sweep_dir).record_path.is_file():
        df, comp = write_reports(sweep_dir)
        print(format_table(df, SUMMARY_VIEW))
        print(f"\nwritten: {sweep_dir / 'summary.csv'}, {sweep_dir / 'comparison.csv'}")
    unfinished = {run_id: state for run_id, state in states.items() if state not in SUCCEEDED}
    if unfinished:
        print(
            f"{len(unfinished)} of {len(states)} runs did not complete: "
            + ", ".join(f"{r} {s}" for r, s in sorted(unfinished.items())),
            file=sys.stderr,
        )
    return 1 if unfinished or reported else 0


def _left_to_slurm(sweep_dir: Path) -> bool:
    """Whether the sweep's latest submission left its jobs to Slurm (this command did not wait)."""
    from .record import SweepFolder

    folder = SweepFolder(sweep_dir)
    try:
        return folder.record_path.is_file() and folder.load().executor == "slurm"
    except CrackhpcError:
        return False


def _controller_flags(args) -> list[str]:
    """What the controller job's `crackhpc sweep` needs of this command line (the sweep file, the
    results folder and the executor it gets anyway)."""
    flags = [f"--set={edit}" for edit in args.overrides]
    flags += ["--cluster", args.cluster] if args.cluster else []
    flags += ["--retry-failed"] if args.retry_failed else []
    if args.then_report:
        from .then_report import absolute

        flags.append("--then-report")
        flags += [] if args.mlflow is None else ["--mlflow", *([absolute(args.mlflow)] if args.mlflow else [])]
    return flags


def cmd_report(args) -> int:
    from .report.build import REPORT_HTML, REPORT_MD, parse_figures, write_document
    from .report.reading import run_dirs
    from .report.tables import format_table, sort_runs, to_json, write_reports
    from .states import RunState

    if args.misclassified < 0:
        raise CrackhpcError(f"--misclassified {args.misclassified}: give 0 (none) or more images per run")
    problems: list[str] = []  # one line per damaged file; every other run is still reported
    df, comp = write_reports(args.sweep_dir, everything=args.all, notes=problems)
    df = sort_runs(df, args.sort, args.desc)
    markdown = write_document(
        args.sweep_dir,
        df,
        comp,
        examples=args.misclassified,
        figures=None if args.no_figures else parse_figures(args.figures),
        notes=problems,
    )
    if args.format == "text":
        print(format_table(df, SUMMARY_VIEW) + "\n\n" + format_table(comp))
    else:
        printers = {"csv": lambda: df.to_csv(index=False), "md": lambda: markdown, "json": lambda: to_json(df, comp)}
        sys.stdout.write(printers[args.format]().rstrip("\n") + "\n")
    # Notes go to stderr unless the table is the text one, so csv/md/json output can be piped as it is.
    notes = sys.stdout if args.format == "text" else sys.stderr
    sweep_dir = Path(args.sweep_dir)
    print(
        "\nwritten: "
        + ", ".join(str(sweep_dir / f) for f in ("summary.csv", "comparison.csv", REPORT_MD, REPORT_HTML))
        + ("" if args.no_figures else f" (figures in {sweep_dir / 'report'})"),
        file=notes,
    )
    for _, row in df[df["status"] == RunState.FAILED.value].iterrows():
        print(f"failed: {row['run_id']}: {row['error']}", file=notes)
    older = len(run_dirs(sweep_dir)) - len(df)
    if older > 0:
        print(
            f"not shown: {older} run{'s' * (older > 1)} of earlier versions of the sweep file (--all includes them)",
            file=notes,
        )
    try:
        if args.mlflow is not None:
            from .mlflow_import import import_sweep

            imported = import_sweep(sweep_dir, args.mlflow or None, df, problems)
            print(imported.line(), file=notes)
            for line in imported.notes:
                print(f"note: {line}", file=notes)
    finally:  # a damaged run folder is not imported: the same line as the report's says why
        for line in dict.fromkeys(problems):
            print(f"problem: {line}", file=sys.stderr)
    return 1 if problems else 0


def cmd_prefetch(args) -> int:
    import os

    from .prefetch import cache_note, prefetch, table, wanted
    from .profiles import select_profile

    if args.cache is None and not os.environ.get("CRACKHPC_CACHE"):
        profile = select_profile(args.cluster)
        if profile is not None and profile.cache:  # where that cluster's jobs look
            args.cache = os.path.expandvars(profile.cache)
            print(f"{profile.describe()}: cache {args.cache}")
    outcomes = prefetch(wanted(args.sweeps, args.models), args.cache, args.base_url, args.from_dir)
    print(table(outcomes))
    if note := cache_note(args.cache):
        print(note)
    for outcome in outcomes:
        if outcome.error:
            print(f"error: {outcome.error}", file=sys.stderr)
    return 1 if any(o.error for o in outcomes) else 0


def cmd_models(args) -> int:
    from .libraries import weights_status
    from .models import registered

    rows = [(fw, name) for fw in args.framework or ("torch", "keras") for name in registered(fw, args.pattern)]
    if not rows:
        print(f"no model name matches {args.pattern!r} (a glob: *convnext*, timm:vit_*, Efficient*)", file=sys.stderr)
        return 2
    width = max(len(name) for _, name in rows)
    print(f"framework  {'model'.ljust(width)}  weights")
    for framework, name in rows:
        print(f"{framework.ljust(9)}  {name.ljust(width)}  {weights_status(framework, name)}")
    print(
        "weights: cached = in the offline cache here; missing = published, fetch it with "
        "`crackhpc prefetch --models FRAMEWORK:MODEL`; none = no published weights (pretrained: false only). "
        "Your own networks: python:<module>:<function>."
    )
    return 0


def _number(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "-" if value is None or value != value else f"{value:.4g}"


def _text_table(rows: list[dict], numeric: set[str]) -> str:
    """pandas' `to_string(index=False)` of these rows, in plain Python (10,000 rows of `status` in a
    tenth of the time): right-aligned columns one space apart, numbers as 4 significant digits (or
    -) under a header with a space before it."""
    columns = list(rows[0])
    cells = [[_number(row[c]) if c in numeric else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c) + (c in numeric), *(len(r[k]) for r in cells)) for k, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_status(statuses, resources: bool = False) -> str:
    """The table `crackhpc status` prints, with a count per state and the epochs done under it."""
    rows = []
    for s in statuses:
        row = {
            "run_id": s.run_id,
            "state": s.state.value,
            "job": s.job_id or "-",
            "elapsed": s.elapsed or "-",
            "node": s.node or "-",
            "epoch": s.epoch or "-",
            "val_acc": s.val_acc,
            "test_acc": s.test_acc,
            "requeues": s.requeues,
        }
        if resources:
            row.update(
                s.usage.columns()
                if s.usage
                else dict.fromkeys(("mem peak/req", "cpu eff", "time used/limit", "gpus"), "-")
            )
        rows.append({**row, "note": _shorten(s.note) or "-"})
    return _text_table(rows, {"val_acc", "test_acc", "requeues"}) + "\n\n" + summary_line(statuses)


def summary_line(statuses) -> str:
    """`12 runs: 3 completed, 9 running; epochs 41/72 [#####-----] 57%`"""
    from .states import RunState

    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.value] = counts.get(s.state.value, 0) + 1
    done = sum(min(s.epochs_done or 0, s.epochs or 0) for s in statuses)
    # A pruned run's plan ended where its search stopped it.
    planned = sum((s.epochs_done or 0) if s.state is RunState.PRUNED else (s.epochs or 0) for s in statuses)
    share = done / planned if planned else 0.0
    bar = "#" * round(20 * share) + "-" * (20 - round(20 * share))
    return (
        f"{len(statuses)} runs: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + f"; epochs {done}/{planned} [{bar}] {share:.0%}"
    )


def _shorten(text: str, width: int = 60) -> str:
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def cmd_status(args) -> int:
    """Once, or with --watch until every run has ended: exit 0 if all completed, else 1."""
    import datetime as dt
    import json
    import time

    from .states import SUCCEEDED
    from .status import collect, report_job

    redraw = args.watch is not None and sys.stdout.isatty()
    while True:
        statuses, problems = collect(args.sweep_dir)
        report = report_job(args.sweep_dir)
        controller = report_job(args.sweep_dir, what="controller job")
        ended = not any(s.live for s in statuses) and not (controller and controller.active)
        if args.json:
            print(
                json.dumps(
                    {
                        "time": dt.datetime.now().isoformat(timespec="seconds"),
                        "summary": summary_line(statuses),
                        "runs": [_status_dict(s) for s in statuses],
                        "report_job": vars(report) if report else None,
                        "controller_job": vars(controller) if controller else None,
                    }
                ),
                flush=True,
            )
        elif args.watch is None or redraw or ended:
            table = (format_status(statuses, args.resources) if statuses else "no runs yet") + "".join(
                f"\n{job.line()}" for job in (controller, report) if job
            )
            print(("\x1b[H\x1b[J" if redraw else "") + table, flush=True)
        else:  # piped: one plain line per refresh
            print(f"{dt.datetime.now():%H:%M:%S} {summary_line(statuses)}", flush=True)
        if args.watch is None or ended:
            break
        time.sleep(args.watch)
    for line in problems + [line for s in statuses for line in s.damaged]:
        print(f"warning: {line}", file=sys.stderr)
    if args.watch is None:
        return 0
    return 0 if all(s.state in SUCCEEDED for s in statuses) else 1


def _status_dict(s) -> dict:
    out = {k: v for k, v in vars(s).items() if k not in ("usage", "damaged")}
    out.update(state=s.state.value, epoch=s.epoch, damaged=list(s.damaged))
    if s.usage:
        out["usage"] = {**vars(s.usage), "cpu_efficiency": s.usage.cpu_efficiency, "hints": s.usage.hints()}
    return out


def _resubmit(sweep_dir) -> str:
    """How to submit the folder's cancelled runs again: a sweep's or a prediction's command."""
    from .record import SweepFolder, SweepRecord

    try:
        return SweepFolder(sweep_dir).load().resubmit
    except CrackhpcError:  # a damaged record: cancel has said so already
        return SweepRecord().resubmit


def cmd_cancel(args) -> int:
    from .engine import cancel

    cancelled = cancel(args.sweep_dir, args.run_ids)
    print(f"{len(cancelled)} run(s) cancelled" + (f"; {_resubmit(args.sweep_dir)} resubmits them" if cancelled else ""))
    return 0


def cmd_clean(args) -> int:
    from .clean import WHAT, clean

    clean(args.sweep_dir, [w for w in WHAT if getattr(args, w)], args.dry_run)
    return 0


def cmd_predict(args) -> int:
    from .predict.model import best_run
    from .predict.shards import Prediction, Settings, predict
    from .profiles import select_profile

    run_dir = Path(args.model)
    if args.metric and not args.best:
        raise CrackhpcError(
            f"--metric {args.metric}: only with --best (which picks a sweep's best run by it); add --best"
        )
    if args.best:
        run_dir, note = best_run(run_dir, args.metric or "best_val_acc")
        print(note)
    settings = Settings(
        tile=args.tile,
        stride=args.stride,
        threshold=args.threshold,
        max_megapixels=args.max_megapixels,
        batch=args.batch,
    )
    profile = select_profile(args.cluster) if args.cluster else None
    if profile is not None:
        print(profile.describe())
    ask = Prediction(
        tuple(args.images),
        Path(args.out),
        args.executor,
        settings,
        shards=args.shards,
        per_task=args.per_task,
        overrides=tuple(args.overrides),
        wait=True if args.wait else None,
        profile=profile,
    )
    return predict(run_dir, ask)


def cmd_export(args) -> int:
    from .export import MODEL_JSON, export

    out = export(args.run, args.format, args.out)
    print(f"written: {out / MODEL_JSON} and the model file beside it")
    return 0


def cmd_logs(args) -> int:
    from .logs import follow, show

    source = "err" if args.err else "worker" if args.worker else "out"
    if args.follow and args.attempt is not None:
        raise CrackhpcError("--follow shows the latest attempt as it grows; leave out --attempt")
    try:
        if args.follow:
            follow(args.sweep_dir, args.run_id, source)
        else:
            show(args.sweep_dir, args.run_id, source, args.attempt)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_sbatch(args) -> int:
    from .sbatch import write_scripts

    write_scripts(
        load_with_profile(args),
        Path(args.results),
        Path(args.out) if args.out else None,
        submit=args.submit,
        retry_failed=args.retry_failed,
    )
    return 0


def cmd_data_synth(args) -> int:
    from .data.synth import synthesize, synthesize_classes

    try:
        if args.classes is not None:
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            counts = synthesize_classes(args.dir, classes, args.n, size=args.size, seed=args.seed, workers=args.workers)
        else:
            counts = synthesize(args.dir, args.n, size=args.size, seed=args.seed, workers=args.workers)
    except ValueError as exc:
        raise CrackhpcError(f"data synth: {exc}") from None
    print(f"{args.dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def cmd_data_synth_photo(args) -> int:
    from .data.synth import synthesize_photos

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CrackhpcError(f"data synth-photo: --size {args.size}: give WIDTHxHEIGHT, e.g. 2048x1536") from None
    try:
        rows = synthesize_photos(args.dir, args.n, (width, height), scale=args.scale, seed=args.seed)
    except ValueError as exc:
        raise CrackhpcError(f"data synth-photo: {exc}") from None
    print(
        f"{args.dir}: {len(rows)} photos of {width}x{height} px with their crack masks (*.mask.png), listed in photos.csv"
    )
    return 0


def cmd_data_verify(args) -> int:
    from .data.verify import verify

    report = verify(args.dir, workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_data_split(args) -> int:
    from .data.split import counts, split_dataset, write_manifest

    items, classes = split_dataset(args.dir, tuple(args.fractions), args.seed)
    write_manifest(args.out, items)
    for split, per_class in counts(items, classes).items():
        print(f"{split:<6} " + "  ".join(f"{k}={v}" for k, v in per_class.items()))
    print(f"written: {args.out}")
    return 0


def cmd_data_fetch(args) -> int:
    from .data.fetch import fetch
    from .data.verify import verify

    root = fetch(args.dir, url=args.url, archive=args.archive)
    report = verify(root, workers=args.workers)
    print("\n".join(report.lines()))
    print(f"dataset ready: set `data: {{root: {root}}}` in the sweep YAML")
    return 0 if report.ok else 1


def _add_cluster_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="take partition, account, qos, constraint, setup, sbatch options and the weights cache this "
        "cluster's profile sets in $CRACKHPC_CLUSTERS or ~/.config/crackhpc/clusters.yaml (the sweep's "
        "own resources win; default: the profile named like Slurm's ClusterName, if there is one)",
    )


def _add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="edit the sweep for this call, repeatable: --set defaults.epochs=2 --set data.root=null "
        "--set 'data.synthetic={n: 400, size: 64}' (VALUE is YAML; list items by index: runs.0.lr=0.01)",
    )


def _add_mlflow_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="URI",
        help=f"{what}; URI: a tracking server (http://host:5000) or a database "
        "(default sqlite:///<results>/mlflow.db); a second import updates, never duplicates",
    )


def _seconds(text: str) -> float:
    """A positive, finite number of seconds, checked when the command line is read."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds, e.g. 10")
    return value


class _Parser(argparse.ArgumentParser):
    """Bad command lines are one line too, as every other bad input (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    from .config import EXECUTORS, MAX_RUNS, STUDY_SPLIT, SYNTH_CLASSES

    parser = _Parser(prog="crackhpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="train every run of a sweep YAML as its own job")
    p.add_argument("sweep", help="sweep file, e.g. jobs/smoke.yaml")
    p.add_argument(
        "--executor",
        default="auto",
        choices=EXECUTORS,
        help="auto: the YAML's choice, else slurm where sbatch exists, else local",
    )
    p.add_argument("--results", default="results", help="results root; runs go to RESULTS/<sweep name>/")
    p.add_argument("--dry-run", action="store_true", help="print runs and requested resources, submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="resubmit runs whose last attempt failed")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the jobs and print the report")
    p.add_argument(
        "--then-report",
        action="store_true",
        help="write the report when the jobs end: on Slurm a 1-CPU job after the submission's arrays "
        "(afterany) runs `crackhpc report`, nobody waits here; locally it runs after the wait",
    )
    _add_mlflow_option(p, "with --then-report: the report job also imports the sweep into MLflow")
    p.add_argument(
        "--controller",
        default="here",
        choices=("here", "slurm"),
        help="a search: its controller runs here until its trials end (default), or as a small CPU Slurm job",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        default=MAX_RUNS,
        metavar="N",
        help=f"refuse sweeps of more than N runs (default {MAX_RUNS}), a guard against runaway grids",
    )
    _add_set_option(p)
    _add_cluster_option(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="summary.csv, comparison.csv, report.md/.html and figures of a sweep's runs")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument(
        "--format",
        default="text",
        choices=["text", "csv", "md", "json"],
        help="what to print: text tables (default), the run table as CSV, report.md, or JSON",
    )
    p.add_argument("--sort", metavar="COLUMN", help="order the runs by this summary.csv column, e.g. test_acc")
    p.add_argument("--desc", action="store_true", help="with --sort: largest first")
    p.add_argument(
        "--all",
        action="store_true",
        help="also the runs of earlier versions of the sweep file (default: the runs it has now)",
    )
    p.add_argument(
        "--misclassified",
        type=int,
        default=4,
        metavar="N",
        help="misclassified test images shown per run (default 4, as in the study)",
    )
    figures = p.add_mutually_exclusive_group()
    figures.add_argument(
        "--figures",
        nargs="+",
        metavar="N|RUN_ID",
        help="per-run figures for the N best and N worst runs by test accuracy (default 3), "
        "or for the runs named; figures of unchanged runs are kept, not redrawn",
    )
    figures.add_argument("--no-figures", action="store_true", help="tables and text only, no figures (fastest)")
    _add_mlflow_option(p, "then import the sweep into MLflow (a parent run for the sweep, a run per run)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prefetch", help="on the login node: put the ImageNet weights sweeps need in the offline cache")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP.yaml", help="fetch what these sweeps' pretrained runs need")
    p.add_argument(
        "--models",
        help="framework:model list, e.g. torch:resnet18,torch:timm:convnext_atto,keras:EfficientNetB0 "
        "(no sweeps, no --models: the study's)",
    )
    p.add_argument(
        "--cache",
        help="cache root, files go to CACHE/<framework>/ and timm's to CACHE/huggingface/hub (default: "
        "$CRACKHPC_CACHE, else $TORCH_HOME/hub/checkpoints, $KERAS_HOME/models and the Hugging Face hub cache)",
    )
    p.add_argument(
        "--from", dest="from_dir", metavar="DIR", help="import files copied here by hand instead of downloading"
    )
    p.add_argument("--base-url", help="mirror: fetch BASE_URL/<filename> instead of the published URLs")
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="without --cache and $CRACKHPC_CACHE: the cache of this cluster "
        "profile (default: the profile of Slurm's ClusterName, if any)",
    )
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("models", help="the model names a sweep may give, and whether their weights are cached here")
    p.add_argument(
        "pattern", nargs="?", default="*", metavar="PATTERN", help="a glob, e.g. '*convnext*' (default: all)"
    )
    p.add_argument(
        "--framework", action="append", choices=("torch", "keras"), help="only this framework's (repeatable)"
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("status", help="each run's state, from Slurm's accounting (sacct) and the run folders")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument(
        "--watch",
        nargs="?",
        type=_seconds,
        const=10.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 10) until every run has ended; exit 0 if all completed, else 1",
    )
    p.add_argument("--json", action="store_true", help="JSON for scripts (one document per refresh with --watch)")
    p.add_argument(
        "--resources",
        action="store_true",
        help="memory peak/requested, CPU efficiency and time used/limit from Slurm's accounting",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel runs' jobs and mark the runs cancelled")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to cancel (default: every unfinished run)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("clean", help="free space and files of a sweep's completed runs (never live ones)")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument("--checkpoints", action="store_true", help="their trained weights (predict cannot use them then)")
    p.add_argument("--logs", action="store_true", help="their jobs' submitit logs and pickles (worker.log stays)")
    p.add_argument("--caches", action="store_true", help="the sweep's image and feature caches, if no run is live")
    p.add_argument("--dry-run", action="store_true", help="say what would be freed, remove nothing")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("predict", help="classify new photos with a trained run: crack maps of large photos, as jobs")
    p.add_argument("model", help="a run folder, or a sweep folder with --best")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="photos, folders (searched recursively) or .txt/.lst files of paths, one a line",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="prediction folder (a rerun resumes it)")
    p.add_argument(
        "--best",
        action="store_true",
        help="MODEL is a sweep folder: use its best completed run by --metric (ties: test_loss)",
    )
    p.add_argument(
        "--metric",
        metavar="NAME",
        help="with --best: a numeric column of the sweep's summary.csv (default best_val_acc; "
        "the smallest wins for test_loss, wall_time_s, compute_hours)",
    )
    p.add_argument(
        "--tile", type=int, default=227, help="patch side in px of the photo (default 227, the dataset's crops)"
    )
    p.add_argument("--stride", type=int, help="px between patches (default: the tile; less overlaps them)")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="crack probability from which a patch counts as cracked"
    )
    p.add_argument(
        "--max-megapixels", type=float, default=64.0, help="larger photos are listed in errors.csv, not decoded"
    )
    p.add_argument("--batch", type=int, default=64, help="patches per forward pass")
    p.add_argument(
        "--executor",
        default="auto",
        choices=EXECUTORS,
        help="auto: slurm where sbatch exists, else local",
    )
    p.add_argument("--shards", type=int, help="split the photos into N tasks of one job array")
    p.add_argument("--per-task", type=int, default=500, help="without --shards: photos per task (default 500)")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the jobs and merge")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="resources.KEY=VALUE",
        help="the jobs' resources (default: the run's, one task): --set resources.partition=gpu",
    )
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="use this cluster profile's partition, account, setup lines... instead of those the run "
        "trained with (a model trained elsewhere); --set still wins",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="a trained run as one model file for plain torch, onnxruntime or keras, with model.json"
    )
    p.add_argument("run", help="a completed run folder")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx", "keras"])
    p.add_argument("--out", metavar="DIR", help="default: RUN/export-FORMAT")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "logs",
        help="a run's Slurm stdout (default), stderr or worker.log, per attempt; -f follows it",
        description="Attempts are numbered from 1: every start of the run's jobs, requeues included.",
    )
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument("run_id", metavar="RUN_ID", help="a run of the sweep (`crackhpc status` lists them)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what the latest attempt writes until the run ends"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--err", action="store_true", help="the job's stderr (tracebacks, warnings) instead of its stdout"
    )
    which.add_argument("--worker", action="store_true", help="the run folder's worker.log (rank 0's lines only)")
    p.add_argument("--attempt", type=int, metavar="N", help="the Nth attempt (default: the latest)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "sbatch", help="write a plain sbatch script per run (slurm_templates/), and submit them with --submit"
    )
    p.add_argument("sweep", help="sweep file, e.g. jobs/smoke.yaml")
    p.add_argument("--results", default="results", help="results root; runs go to RESULTS/<sweep name>/")
    p.add_argument(
        "--out", metavar="DIR", help="write the scripts to DIR/<run id>.sbatch (default: <run folder>/job.sbatch)"
    )
    p.add_argument(
        "--submit", action="store_true", help="sbatch each script and record the job ids for status and cancel"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="also write runs whose last attempt failed or was cancelled"
    )
    _add_set_option(p)
    _add_cluster_option(p)
    p.set_defaults(func=cmd_sbatch)

    data = sub.add_parser("data", help="datasets: synth, synth-photo, verify, split, fetch").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "synth", help="write a synthetic crack dataset (Positive/ Negative/ layout), or one of N kinds of damage"
    )
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=2000, help="number of images (half cracked; with --classes, shared evenly)")
    p.add_argument(
        "--classes",
        metavar="KIND,KIND,...",
        help=f"one folder per kind of damage instead of Positive/ Negative/, from {','.join(SYNTH_CLASSES)} "
        "(clean: none), e.g. crack,spalling,stain,clean",
    )
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser(
        "synth-photo", help="write large synthetic photos with cracks across them, and their true crack masks"
    )
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=10, help="number of photos")
    p.add_argument("--size", default="2048x1536", metavar="WxH", help="photo size in px (default 2048x1536)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="px per px of the 227 px training crops (default 1: a 227 px patch looks like one crop)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth_photo)
    p = data.add_parser("verify", help="counts per class, unreadable/truncated files, odd sizes")
    p.add_argument("dir")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_data_verify)
    p = data.add_parser("split", help="write the stratified split manifest of a dataset")
    p.add_argument("dir")
    p.add_argument("--out", default="split.csv")
    p.add_argument("--fractions", type=float, nargs=3, default=list(STUDY_SPLIT), metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_split)
    from .data import fetch as data_fetch

    p = data.add_parser(
        "fetch",
        help="download and unpack the Concrete Crack Images dataset, then verify it",
        description=data_fetch.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="folder to unpack into")
    p.add_argument("--url", help=f"archive URL (.zip or .tar(.gz)); default: {data_fetch.COURSE_URL}")
    p.add_argument("--archive", metavar="FILE", help="a local .zip or .tar(.gz) instead of downloading")
    p.add_argument("--workers", type=int, default=1, help="processes for the verify pass")
    p.set_defaults(func=cmd_data_fetch)
    return parser


def _terminated(signum, frame):
    raise KeyboardInterrupt


class _ReaderMayLeave:
    """sys.stdout or sys.stderr while a command runs: once the reader has gone (`| head`, a dropped
    ssh session), what is written goes nowhere instead of raising BrokenPipeError half-way through a
    submission, whose jobs would then be missing from sweep.json."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)  # the stream's fd, so that its last flush finds a reader
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _output_survives_its_reader() -> Iterator[None]:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def main(argv: list[str] | None = None) -> int:
    with _output_survives_its_reader():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # `kill PID` (SIGTERM, also what a batch system or a shutdown sends) stops a command as Ctrl-C does: its
    # local jobs are stopped and recorded cancelled, not left running as orphans.
    previous = (
        signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return args.func(args)
    except CrackhpcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A read-only or full file system, a name too long: what the system said, about which file.
        hint = {
            errno.ENOSPC: "; free some space and run it again (finished work is kept)",
            errno.EROFS: "; a read-only file system: write to a folder elsewhere",
            errno.EACCES: "; check the folder's permissions",
            errno.ENAMETOOLONG: "; use a shorter name",
        }.get(exc.errno or 0, "")
        print(f"error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
