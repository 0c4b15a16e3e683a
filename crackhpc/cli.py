"""The `crackhpc` command. Each subcommand is a thin shell over one module."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import CrackhpcError

SUMMARY_VIEW = ["run_id", "status", "epochs_done", "best_val_acc", "test_loss", "test_acc", "wall_time_s", "images_per_s"]


def cmd_sweep(args) -> int:
    from .config import load_sweep
    from .launcher import submit
    from .report import format_table, write_reports

    sweep = load_sweep(args.sweep, overrides=args.overrides)
    submit(sweep, Path(args.results), args.executor, dry_run=args.dry_run, retry_failed=args.retry_failed,
           wait=True if args.wait else None)
    sweep_dir = Path(args.results) / sweep.name
    if not args.dry_run and (sweep_dir / "sweep.json").is_file():
        df, comp = write_reports(sweep_dir)
        print(format_table(df, SUMMARY_VIEW))
        print(f"\nwritten: {sweep_dir / 'summary.csv'}, {sweep_dir / 'comparison.csv'}")
    return 0


def cmd_report(args) -> int:
    from .report import (REPORT_HTML, REPORT_MD, format_table, parse_figures, run_dirs, sort_runs, to_json,
                         write_document, write_reports)

    if args.misclassified < 0:
        raise CrackhpcError(f"--misclassified {args.misclassified}: give 0 (none) or more images per run")
    problems: list[str] = []  # one line per damaged file; every other run is still reported
    df, comp = write_reports(args.sweep_dir, everything=args.all, notes=problems)
    df = sort_runs(df, args.sort, args.desc)
    markdown = write_document(args.sweep_dir, df, comp, examples=args.misclassified,
                              figures=None if args.no_figures else parse_figures(args.figures), notes=problems)
    if args.format == "text":
        print(format_table(df, SUMMARY_VIEW) + "\n\n" + format_table(comp))
    else:
        printers = {"csv": lambda: df.to_csv(index=False), "md": lambda: markdown, "json": lambda: to_json(df, comp)}
        sys.stdout.write(printers[args.format]().rstrip("\n") + "\n")
    # Notes go to stderr unless the table is the text one, so csv/md/json output can be piped as it is.
    notes = sys.stdout if args.format == "text" else sys.stderr
    sweep_dir = Path(args.sweep_dir)
    print("\nwritten: " + ", ".join(str(sweep_dir / f) for f in ("summary.csv", "comparison.csv", REPORT_MD, REPORT_HTML))
          + f" (figures in {sweep_dir / 'report'})", file=notes)
    for _, row in df[df["status"] == "failed"].iterrows():
        print(f"failed: {row['run_id']}: {row['error']}", file=notes)
    older = len(run_dirs(sweep_dir)) - len(df)
    if older > 0:
        print(f"not shown: {older} run{'s' * (older > 1)} of earlier versions of the sweep file (--all includes them)", file=notes)
    for line in dict.fromkeys(problems):
        print(f"problem: {line}", file=sys.stderr)
    return 1 if problems else 0


def cmd_prefetch(args) -> int:
    from .prefetch import cache_note, prefetch, table, wanted

    outcomes = prefetch(wanted(args.sweeps, args.models), args.cache, args.base_url, args.from_dir)
    print(table(outcomes))
    if note := cache_note(args.cache):
        print(note)
    for outcome in outcomes:
        if outcome.error:
            print(f"error: {outcome.error}", file=sys.stderr)
    return 1 if any(o.error for o in outcomes) else 0


def cmd_status(args) -> int:
    from .status import collect, format_status

    print(format_status(collect(args.sweep_dir)))
    return 0


def cmd_cancel(args) -> int:
    from .status import cancel

    cancelled = cancel(args.sweep_dir, args.run_ids)
    print(f"{len(cancelled)} run(s) cancelled" + ("; `crackhpc sweep --retry-failed` resubmits them" if cancelled else ""))
    return 0


def cmd_sbatch(args) -> int:
    from .config import load_sweep
    from .sbatch import write_scripts

    write_scripts(load_sweep(args.sweep, overrides=args.overrides), Path(args.results), Path(args.out) if args.out else None,
                  submit=args.submit, retry_failed=args.retry_failed)
    return 0


def cmd_data_synth(args) -> int:
    from .data.synth import synthesize

    try:
        counts = synthesize(args.dir, args.n, size=args.size, seed=args.seed, workers=args.workers)
    except ValueError as exc:
        raise CrackhpcError(f"data synth: {exc}") from None
    print(f"{args.dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def cmd_data_verify(args) -> int:
    from .data.verify import verify

    report = verify(args.dir, workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_data_split(args) -> int:
    from .data.split import counts, make_manifest, write_manifest

    items = make_manifest(args.dir, tuple(args.fractions), args.seed)
    write_manifest(args.out, items)
    for split, per_class in counts(items).items():
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


def _add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="edit the sweep for this call, repeatable: --set defaults.epochs=2 --set data.root=null "
                        "--set 'data.synthetic={n: 400, size: 64}' (VALUE is YAML; list items by index: runs.0.lr=0.01)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crackhpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="train every run of a sweep YAML as its own job")
    p.add_argument("sweep", help="sweep file, e.g. jobs/smoke.yaml")
    p.add_argument("--executor", default="auto", choices=["auto", "local", "debug", "slurm"],
                   help="auto: the YAML's choice, else slurm where sbatch exists, else local")
    p.add_argument("--results", default="results", help="results root; runs go to RESULTS/<sweep name>/")
    p.add_argument("--dry-run", action="store_true", help="print runs and requested resources, submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="resubmit runs whose last attempt failed")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the jobs and print the report")
    _add_set_option(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="summary.csv, comparison.csv, report.md/.html and figures of a sweep's runs")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument("--format", default="text", choices=["text", "csv", "md", "json"],
                   help="what to print: text tables (default), the run table as CSV, report.md, or JSON")
    p.add_argument("--sort", metavar="COLUMN", help="order the runs by this summary.csv column, e.g. test_acc")
    p.add_argument("--desc", action="store_true", help="with --sort: largest first")
    p.add_argument("--all", action="store_true",
                   help="also the runs of earlier versions of the sweep file (default: the runs it has now)")
    p.add_argument("--misclassified", type=int, default=4, metavar="N",
                   help="misclassified test images shown per run (default 4, as in the study)")
    figures = p.add_mutually_exclusive_group()
    figures.add_argument("--figures", nargs="+", metavar="N|RUN_ID",
                         help="per-run figures for the N best and N worst runs by test accuracy (default 3), "
                              "or for the runs named; figures of unchanged runs are kept, not redrawn")
    figures.add_argument("--no-figures", action="store_true", help="tables and text only, no figures (fastest)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prefetch", help="on the login node: put the ImageNet weights sweeps need in the offline cache")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP.yaml", help="fetch what these sweeps' pretrained runs need")
    p.add_argument("--models", help="framework:model list, e.g. torch:resnet18,keras:vgg16 (no sweeps, no --models: all)")
    p.add_argument("--cache", help="cache root, files go to CACHE/<framework>/ (default: $CRACKHPC_CACHE, "
                                   "else $TORCH_HOME/hub/checkpoints and ~/.keras/models)")
    p.add_argument("--from", dest="from_dir", metavar="DIR", help="import files copied here by hand instead of downloading")
    p.add_argument("--base-url", help="mirror: fetch BASE_URL/<filename> instead of the published URLs")
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("status", help="each run's state, from Slurm's accounting (sacct) and the run folders")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel runs' jobs and mark the runs cancelled")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to cancel (default: every unfinished run)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("sbatch", help="write a plain sbatch script per run (slurm_templates/), and submit them with --submit")
    p.add_argument("sweep", help="sweep file, e.g. jobs/smoke.yaml")
    p.add_argument("--results", default="results", help="results root; runs go to RESULTS/<sweep name>/")
    p.add_argument("--out", metavar="DIR", help="write the scripts to DIR/<run id>.sbatch (default: <run folder>/job.sbatch)")
    p.add_argument("--submit", action="store_true", help="sbatch each script and record the job ids for status and cancel")
    p.add_argument("--retry-failed", action="store_true", help="also write runs whose last attempt failed or was cancelled")
    _add_set_option(p)
    p.set_defaults(func=cmd_sbatch)

    data = sub.add_parser("data", help="datasets: synth, verify, split, fetch").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic crack dataset (Positive/ Negative/ layout)")
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=2000, help="number of images (half cracked)")
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("verify", help="counts per class, unreadable/truncated files, odd sizes")
    p.add_argument("dir")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_data_verify)
    p = data.add_parser("split", help="write the stratified split manifest of a dataset")
    p.add_argument("dir")
    p.add_argument("--out", default="split.csv")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.75, 0.2375, 0.0125], metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_split)
    from .data import fetch as data_fetch

    p = data.add_parser("fetch", help="download and unpack the Concrete Crack Images dataset, then verify it",
                        description=data_fetch.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="folder to unpack into")
    p.add_argument("--url", help=f"archive URL (.zip or .tar(.gz)); default: {data_fetch.COURSE_URL}")
    p.add_argument("--archive", metavar="FILE", help="a local .zip or .tar(.gz) instead of downloading")
    p.add_argument("--workers", type=int, default=1, help="processes for the verify pass")
    p.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CrackhpcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
