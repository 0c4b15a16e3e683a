"""`crackhpc sweep` of a sweep file with `search:`: Optuna draws the runs and stops poor ones early.

The controller (this module) is the one process that talks to Optuna. It asks the study for
trials, makes each a run (a run folder; an id of its settings' hash and its trial number) and
submits it through the submission engine (crackhpc.engine), like a grid's runs: Slurm job arrays
or local processes, at most `parallel` live. While they train it reads each run's metrics.csv and
reports the search's metric per epoch; when the pruner says so it leaves a stop request
(crackhpc.rundir.request_stop) that the worker takes at the end of its epoch, recording the run
`pruned`. Each run's end is told to the study: completed with its best epoch's value, pruned (Optuna
keeps its last epoch's value), or failed.

The study lives in <results>/<sweep>/search.db (SQLite), written by the controller only: compute
nodes never open it (SQLite's locks, like Optuna's file journal, are not to be trusted across NFS
clients). The run folders are the truth about the runs, so a controller killed at any point loses
nothing: the same `crackhpc sweep` again reads the study's unfinished trials and, for each, its run:
still queued or running (adopted and watched again), ended while nobody watched (told now), never
submitted (submitted now, as the same trial), failed or cancelled (resumed from its checkpoint with
--retry-failed, else told failed). No trial is drawn twice, and none runs twice.

`--controller slurm` runs this same command as a small CPU Slurm job (`controller_job` in
sweep.json), so that the user can log out.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic, preflight, rundir, slurm
from .config import Sweep
from .data.split import split_dataset
from .engine import Echo, Engine, resolve_executor
from .errors import ConfigError, CrackhpcError, DamagedFileError, Interrupted
from .grid import RUN_PARAM, expand, trial_run
from .launcher import FIX_KIND, Submission, prepare_record, sweep_folder, units, write_run_folders
from .record import SEARCH_DB, Job, SweepFolder
from .states import RECORDED, SUCCEEDED, RunState
from .status import report_job

CONTROLLER_SCRIPT, CONTROLLER_LOG = "controller-job.sbatch", "controller-job-%j"
POLL_S = 1.0  # metrics.csv and result.json: files, read often
SCHEDULER_POLL_S = {"slurm": 10.0, "local": 1.0}  # Slurm's accounting (sacct): jobs that ended without a word
FIX_STUDY = "move {db} aside to start a new search there, or restore the sweep file's search: block"


def storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / SEARCH_DB}"


def optuna_module():
    """Optuna, imported when a search needs it; its INFO line per trial would bury the sweep's own."""
    if "optuna" not in sys.modules:
        # Imported on a thread of its own: Optuna's guards of its optional imports keep a traceback per
        # missing package, and so every frame of the importing stack, with its locals (the engine's
        # submitit jobs, which would then outlive the command and complain as Python exits).
        def load() -> None:
            with contextlib.suppress(ImportError):
                importlib.import_module("optuna")

        importer = threading.Thread(target=load)
        importer.start()
        importer.join()
    if "optuna" not in sys.modules:
        raise CrackhpcError("search: needs Optuna: pip install 'crackhpc[search]'")
    optuna = sys.modules["optuna"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(sweep: Sweep) -> dict[str, Any]:
    """The search's space as Optuna's distributions; with several explicit runs, which one (`run`)."""
    assert sweep.search is not None
    dist = optuna_module().distributions
    out: dict[str, Any] = {}
    for key, values in sweep.search.space.items():
        if isinstance(values, list):
            out[key] = dist.CategoricalDistribution(values)
            continue
        kind, (low, high) = next(iter(values.items()))
        if kind == "int":
            out[key] = dist.IntDistribution(low, high)
        else:
            out[key] = dist.FloatDistribution(float(low), float(high), log=kind == "log_uniform")
    if len(sweep.entries) > 1:
        out[RUN_PARAM] = dist.CategoricalDistribution(list(range(len(sweep.entries))))
    return out


def _sampler(sweep: Sweep, space: dict[str, Any]):
    assert sweep.search is not None
    cfg, samplers = sweep.search, optuna_module().samplers
    if cfg.sampler == "random":
        return samplers.RandomSampler(seed=cfg.seed)
    if cfg.sampler == "grid":

        class Grid(samplers.GridSampler):  # type: ignore[name-defined]
            def after_trial(self, *args, **kwargs) -> None:
                """Not study.stop(), which only optimize() may call: `trials`, at most the grid's points, ends ours."""

        return Grid({k: list(d.choices) for k, d in space.items()}, seed=cfg.seed)
    # constant_liar: trials asked while others still train are steered away from their settings.
    startup = max(cfg.parallel, min(10, cfg.trials // 3))
    return samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup, constant_liar=True)


def _pruner(sweep: Sweep):
    assert sweep.search is not None
    cfg, pruners = sweep.search, optuna_module().pruners
    if cfg.prune == "asha":
        return pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor)
    if cfg.prune == "median":
        startup = max(1, min(5, cfg.trials // 4))
        return pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=cfg.min_resource)
    return pruners.NopPruner()


def _signature(sweep: Sweep) -> dict:
    """What a study's trials mean: a search.db made for another space or metric cannot be resumed."""
    assert sweep.search is not None
    cfg = sweep.search
    entries = [t.model_dump(mode="json") for _, t, _ in sweep.entries]
    direction = "maximize" if cfg.maximize else "minimize"
    return {"space": cfg.space, "runs": entries, "metric": cfg.metric, "direction": direction, "sampler": cfg.sampler}


def open_study(sweep: Sweep, folder: SweepFolder):
    """The sweep's study in its search.db, made on the first call, resumed on the next."""
    import json

    optuna = optuna_module()
    space = distributions(sweep)
    signature = _signature(sweep)
    folder.path.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=optuna.storages.RDBStorage(storage_url(folder.path)),
        study_name=sweep.name,
        sampler=_sampler(sweep, space),
        pruner=_pruner(sweep),
        direction=signature["direction"],
        load_if_exists=True,
    )
    before = study.user_attrs.get("search")
    if before is None:
        study.set_user_attr("search", signature)
    elif json.dumps(before, sort_keys=True) != json.dumps(signature, sort_keys=True):
        changed = next(k for k in signature if json.dumps(before.get(k), sort_keys=True) != json.dumps(signature[k]))
        raise ConfigError(
            f"{sweep.path}: search: its {changed} differs from the search in {folder.path / SEARCH_DB}: "
            + FIX_STUDY.format(db=folder.path / SEARCH_DB)
        )
    return study


def _suggest(trial, name: str, dist) -> Any:
    """A trial's value of one parameter: drawn now, or the one it drew before a controller was killed."""
    optuna = optuna_module()
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


@dataclass
class _Live:
    """A trial whose run is queued or training."""

    trial: Any  # optuna.Trial
    run_id: str
    values: dict[int, float] = field(default_factory=dict)  # the metric of each epoch told to the study
    stopping: bool = False  # a stop request is out


class Controller:
    """Asks the study for trials, submits their runs, reports their epochs and tells their ends."""

    def __init__(self, sweep: Sweep, engine: Engine, study, results: Path):
        assert sweep.search is not None
        self.sweep, self.cfg, self.engine, self.study, self.results = sweep, sweep.search, engine, study, results
        self.folder, self.echo = engine.folder, engine.echo
        self.space = distributions(sweep)
        self.live: dict[int, _Live] = {}
        self.ended: dict[str, RunState] = {}
        self.bar: Any = None
        self.stopped = False  # by `crackhpc cancel` of the sweep
        self._data: tuple[Path, tuple] | None = None  # the data folder, its manifest and classes: listed once

    # -- trials and their runs ------------------------------------------------------------------------

    def _draw(self, trial):
        """The run of a trial (its settings drawn, or read back), or None if they make no valid run."""
        try:
            spec = trial_run(self.sweep, {k: _suggest(trial, k, d) for k, d in self.space.items()}, trial.number)
        except ConfigError as exc:
            self.study.tell(trial.number, state=self._states.FAIL, skip_if_finished=True)
            self._say(f"  trial {trial.number}: failed: {exc}")
            return None
        trial.set_user_attr("run_id", spec.run_id)
        return spec

    @property
    def _states(self):
        return optuna_module().trial.TrialState

    def adopt(self, retry_failed: bool) -> list:
        """The study's unfinished trials, from a controller that was stopped or killed: each run still
        live is watched again, one that ended is told now, one never submitted (or, with
        `retry_failed`, failed) is returned to submit; the others are told failed."""
        optuna = optuna_module()
        unfinished = self.study.get_trials(deepcopy=False, states=(self._states.RUNNING,))
        # Optuna's own way back to a trial it handed out (its RetryFailedTrialCallback's too): the trial id.
        trials = [(optuna.Trial(self.study, ft._trial_id), ft.intermediate_values) for ft in unfinished]
        pairs = [(trial, spec, values) for trial, values in trials if (spec := self._draw(trial))]
        statuses = {s.run_id: s for s in self.engine.statuses([spec.run_id for _, spec, _ in pairs])}
        again = []
        for trial, spec, values in pairs:
            run = statuses[spec.run_id]
            live = _Live(trial, spec.run_id, dict(values))
            if run.live:
                self.live[trial.number] = live
                self._say(f"  trial {trial.number}: {spec.run_id} {run.state}: adopted")
            elif run.state is RunState.PENDING or (retry_failed and run.state not in SUCCEEDED):
                self.live[trial.number] = live  # never submitted, or resumed from its checkpoint
                again.append(spec)
            else:
                self._end(live, run.state)
        return again

    def _ask(self, n: int) -> list:
        specs: list = []
        while len(specs) < n:
            trial = self.study.ask()
            if spec := self._draw(trial):
                self.live[trial.number] = _Live(trial, spec.run_id)
                specs.append(spec)
            elif self._count() >= self.cfg.trials:
                break
        return specs

    def _submit(self, specs: list) -> None:
        if not specs:
            return
        record = self.engine.record
        if self._data is None:
            root = prepare_record(self.sweep, self.results, record)
            self._data = root, split_dataset(root, self.sweep.data.split, self.sweep.data.split_seed)
        root, split = self._data
        specs = write_run_folders(specs, self.folder, root, self.sweep, record.provenance, split)
        record.current_runs = sorted({*(record.current_runs or []), *(s.run_id for s in specs)})
        self.folder.save(record)
        self.engine.run(units(specs, self.folder, self.sweep, self.engine.executor), wait=False)

    # -- watching -------------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        (self.bar.write if self.bar is not None else self.echo)(line)

    def _report(self, live: _Live, prune: bool) -> None:
        """Tell the study the run's new epochs; where it says so, ask the run to stop."""
        run_dir = self.folder.run(live.run_id)
        try:
            rows = rundir.read_epochs(run_dir)
        except DamagedFileError:
            return  # written atomically: damaged by hand; its end says the rest
        new = [r for r in rows if r.epoch not in live.values]
        for row in new:
            live.values[row.epoch] = getattr(row, self.cfg.metric)
            live.trial.report(live.values[row.epoch], row.epoch)
        if prune and new and not live.stopping and live.trial.should_prune():
            value = getattr(new[-1], self.cfg.metric)
            why = f"pruned by the search ({self.cfg.prune}) after epoch {new[-1].epoch}: {self.cfg.metric} {value:.4g}"
            rundir.request_stop(run_dir, RunState.PRUNED, why)
            live.stopping = True
            self._say(f"  trial {live.trial.number}: {live.run_id} {why}")

    def _end(self, live: _Live, state: RunState) -> None:
        """Tell the study how the trial's run ended."""
        self._report(live, prune=False)
        number, metric = live.trial.number, self.cfg.metric
        values = [v for v in live.values.values() if math.isfinite(v)]
        note = str(state)
        if state is RunState.COMPLETED and values:
            value = max(values) if self.cfg.maximize else min(values)
            self.study.tell(number, value, skip_if_finished=True)
            note += f", best {metric} {value:.4g}"
        elif state is RunState.PRUNED:
            self.study.tell(number, state=self._states.PRUNED, skip_if_finished=True)
            note += f" after epoch {max(live.values, default=0)}"
        else:
            self.study.tell(number, state=self._states.FAIL, skip_if_finished=True)
            note += f" (no finite {metric})" if state is RunState.COMPLETED else ""
        self.live.pop(number, None)
        self.ended[live.run_id] = state
        if self.bar is not None:
            self.bar.update(1)
        self._say(f"  trial {number}: {live.run_id} {note}")

    def _watch(self, ask_scheduler: bool) -> None:
        statuses = {}
        if ask_scheduler and self.live:
            statuses = {s.run_id: s for s in self.engine.statuses([t.run_id for t in self.live.values()])}
        for live in list(self.live.values()):
            try:
                recorded = rundir.state_of(rundir.read_result(self.folder.run(live.run_id)))
            except DamagedFileError:
                recorded = RunState.UNREADABLE
            self._report(live, prune=recorded is RunState.RUNNING)
            if recorded in RECORDED:
                self._end(live, recorded)
            elif live.run_id in statuses and not statuses[live.run_id].live:
                self._end(live, statuses[live.run_id].state)

    def _cancelled(self) -> bool:
        """`crackhpc cancel` of the whole sweep: its runs are cancelled, and no new trial is to start."""
        if rundir.stop_requested(self.folder.path) is None:
            return False
        if not self.stopped:
            self._say(
                "  the search was cancelled (crackhpc cancel): no new trials; `crackhpc sweep --retry-failed` resumes it"
            )
            self.stopped = True
        return True

    def _count(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def run(self, again: list) -> dict[str, RunState]:
        """Until the study has its `trials` trials and none is live: the state of each run that ended."""
        from tqdm import tqdm

        res = self.sweep.entries[0][2]
        limit = self.cfg.parallel if self.engine.executor != "local" else min(self.cfg.parallel, self.engine.fits(res))
        finished = self._count() - len(self.live)
        scheduler_poll, asked = SCHEDULER_POLL_S.get(self.engine.executor, 1.0), 0.0
        with tqdm(total=self.cfg.trials, initial=finished, desc="trials", unit="trial") as self.bar:
            self._submit(again)
            while True:
                now = time.monotonic()
                poll = now - asked >= scheduler_poll
                asked = now if poll else asked
                self._watch(ask_scheduler=poll)
                cancelled, count = self._cancelled(), self._count()
                room = 0 if cancelled else min(limit - len(self.live), self.cfg.trials - count)
                if room > 0:
                    self._submit(self._ask(room))
                    count = self._count()
                if not self.live and (count >= self.cfg.trials or cancelled):
                    break
                time.sleep(POLL_S)
        self.bar = None
        return self.ended


def _header(sweep: Sweep, engine: Engine) -> None:
    assert sweep.search is not None
    cfg = sweep.search
    engine.echo(
        f"search {sweep.name}: {cfg.trials} trials, at most {cfg.parallel} at once, sampler {cfg.sampler}, "
        f"prune {cfg.prune}, {'maximize' if cfg.maximize else 'minimize'} {cfg.metric}; executor {engine.executor}, "
        f"results in {engine.folder.path}"
    )
    for key, values in cfg.space.items():
        engine.echo(f"  {key}: {values}")


def submit(sweep: Sweep, results: Path, how: Submission | None = None, echo: Echo = print) -> dict[str, RunState]:
    """Run the search of `sweep` in this process until it has its trials (resuming one that was
    stopped): the state of each run that ended meanwhile."""
    how = how or Submission()
    executor = resolve_executor(how.executor if how.executor != "auto" else sweep.executor)
    if executor == "debug":
        raise CrackhpcError(
            "executor debug: a search's controller must watch its trials train, and the debug executor "
            "trains them inside it: use --executor local"
        )
    folder = sweep_folder(sweep, results)
    engine = Engine(folder, None, executor, echo)
    candidates = expand(sweep)
    if how.dry_run:
        engine.open(FIX_KIND)
        _header(sweep, engine)
        engine.echo("  each trial's job (its settings drawn as the search goes):")
        engine.preview(units(candidates[:1], folder, sweep, executor))
        for warning in preflight.weights_warnings(candidates):
            echo(warning)
        return {}
    optuna_module()  # before the lock: a missing Optuna is one line
    preflight.require_weights(candidates)
    controller_busy(folder)
    with engine.locked(FIX_KIND):
        (folder.path / rundir.STOP).unlink(missing_ok=True)  # a `crackhpc cancel` of the search before: resumed now
        _header(sweep, engine)
        controller = Controller(sweep, engine, open_study(sweep, folder), results)
        again = controller.adopt(how.retry_failed)  # before own(): live local runs of a killed controller are orphans
        engine.own()
        try:
            return controller.run(again)
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise engine.interrupted() from None


def controller_busy(folder: SweepFolder) -> None:
    """A search's controller job queued or running for this folder: a second controller is refused."""
    job = report_job(folder.path, what="controller job") if folder.record_path.is_file() else None
    if job and job.active and job.job_id != os.environ.get("SLURM_JOB_ID"):  # not the controller job itself
        raise CrackhpcError(
            f"{folder.path}: its search's controller job {job.job_id} is {job.state.lower()}; "
            f"`crackhpc status {folder.path}` follows it, `crackhpc cancel {folder.path}` stops it"
        )


def controller_command(sweep: Sweep, results: Path, argv: list[str]) -> list[str]:
    """`crackhpc sweep` of the search as the controller job runs it: the same sweep file, edits and
    flags, with absolute paths (the job starts in another folder), the trials on Slurm."""
    command = [sys.executable, "-m", "crackhpc.cli", "sweep", str(Path(sweep.path).resolve())]
    return [*command, "--results", str(results.resolve()), "--executor", "slurm", *argv]


def submit_controller(sweep: Sweep, results: Path, argv: list[str], echo: Echo = print) -> str:
    """`--controller slurm`: the search's controller as a small CPU Slurm job (1 CPU, 2 GB, in the
    sweep's partition, account and QOS, after its setup lines), recorded in sweep.json; its job id."""
    assert sweep.search is not None
    cfg = sweep.search
    if sweep.executor in ("local", "debug") or not shutil.which("sbatch"):
        why = f"the sweep's executor is {sweep.executor}" if shutil.which("sbatch") else "sbatch not found"
        raise CrackhpcError(
            f"--controller slurm: its trials go out as Slurm jobs, and {why}: run the search here "
            "(without --controller), or on a Slurm login node with executor slurm or auto"
        )
    optuna_module()
    preflight.require_weights(expand(sweep))
    folder = sweep_folder(sweep, results)
    engine = Engine(folder, None, "slurm", echo)
    controller_busy(folder)
    with engine.locked(FIX_KIND) as record:  # not while a foreground controller runs
        res = sweep.resources
        rounds = math.ceil(cfg.trials / cfg.parallel)
        minutes = cfg.controller_timeout_min or res.timeout_min * rounds + 30
        options = {
            "job-name": f"{res.job_name}-{sweep.name}-search",
            "nodes": 1,
            "ntasks": 1,
            "cpus-per-task": 1,
            "mem": "2G",
            "time": minutes,
            "output": folder.path / f"{CONTROLLER_LOG}.out",
            "error": folder.path / f"{CONTROLLER_LOG}.err",
        }
        command = controller_command(sweep, results, argv)
        what = f"the search of sweep {sweep.name}: its controller (crackhpc sweep --controller slurm)"
        script = atomic.write_text(folder.path / CONTROLLER_SCRIPT, slurm.helper_script(what, options, res, command))
        job_id = slurm.sbatch(script)
        logs = [folder.path / f"{CONTROLLER_LOG.replace('%j', job_id)}.{ext}" for ext in ("out", "err")]
        record.sweep, record.yaml = sweep.name, str(Path(sweep.path).resolve())
        record.controller_job = Job(
            job_id=job_id, executor="slurm", submitted=rundir.now(), stdout=str(logs[0]), stderr=str(logs[1])
        )
        folder.save(record)
    echo(
        f"search {sweep.name}: controller job {job_id} ({minutes} min): it submits the {cfg.trials} trials, "
        f"{cfg.parallel} at once; log {logs[0]}; `crackhpc status {folder.path}` follows it"
    )
    return job_id
