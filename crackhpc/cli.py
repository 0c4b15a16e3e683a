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

    sweep = load_sweep(args.sweep)
    submit(sweep, Path(args.results), args.executor, dry_run=args.dry_run, retry_failed=args.retry_failed,
           wait=True if args.wait else None)
    sweep_dir = Path(args.results) / sweep.name
    if not args.dry_run and (sweep_dir / "sweep.json").is_file():
        df, comp = write_reports(sweep_dir)
        print(format_table(df, SUMMARY_VIEW))
        print(f"\nwritten: {sweep_dir / 'summary.csv'}, {sweep_dir / 'comparison.csv'}")
    return 0


def cmd_report(args) -> int:
    from .report import format_table, write_reports

    df, comp = write_reports(args.sweep_dir)
    print(format_table(df, SUMMARY_VIEW))
    print()
    print(format_table(comp))
    print(f"\nwritten: {Path(args.sweep_dir) / 'summary.csv'}, {Path(args.sweep_dir) / 'comparison.csv'}")
    failed = df[df["status"] == "failed"]
    for _, row in failed.iterrows():
        print(f"failed: {row['run_id']}: {row['error']}")
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
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="summary.csv and comparison.csv of a sweep's runs")
    p.add_argument("sweep_dir", help="results/<sweep name>")
    p.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="datasets: synth, verify, split").add_subparsers(dest="data_command", required=True)
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
