"""`crackhpc sweep`: sweep YAML → run folders → one unit per run for the submission engine
(crackhpc.engine), which sends them out as Slurm job arrays or local processes.

Completed runs are skipped, runs whose job is still queued or running are left alone, failed and
cancelled runs are resubmitted only on request (--retry-failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import atomic, preflight, rundir
from .config import RunSpec, Sweep, SynthConfig
from .data.split import split_dataset
from .engine import FIX_RETRY, SUBMIT, Echo, Engine, Unit, resolve_executor
from .errors import ConfigError, CrackhpcError
from .grid import expand
from .record import DATA, SweepFolder, SweepRecord
from .states import RunState
from .then_report import ThenReport

FIX_KIND = "rename the sweep (`name:` in its file) or give another --results"


@dataclass(frozen=True)
class Submission:
    """How `crackhpc sweep` submits (its command-line flags)."""

    executor: str = "auto"  # auto: the sweep file's choice, else Slurm where sbatch exists
    dry_run: bool = False
    retry_failed: bool = False
    wait: bool | None = None  # None: wait for local jobs, not for Slurm's
    then_report: ThenReport | None = None  # a report job after the Slurm jobs, where this does not wait for them


def synthetic_root(results: Path, s: SynthConfig) -> Path:
    kinds = f"-{'-'.join(s.classes)}" if s.classes else ""
    return results / DATA / f"synth-n{s.n}-{s.size}px-seed{s.seed}{kinds}"


def prepare_data(sweep: Sweep, results: Path) -> Path:
    """The dataset folder for a sweep, making the synthetic one if the sweep asks for it."""
    s = sweep.data.synthetic
    if s is None:  # the sweep names its dataset's folder (config: exactly one of the two)
        return Path(str(sweep.data.root))
    from .data.synth import synthesize, synthesize_classes

    root = synthetic_root(results, s)
    if s.classes:
        synthesize_classes(root, s.classes, s.n, size=s.size, seed=s.seed)
    else:
        synthesize(root, s.n, size=s.size, seed=s.seed)
    return root


def write_run_folders(
    specs: list[RunSpec],
    folder: SweepFolder,
    data_root: Path,
    sweep: Sweep,
    provenance: dict | None = None,
    split: tuple[list, tuple[str, ...]] | None = None,
) -> list[RunSpec]:
    """The run folders of `specs` (`split`: the dataset's manifest and classes, made here if not given:
    a search writes its run folders in rounds and lists the dataset once)."""
    manifest, classes = split or split_dataset(data_root, sweep.data.split, sweep.data.split_seed)
    if sweep.data.classes is not None and tuple(sweep.data.classes) != classes:
        raise ConfigError(
            f"{sweep.path}: data.classes: the dataset {data_root} has the classes {', '.join(classes)}, "
            f"not {', '.join(sweep.data.classes)}; fix the list (in label order) or point data.root at the dataset"
        )
    shared = folder.store_manifest(manifest)
    resolved = []
    data = specs[0].data.model_copy(update={"root": str(data_root), "classes": classes}) if specs else None
    with atomic.deferred():  # one sync for the sweep's files, not an fsync for each
        for spec in specs:
            spec = spec.model_copy(update={"data": data, "manifest": shared})
            run_dir = folder.run(spec.run_id)
            if not rundir.is_completed(run_dir):
                atomic.remove_stale(run_dir)
                rundir.write_config(run_dir, spec)
                (run_dir / rundir.SPLIT).unlink(missing_ok=True)  # an earlier submission's own copy
                # A new attempt: status, plan and cancel read result.json as the state of the latest job.
                rundir.reset_result(
                    run_dir,
                    run_id=spec.run_id,
                    status=RunState.PENDING,
                    epochs=spec.train.epochs,
                    provenance=provenance,
                )
            resolved.append(spec)
    return resolved


def sweep_folder(sweep: Sweep, results: Path) -> SweepFolder:
    if results.exists() and not results.is_dir():
        raise CrackhpcError(f"--results {results}: a file, not a folder; give a folder for the sweeps' results")
    return SweepFolder((results / sweep.name).resolve())


def prepare_record(sweep: Sweep, results: Path, record: SweepRecord) -> Path:
    """The dataset (made if synthetic) and what the record says of the submission; the data folder."""
    from .provenance import submission

    data_root = prepare_data(sweep, results)
    record.sweep, record.yaml, record.overrides = sweep.name, str(Path(sweep.path).resolve()), list(sweep.overrides)
    record.data_root = str(data_root)
    record.provenance = submission(sweep.path)
    return data_root


def prepare_runs(
    sweep: Sweep, results: Path, folder: SweepFolder, specs: list[RunSpec], record: SweepRecord
) -> list[RunSpec]:
    """Data and run folders for the runs about to be submitted; the specs now name the data folder."""
    data_root = prepare_record(sweep, results, record)
    return write_run_folders(specs, folder, data_root, sweep, record.provenance)


def units(specs: list[RunSpec], folder: SweepFolder, sweep: Sweep, executor: str) -> list[Unit]:
    from .worker import Worker

    if executor == "debug":
        # The debug executor runs each job in this process when it is waited on. torchvision's Triton
        # segfaults when it loads after TensorFlow 2.21 but not before, so torch runs go first.
        specs = sorted(specs, key=lambda spec: spec.train.framework != "torch")
    return [
        Unit(s.run_id, Worker(folder.run(s.run_id)), s.resources, f"{s.resources.job_name}-{sweep.name}") for s in specs
    ]


def _header(sweep: Sweep, specs: list[RunSpec], actions: dict[str, str], engine: Engine) -> None:
    todo = sum(a == SUBMIT for a in actions.values())
    engine.echo(
        f"sweep {sweep.name}: {len(specs)} runs, {todo} to submit, executor {engine.executor}, "
        f"results in {engine.folder.path}"
    )
    engine.say_orphans(actions)


def _print_runs(specs: list[RunSpec], actions: dict[str, str], echo: Echo) -> None:
    for spec in specs:
        r = spec.resources
        echo(
            f"  {spec.run_id:<48} {actions[spec.run_id]:<22} nodes={r.nodes} tasks/node={r.ntasks_per_node} "
            f"gpus/node={r.gpus_per_node} cpus/task={r.cpus_per_task} mem={r.mem_gb or '-'}G time={r.timeout_min}m"
        )


def submit(sweep: Sweep, results: Path, how: Submission = Submission(), echo: Echo = print) -> dict[str, RunState]:
    """Submit every run of `sweep` that needs it. Returns the state of each run this call waited
    for (none when it did not wait); the record is in sweep.json."""
    executor = resolve_executor(how.executor if how.executor != "auto" else sweep.executor)
    folder = sweep_folder(sweep, results)
    specs = expand(sweep)
    engine = Engine(folder, None, executor, echo)
    if how.dry_run:  # no lock: it writes nothing, and shows live runs as live
        engine.open(FIX_KIND)
        actions = engine.plan([s.run_id for s in specs], how.retry_failed)
        todo = [s for s in specs if actions[s.run_id] == SUBMIT]
        _header(sweep, specs, actions, engine)
        _print_runs(specs, actions, echo)
        engine.preview(units(todo, folder, sweep, executor))
        for warning in preflight.weights_warnings(todo):
            echo(warning)
        return {}
    # Missing weights stop the sweep before it writes anything, not after hours in the queue.
    preflight.require_weights([s for s in specs if not rundir.is_completed(folder.run(s.run_id))])
    with engine.locked(FIX_KIND) as record:
        actions = engine.plan([s.run_id for s in specs], how.retry_failed)
        todo = [s for s in specs if actions[s.run_id] == SUBMIT]
        _header(sweep, specs, actions, engine)
        # Said on a real submission too, or a failed or unreadable run would go unmentioned.
        left = {
            r: a.removeprefix("skip: ").removesuffix(FIX_RETRY) for r, a in actions.items() if a.endswith(FIX_RETRY)
        }
        if left:
            echo(
                "  not resubmitted without --retry-failed: "
                + ", ".join(f"{r} ({why})" for r, why in sorted(left.items()))
            )
        record.current_runs = [s.run_id for s in specs]  # what the report compares; older runs stay on disk
        engine.own()
        if not todo:
            return {}
        todo = prepare_runs(sweep, results, folder, todo, record)
        folder.save(record)
        wait = how.wait if how.wait is not None else executor != "slurm"
        states = engine.run(units(todo, folder, sweep, executor), wait)
        if how.then_report and executor == "slurm" and not wait:
            job_ids = [record.runs[s.run_id].job_id for s in todo if s.run_id in record.runs]
            echo(how.then_report.submit(folder, record, job_ids, todo[0].resources))
        return states
