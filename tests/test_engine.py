"""The submission engine (crackhpc.engine) through its front ends, with real processes: job arrays
split at MaxArraySize, one dry-run script and one `sbatch --test-only` per shape, Ctrl-C of a local
predict and of a terminal's whole process group, a cancelled queued run that stays cancelled, a sweep
piped to `head`, hung Slurm commands, and folders of one kind refused as another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.config import Resources
from crackhpc.engine import Engine, Unit
from crackhpc.record import SweepFolder

from .conftest import tiny_sweep
from .running import crackhpc, send, stepped_until, training, wait_until

ENDLESS = {"epochs": 2000}


def units(n: int, **resources) -> list[Unit]:
    res = Resources(gpus_per_node=0, **resources)
    return [Unit(f"r{k}", None, res, "job") for k in range(n)]


def test_units_of_a_shape_go_out_as_one_array_and_shapes_apart(tmp_path):
    engine = Engine(SweepFolder(tmp_path), None, "local")
    arrays = engine.arrays(
        units(3) + units(2, cpus_per_task=2) + [Unit("x", None, Resources(gpus_per_node=0), "other")]
    )
    assert [[u.run_id for u in a] for a in arrays] == [["r0", "r1", "r2"], ["r0", "r1"], ["x"]]


def processes_of(run_dir: Path) -> list[dict]:
    result = rundir.read_result(run_dir)
    return [result["process"]] if result.get("process") else []


def gone(idents: list[dict]) -> bool:
    from crackhpc import procs

    return not any(procs.alive(i) for i in idents)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """A completed 32 px run (one epoch, in this process) to predict with."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "s.yaml").write_text(tiny_sweep(tiny_data, name="trained", defaults={"epochs": 1}))
    assert main(["sweep", str(folder / "s.yaml"), "--executor", "debug", "--results", str(folder)]) == 0
    return next(p for p in (folder / "trained").iterdir() if (p / rundir.CONFIG).is_file())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    assert main(["data", "synth-photo", str(folder), "--n", "6", "--size", "908x908"]) == 0
    return folder


