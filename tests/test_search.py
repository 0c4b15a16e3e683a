"""Search sweeps (crackhpc/search.py): the `search:` block's checks, trials as runs, and the controller
with real Optuna and real workers: ASHA pruning on the local Slurm, a controller killed (SIGKILL) and
resumed, and `--controller slurm`.

Pruning is made deterministic by the data, not by timing: an lr of 1e30 turns a ResNet18 trained end
to end into NaN losses at its first epoch, and Optuna's pruners stop a NaN at the first rung whatever
the other trials did (`min_resource: 1`). The NaN trial plans 40 epochs: it is pruned long before."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import pytest
import yaml

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.errors import ConfigError
from crackhpc.grid import trial_run
from crackhpc.record import SEARCH_DB
from crackhpc.states import RunState

from .conftest import tiny_sweep
from .running import crackhpc, send, stepped_until, training, wait_until

SEARCH = {"sampler": "tpe", "trials": 4, "parallel": 2, "space": {"lr": {"log_uniform": [1.0e-5, 1.0e-2]}}}


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _study(sweep_dir):
    import optuna

    storage = f"sqlite:///{sweep_dir / SEARCH_DB}"
    return optuna.load_study(study_name=sweep_dir.name, storage=storage)


# -- the search: block ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, line",
    [
        ({"sampler": "cmaes"}, "search.sampler: unknown value 'cmaes' (allowed: tpe, random, grid)"),
        ({"space": {}}, "search.space: empty: give at least one setting to search"),
        ({"space": {"lr": {"log_uniform": [0, 0.01]}}}, "search.space.lr.log_uniform: the range must be > 0"),
        ({"space": {"lr": {"log_uniform": [-1.0e-3, 0.01]}}}, "search.space.lr.log_uniform: the range must be > 0"),
        ({"parallel": 0}, "search.parallel: must be >= 1, got 0"),
        ({"space": {"lr": {"uniform": [0.1, 0.01]}}}, "search.space.lr.uniform: give finite low < high"),
        ({"space": {"model": ["resnet19"]}}, "search.space.model: unknown value 'resnet19'"),
        ({"space": {"lr_max": [0.1]}}, "search.space.lr_max: not a setting a search can draw"),
        ({"space": {"lr": {"normal": [0, 1]}}}, "search.space.lr: give a list of values or one range"),
        ({"sampler": "grid"}, "search.space.lr: sampler grid draws from lists of values only"),
        ({"sampler": "grid", "space": {"lr": [0.1, 0.01]}}, "search.trials: 4 trials, but the grid has only 2 points"),
        ({"prune": "hyperband"}, "search.prune: unknown value 'hyperband' (allowed: asha, median, none)"),
        ({"metric": "test_acc"}, "search.metric: unknown value 'test_acc' (allowed: val_acc, val_loss)"),
    ],
)
def test_a_bad_search_is_one_line_naming_the_key(write_yaml, tiny_data, edit, line):
    path = write_yaml(tiny_sweep(tiny_data, search={**SEARCH, **edit}))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}: {line}") and "\n" not in str(err.value)


def test_a_search_with_a_grid_is_refused(write_yaml, tiny_data):
    path = write_yaml(tiny_sweep(tiny_data, search=SEARCH, grid={"seed": [0, 1]}))
    with pytest.raises(ConfigError, match=r"sweep.yaml: search: give either grid: or search:, not both"):
        load_sweep(path)


def test_an_explicit_run_may_not_set_what_the_search_draws(write_yaml, tiny_data):
    path = write_yaml(tiny_sweep(tiny_data, search=SEARCH, runs=[{"model": "vgg16"}, {"lr": 0.1}]))
    with pytest.raises(ConfigError, match=r"runs\[1\].lr: also in search.space: set it in one place"):
        load_sweep(path)


def test_the_search_is_refused_where_it_cannot_run(write_yaml, tiny_data, tmp_path):
    """The debug executor trains inside the controller, and plain sbatch scripts cannot draw runs."""
    from crackhpc.cli import main

    path = write_yaml(tiny_sweep(tiny_data, search=SEARCH))
    results = str(tmp_path / "results")
    assert main(["sweep", str(path), "--executor", "debug", "--results", results]) == 2
    assert main(["sbatch", str(path), "--results", results]) == 2
    assert main(["sweep", str(path), "--controller", "slurm", "--results", results]) == 2  # executor local
    assert main(["sweep", str(write_yaml(tiny_sweep(tiny_data), "grid.yaml")), "--controller", "slurm"]) == 2
    assert not (tmp_path / "results" / "tiny").exists()


def test_a_trial_is_a_run_named_by_its_settings_and_its_number(write_yaml, tiny_data):
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, search=SEARCH, runs=[{}, {"model": "vgg16"}])))
    a, b = trial_run(sweep, {"lr": 0.001, "run": 1}, 3), trial_run(sweep, {"lr": 0.001, "run": 1}, 4)
    assert a.run_id.startswith("torch-vgg16-lr0.001-") and a.run_id.endswith("-t3")
    assert a.run_id[:-3] == b.run_id[:-3] and a.run_id != b.run_id  # the same settings drawn twice: two runs
    assert (
        a.train.lr == 0.001
        and a.varying == ("model", "lr")
        and trial_run(sweep, {"lr": 0.002}, 0).train.model == "resnet18"
    )


# -- the controller, with real Optuna and real workers ------------------------------------------------------


def test_a_controller_killed_mid_search_resumes_without_running_a_trial_twice(tmp_path, tiny_data):
    """SIGKILL while a trial trains: its local worker runs on (an orphan); the same command again
    adopts it, keeps what completed, submits what is left, and ends with `trials` trials, each run
    once. One trial plans 15 epochs; the first controller is stepped until that one has done an
    epoch, and its worker is then held (SIGSTOP) until the second controller says it adopted it, so
    that controller finds it still training however fast the machine trains."""
    search = {"sampler": "grid", "seed": 0, "trials": 3, "parallel": 2, "prune": "none"}
    search["space"] = {"epochs": [1, 2, 15]}
    path = tmp_path / "resume.yaml"
    path.write_text(tiny_sweep(tiny_data, "resume", {"freeze_backbone": False}, search=search))
    args = ("sweep", str(path), "--results", str(tmp_path / "results"))
    sweep_dir = tmp_path / "results" / "resume"

    def results():
        return {p.parent: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}

    def completed():
        return [run for run, r in results().items() if r["status"] == "completed"]

    def long_one_under_way():
        return next(
            (r for r in results().values() if r["status"] == "running" and r["epochs"] == 15 and r.get("epochs_done")),
            None,
        )

    first = crackhpc(*args)
    try:
        long_one, stepped = stepped_until(
            first, lambda: completed() and long_one_under_way(), "a trial completed and the long one training"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # The worker's process group is a session of its own (a local job's), orphaned from the start:
    # its controller's end sends the stopped worker no SIGHUP.
    worker = long_one["process"]["pid"]
    send([p for p in stepped if p.pid != worker], signal.SIGCONT)
    held = threading.Timer(120, lambda: _resume(worker))
    held.start()
    done_before = {run.name: rundir.read_result(run)["started"] for run in completed()}
    again = crackhpc(*args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seen = ""
        for line in again.stdout:
            seen += line
            if line.rstrip().endswith("running: adopted"):
                break
    finally:
        held.cancel()
        _resume(worker)
    out, err = again.communicate(timeout=300)
    out = seen + out
    assert again.returncode == 0, err[-3000:]
    assert "-ep15-" in next(line for line in out.splitlines() if line.endswith("running: adopted"))

    trials = _study(sweep_dir).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2] and {t.state.name for t in trials} == {"COMPLETE"}
    runs = sorted(p.name for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file())
    assert runs == sorted(t.user_attrs["run_id"] for t in trials)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert all(not record["runs"][run].get("history") for run in runs)  # each submitted once
    assert {run: rundir.read_result(sweep_dir / run)["started"] for run in done_before} == done_before
    assert sorted(record["current_runs"]) == runs


def test_cancelling_the_sweep_ends_the_search(tmp_path, tiny_data):
    """`crackhpc cancel` of the whole sweep stops the training trial and the controller, which draws
    no more trials; the same `crackhpc sweep --retry-failed` later resumes the search."""
    search = {"sampler": "random", "seed": 0, "trials": 3, "parallel": 1, "space": {"lr": [0.001, 0.002]}}
    path = tmp_path / "dropped.yaml"
    path.write_text(tiny_sweep(tiny_data, "dropped", {"freeze_backbone": False, "epochs": 30}, search=search))
    sweep_dir = tmp_path / "results" / "dropped"
    controller = crackhpc("sweep", str(path), "--results", str(tmp_path / "results"))
    stepped = []
    try:  # the trial's worker is held from its first epoch until the cancel has asked it to stop
        run, stepped = stepped_until(controller, lambda: training(sweep_dir), "the first trial training")
        send([p for p in stepped if p.pid != run["process"]["pid"]], signal.SIGCONT)
        cancel = crackhpc("cancel", str(sweep_dir))
        wait_until(lambda: rundir.stop_requested(run["run_dir"]), 120, "the cancel's stop request")
        send(stepped, signal.SIGCONT)
        assert cancel.wait(timeout=120) == 0, cancel.communicate()
        out, err = controller.communicate(timeout=120)
    finally:
        send(stepped, signal.SIGCONT)
        controller.kill()
    assert controller.returncode == 1 and "no new trials" in out + err
    trials = _study(sweep_dir).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"]
    assert rundir.read_result(sweep_dir / trials[0].user_attrs["run_id"])["status"] == "cancelled"


@pytest.mark.slurm
def test_asha_prunes_a_trial_of_two_on_slurm(tmp_path, tiny_data, slurm_cluster):
    from crackhpc.report.tables import write_reports

    from .test_slurm_integration import ON_SLURM, cli

    search = {"sampler": "grid", "trials": 2, "parallel": 2, "metric": "val_loss", "prune": "asha", "min_resource": 1}
    search["space"] = {"seed": [0]}
    runs = [
        {"freeze_backbone": True, "lr": 0.001, "epochs": 2},
        {"freeze_backbone": False, "lr": 1.0e30, "epochs": 40},  # NaN at its first epoch
    ]
    path = tmp_path / "asha.yaml"
    sweep = yaml.safe_load(tiny_sweep(tiny_data, "asha", search=search, runs=runs, executor="slurm"))
    path.write_text(yaml.safe_dump({**sweep, "resources": ON_SLURM}))
    out = cli("sweep", path, "--results", tmp_path)
    sweep_dir = tmp_path / "asha"

    record = json.loads((sweep_dir / "sweep.json").read_text())
    jobs = {run: job["job_id"] for run, job in record["runs"].items()}
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs.values()}) == 1  # one job array of both
    results = {run: rundir.read_result(sweep_dir / run) for run in jobs}
    pruned = [run for run, r in results.items() if r["status"] == RunState.PRUNED.value]
    assert len(pruned) == 1 and "lr1e+30" in pruned[0], results
    assert 1 <= results[pruned[0]]["epochs_done"] < 40 and "pruned by the search (asha)" in results[pruned[0]]["error"]
    assert "pruned" in out
    states = {t.user_attrs["run_id"]: t.state.name for t in _study(sweep_dir).get_trials()}
    assert states == {run: "PRUNED" if run in pruned else "COMPLETE" for run in jobs}

    status = cli("status", sweep_dir)
    assert "pruned" in status and f"{results[pruned[0]]['epochs_done']}/40" in status
    df, _ = write_reports(sweep_dir)
    assert df.set_index("run_id").loc[pruned[0], "status"] == "pruned"
    cli("report", sweep_dir)
    report = (sweep_dir / "report.md").read_text()
    assert "## Search" in report and pruned[0] in report.split("## Search")[1]
    assert (sweep_dir / "report" / "search-history.png").is_file()


@pytest.mark.slurm
def test_the_controller_runs_as_a_slurm_job(tmp_path, tiny_data, slurm_cluster):
    from crackhpc.status import report_job

    from .test_slurm_integration import ON_SLURM, cli, until

    search = {
        "sampler": "random",
        "seed": 1,
        "trials": 2,
        "parallel": 1,
        "space": {"lr": {"log_uniform": [1e-4, 1e-2]}},
    }
    path = tmp_path / "remote.yaml"
    sweep = yaml.safe_load(tiny_sweep(tiny_data, "remote", {"epochs": 1}, search=search, executor="slurm"))
    path.write_text(yaml.safe_dump({**sweep, "resources": ON_SLURM}))
    out = cli("sweep", path, "--results", tmp_path, "--controller", "slurm")
    sweep_dir = tmp_path / "remote"
    job_id = json.loads((sweep_dir / "sweep.json").read_text())["controller_job"]["job_id"]
    assert f"controller job {job_id}" in out and f"controller job {job_id}" in cli("status", sweep_dir)

    try:
        ended = until(
            lambda: (j := report_job(sweep_dir, what="controller job")) and not j.active and j.state != "unknown" and j,
            "the controller job",
            300,
        )
    finally:  # the node has 2 CPUs: a controller left running would hold one from the next tests
        cli("cancel", sweep_dir)
    log = (sweep_dir / f"controller-job-{job_id}.err").read_text()
    assert ended.state == "COMPLETED", log[-3000:]
    trials = _study(sweep_dir).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert {record["runs"][t.user_attrs["run_id"]]["executor"] for t in trials} == {"slurm"}
    assert (sweep_dir / "summary.csv").is_file()  # the controller's `crackhpc sweep` wrote the report