@pytest.mark.parametrize("group", [False, True], ids=["the-command", "the-terminals-process-group"])
def test_ctrl_c_of_a_local_predict_stops_its_shards_and_records_them_cancelled(tmp_path, tiny_run, photos, group):
    out = tmp_path / "maps"
    proc = crackhpc(
        "predict", str(tiny_run), str(photos), "--out", str(out), "--executor", "local", "--per-task", "1",
        start_new_session=group,  # as a shell starts a job: Ctrl-C reaches its whole process group
    )  # fmt: skip
    started, held = stepped_until(proc, lambda: [p for p in out.glob("shard-*") if processes_of(p)], "a shard to start")
    os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT)
    send(held, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Fatal Python error" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert line.startswith("interrupted: 6 shard(s) recorded cancelled; rerun `crackhpc predict")
    shards = sorted(out.glob("shard-*"))
    assert [rundir.read_result(s)["status"] for s in shards] == ["cancelled"] * 6
    wait_until(lambda: gone([i for s in started for i in processes_of(s)]), 30, "the shards to end")


def test_ctrl_c_of_a_terminals_process_group_reaches_only_the_sweeps_line(tmp_path, write_yaml, tiny_data):
    """SIGINT to the whole group, as a terminal sends it: the local jobs hear of it from the sweep
    alone (they run in sessions of their own), so none prints its own KeyboardInterrupt."""
    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS, grid={"seed": [0, 1, 2]}))
    proc = crackhpc("sweep", str(path), "--executor", "local", "--results", str(tmp_path), start_new_session=True)
    run = wait_until(lambda: training(tmp_path / "tiny"), what="an epoch")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.startswith(("interrupted", "error"))] == [
        "interrupted: 3 run(s) recorded cancelled; `crackhpc sweep --retry-failed` resumes them from their checkpoints"
    ]
    results = [rundir.read_result(p) for p in (tmp_path / "tiny").glob("torch-*")]
    assert [r["status"] for r in results] == ["cancelled"] * 3
    assert run["run_dir"] / rundir.RESULT and gone([run["process"]])


def test_a_run_cancelled_while_it_waits_for_a_core_stays_cancelled(tmp_path, write_yaml, tiny_data):
    """4 runs, 2 cores: `crackhpc cancel` of the live sweep cancels all four, and the sweep starts
    neither of the two that were waiting."""
    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS, grid={"seed": [0, 1, 2, 3]}))
    sweep_dir = tmp_path / "tiny"
    proc = crackhpc("sweep", str(path), "--executor", "local", "--results", str(tmp_path))
    wait_until(lambda: training(sweep_dir), what="an epoch")
    assert main(["cancel", str(sweep_dir)]) == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "4 of 4 runs did not complete" in err
    results = [rundir.read_result(p) for p in sweep_dir.glob("torch-*")]
    assert [r["status"] for r in results] == ["cancelled"] * 4
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(record["runs"]) == 2 and sum("process" in r for r in results) == 2  # two never started


def test_a_worker_killed_after_a_stop_request_is_recorded_as_the_request_asked(tmp_path, write_yaml, tiny_data):
    """`crackhpc cancel` can kill a worker before it records anything (still importing torch, say):
    the waiting sweep then records the run cancelled, as the stop request asked, not failed."""
    from crackhpc.states import RunState

    path = write_yaml(tiny_sweep(tiny_data, defaults=ENDLESS))
    proc = crackhpc("sweep", str(path), "--executor", "local", "--results", str(tmp_path))
    run = wait_until(lambda: training(tmp_path / "tiny"), what="an epoch")
    rundir.request_stop(run["run_dir"], RunState.CANCELLED, "crackhpc cancel")
    os.kill(run["process"]["pid"], signal.SIGKILL)  # no handler of the worker's runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    result = rundir.read_result(run["run_dir"])
    assert (result["status"], result["error"]) == ("cancelled", "crackhpc cancel")


def test_folders_of_one_kind_are_refused_as_another(tmp_path, tiny_run, photos, capsys):
    sweep_dir = tiny_run.parent
    record = (sweep_dir / "sweep.json").read_bytes()
    for out in (sweep_dir, tiny_run):
        assert main(["predict", str(tiny_run), str(photos), "--out", str(out), "--executor", "debug"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {out}: a ") and err.endswith("give --out a new folder for the predictions")
        assert "\n" not in err
    assert (sweep_dir / "sweep.json").read_bytes() == record and not (sweep_dir / "predict.json").exists()

    maps = tmp_path / "maps"
    assert (
        main(["predict", str(tiny_run), str(photos / "photo-0001.jpg"), "--out", str(maps), "--executor", "debug"]) == 0
    )
    table = (maps / "summary.csv").read_bytes()
    assert main(["report", str(maps)]) == 2
    assert "a prediction folder of `crackhpc predict`, not a sweep folder" in capsys.readouterr().err
    assert (maps / "summary.csv").read_bytes() == table

    sweep = yaml.safe_load((tiny_run / rundir.CONFIG).read_text())
    path = tmp_path / "maps.yaml"
    path.write_text(tiny_sweep(Path(sweep["data"]["root"]), name="maps"))
    assert main(["sweep", str(path), "--executor", "debug", "--results", str(tmp_path)]) == 2
    assert f"{maps}: a prediction folder of `crackhpc predict`, not a sweep folder" in capsys.readouterr().err
    assert not list(maps.glob("torch-*"))


def test_a_damaged_checkpoint_of_a_completed_run_is_one_line_for_export_and_predict(tmp_path, tiny_run, photos, capsys):
    import shutil

    run = tmp_path / "sweep" / tiny_run.name
    shutil.copytree(tiny_run.parent, run.parent, ignore=shutil.ignore_patterns("submitit"))
    checkpoint = run / rundir.CHECKPOINT["torch"]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    assert main(["export", str(run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {checkpoint}: cannot be read") and err.count("\n") == 1
    assert "the trained weights are lost" in err
    assert main(["predict", str(run), str(photos), "--out", str(tmp_path / "maps"), "--executor", "local"]) == 1
    assert "shard-000: failed: DamagedFileError: " in capsys.readouterr().out


def test_predict_lists_a_symlink_loop_in_errors_csv(tmp_path, tiny_run, photos, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.symlink(photos / "photo-0001.jpg", folder / "good.jpg")
    os.symlink(folder / "b.jpg", folder / "a.jpg")
    os.symlink(folder / "a.jpg", folder / "b.jpg")
    assert main(["predict", str(tiny_run), str(folder), "--out", str(tmp_path / "maps"), "--executor", "debug"]) == 1
    errors = (tmp_path / "maps" / "errors.csv").read_text().splitlines()
    assert errors[1:] == [f"{folder / 'a.jpg'},symlink loop", f"{folder / 'b.jpg'},symlink loop"]


@pytest.mark.parametrize("value", ["-1", "nan", "0", "x"])
def test_a_bad_watch_interval_is_refused_when_the_command_line_is_read(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["status", str(tmp_path), "--watch", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument --watch: {value!r}: give a positive number of seconds" in err


# -- on the local Slurm ------------------------------------------------------------------------------


def slurm_sweep(tmp_path: Path, tiny_data: Path, n: int, name: str = "s") -> Path:
    """`n` runs held an hour in the queue (`begin`): submitted, never run."""
    path = tmp_path / f"{name}.yaml"
    sweep = yaml.safe_load(tiny_sweep(tiny_data, name=name, grid={"seed": list(range(n))}))
    sweep.update(executor="slurm")
    sweep["resources"]["sbatch"] = {"begin": "now+1hour"}
    path.write_text(yaml.safe_dump(sweep))
    return path


def cancel_all(sweep_dir: Path) -> None:
    assert main(["cancel", str(sweep_dir)]) == 0


@pytest.fixture
def logged_sbatch(tmp_path, monkeypatch) -> Path:
    """sbatch on PATH that logs each call, then runs the real one."""
    import shutil

    real, bin_dir, log = shutil.which("sbatch"), tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_a_dry_run_prints_one_script_and_asks_test_only_once_per_shape(
    tmp_path, tiny_data, slurm_cluster, logged_sbatch
):
    """MaxArraySize is 5 on the test cluster: 12 runs of one shape are 3 arrays, and 2 runs of
    another shape a fourth; one script and one answer per shape."""
    path = slurm_sweep(tmp_path, tiny_data, 12)
    sweep = yaml.safe_load(path.read_text())
    sweep["runs"] = [{}, {"lr": 0.01, "resources": {"cpus_per_task": 2}}]
    sweep["grid"]["seed"] = list(range(6))
    path.write_text(yaml.safe_dump(sweep))
    out = subprocess.run(
        [sys.executable, "-m", "crackhpc.cli", "sweep", str(path), "--dry-run", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("#!/bin/bash") == 2 and out.stdout.count("sbatch --test-only: accepted") == 2
    assert "6 runs as 2 job arrays (MaxArraySize), runs 1-5, 6: " in out.stdout
    assert len(logged_sbatch.read_text().splitlines()) == 2


def test_a_sweep_piped_to_head_records_every_job(tmp_path, tiny_data, slurm_cluster):
    """`crackhpc sweep x.yaml | head -1`: the reader goes after one line; the sweep still records
    every job of its arrays (and says nothing more, to nobody)."""
    path = slurm_sweep(tmp_path, tiny_data, 7)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crackhpc.cli", "sweep", str(path), "--results", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().startswith(b"sweep s: 7 runs, 7 to submit")
    proc.stdout.close()  # as `head -1` exits
    _, err = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0 and not err
        record = json.loads((tmp_path / "s" / "sweep.json").read_text())
        assert len(record["runs"]) == 7 and all(job["job_id"] for job in record["runs"].values())
        out = subprocess.run(
            [sys.executable, "-m", "crackhpc.cli", "status", str(tmp_path / "s")], capture_output=True, text=True
        ).stdout
        assert "7 runs: 7 pending" in out and "not submitted" not in out
    finally:
        cancel_all(tmp_path / "s")


HUNG = "sleep 86.5; exec /bin/false"  # a Slurm command that never answers (its sleep is found by its length)


@pytest.fixture
def hung(tmp_path, monkeypatch):
    """A Slurm command on PATH that hangs, and crackhpc told to wait 5 s for any of them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("CRACKHPC_SLURM_TIMEOUT", "5")

    def install(name: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\n{HUNG}\n")
        (bin_dir / name).chmod(0o755)

    return install


def sleeps_left() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "sleep 86.5"], capture_output=True, text=True)
    return out.stdout.split()


def one_line(args: list[str], what: str) -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "crackhpc.cli", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"{what} did not answer in 5 s (set CRACKHPC_SLURM_TIMEOUT to wait longer" in out.stderr
    assert time.monotonic() - t0 < 60 and not sleeps_left()


def test_hung_sbatch_and_scancel_are_one_line_and_leave_no_process(
    tmp_path, tiny_data, tiny_run, photos, slurm_cluster, hung
):
    path = slurm_sweep(tmp_path, tiny_data, 2)
    hung("sbatch")
    one_line(["sweep", str(path), "--results", str(tmp_path)], "sbatch")
    one_line(["sbatch", str(path), "--results", str(tmp_path / "plain"), "--submit"], "`sbatch`")
    one_line(["predict", str(tiny_run), str(photos), "--out", str(tmp_path / "maps"), "--executor", "slurm"], "sbatch")
    record = tmp_path / "s" / "sweep.json"
    assert json.loads(record.read_text())["runs"] == {}  # nothing went out, nothing is claimed to have
    hung("scancel")
    data = json.loads(record.read_text())
    data["runs"] = {r.name: {"job_id": "999999", "executor": "slurm"} for r in (tmp_path / "s").glob("torch-*")}
    record.write_text(json.dumps(data))
    one_line(["cancel", str(tmp_path / "s")], "`scancel`")
