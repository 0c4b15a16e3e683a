"""`crackhpc sbatch`: plain sbatch scripts from slurm_templates/, without a cluster."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crackhpc import procs, rundir
from crackhpc.cli import main
from crackhpc.config import DataConfig, Resources, RunSpec, TrainConfig, load_sweep
from crackhpc.errors import ConfigError, DamagedFileError
from crackhpc.sbatch import render

from .conftest import lock_holder, tiny_sweep

RUN_DIR = "/scratch/my results/s/torch-resnet18-abc"  # a space: must stay one word in the script


def spec(train: dict | None = None, **resources) -> RunSpec:
    return RunSpec(
        run_id="torch-resnet18-abc",
        sweep="s",
        train=TrainConfig(**(train or {})),
        data=DataConfig(root="/data"),
        resources=Resources(**resources),
    )


def sbatch_options(script: str) -> dict[str, str]:
    """The #SBATCH options as sbatch reads them: only above the first command, quotes removed."""
    options = {}
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            key, _, value = line.split(None, 1)[1].partition("=")
            options[key] = shlex.split(value)[0] if value else True
        elif line.strip() and not line.startswith("#"):
            break
    return options


def test_script_requests_the_runs_resources():
    script = render(
        spec(
            nodes=2,
            gpus_per_node=4,
            cpus_per_task=8,
            mem_gb=1.5,
            timeout_min=90,
            partition="gpu",
            account="proj-1",
            qos="normal",
            constraint="a100&ib",
            sbatch={"exclusive": "user"},
        ),
        Path(RUN_DIR),
    )
    assert sbatch_options(script) == {
        "--job-name": "crackhpc-s",
        "--nodes": "2",
        "--ntasks-per-node": "4",
        "--gpus-per-node": "4",
        "--cpus-per-task": "8",
        "--mem": "1536M",
        "--time": "90",
        "--partition": "gpu",
        "--account": "proj-1",
        "--qos": "normal",
        "--constraint": "a100&ib",
        "--output": f"{RUN_DIR}/slurm-%j.out",
        "--error": f"{RUN_DIR}/slurm-%j.err",
        "--signal": "B:USR2@90",
        "--requeue": True,
        "--open-mode": "append",
        "--exclusive": "user",
    }
    assert "#SBATCH --constraint='a100&ib'" in script  # quoted: & is a shell metacharacter
    assert f"run_requeueable srun --unbuffered {shlex.quote(sys.executable)} -m crackhpc.worker '{RUN_DIR}'\n" in script
    assert (
        '[ "${SLURM_RESTART_COUNT:-0}" -lt 3 ]' in script
        and "$$" not in script
        and not re.search(r"\$\{[a-z_]+\}", script)
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell


def test_cpu_run_asks_for_no_gpus_and_optional_options_stay_out():
    options = sbatch_options(render(spec(gpus_per_node=0, tasks_per_node=2, max_requeues=0), Path(RUN_DIR)))
    assert options["--ntasks-per-node"] == "2"
    assert not {"--gpus-per-node", "--mem", "--partition", "--account", "--qos", "--constraint"} & set(options)


def test_setup_lines_are_written_as_given_before_the_srun_step(tmp_path):
    setup = ("module load cuda/12.1", 'source "$HOME/venv/bin/activate"')
    script = render(spec(setup=setup), tmp_path)
    assert '\nmodule load cuda/12.1\nsource "$HOME/venv/bin/activate"\n' in script
    assert script.index("module load") < script.index("run_requeueable srun")
    assert max(
        i for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH")
    ) < script.splitlines().index("module load cuda/12.1")


def test_template_follows_the_backend(tmp_path):
    horovod = render(spec({"framework": "keras", "model": "vgg16", "backend": "horovod"}), tmp_path)
    keras = render(spec({"framework": "keras", "model": "vgg16", "backend": "tf-distribute"}), tmp_path)
    torch = render(spec(), tmp_path)
    assert "srun --unbuffered --mpi=pmi2 " in horovod and "--mpi" not in keras
    assert keras == torch  # same script: the worker picks the framework from config.yaml


def test_an_edited_config_yaml_is_checked_like_the_sweep(tmp_path):
    """A run folder's config.yaml, edited by hand, is validated when read: nothing unchecked reaches a script."""
    rundir.write_config(tmp_path, spec())
    config = tmp_path / rundir.CONFIG
    config.write_text(config.read_text().replace("sbatch: {}", "sbatch: {wrap: reboot}"))
    with pytest.raises(DamagedFileError) as err:
        rundir.read_config(tmp_path)
    assert str(err.value).startswith(f"{config}: resources.sbatch.wrap: not an sbatch option")


@pytest.mark.parametrize(
    "resources, key",
    [
        ({"partition": "debug; reboot"}, "resources.partition"),
        ({"account": "$(reboot)"}, "resources.account"),
        ({"constraint": "a100`reboot`"}, "resources.constraint"),
        ({"sbatch": {"comment": "x y"}}, "resources.sbatch.comment"),
        ({"sbatch": {"mail-user": "a@b;reboot"}}, "resources.sbatch.mail-user"),
    ],
)
def test_shell_metacharacters_are_refused_when_the_sweep_loads(tmp_path, write_yaml, tiny_data, resources, key):
    path = write_yaml(tiny_sweep(tiny_data, resources={"gpus_per_node": 0, **resources}))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and "\n" not in str(err.value)


def test_sbatch_command_writes_run_folders_and_a_script_each(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data, grid={"seed": [0, 1]}))
    assert main(["sbatch", str(path), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    scripts = sorted((tmp_path / "r" / "tiny").glob(f"*/{rundir.SBATCH_SCRIPT}"))
    assert out[0].startswith("sweep tiny: 2 runs, 2 to write") and [line.strip() for line in out[1:]] == [
        str(s) for s in scripts
    ]
    for script in scripts:
        run_dir = script.parent
        assert rundir.read_config(run_dir).data.root == str(tiny_data)
        assert rundir.read_result(run_dir)["status"] == "pending" and rundir.manifest_of(run_dir).is_file()
        assert f"-m crackhpc.worker {run_dir.resolve()}\n" in script.read_text()
    assert not (tmp_path / "r" / "tiny" / "sweep.json").exists()  # nothing submitted, no job ids to keep

    assert main(["sbatch", str(path), "--results", str(tmp_path / "r"), "--out", str(tmp_path / "scripts")]) == 0
    assert sorted(p.name for p in (tmp_path / "scripts").iterdir()) == sorted(
        f"{s.parent.name}.sbatch" for s in scripts
    )


def test_sbatch_command_skips_completed_runs(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data))
    assert main(["sbatch", str(path), "--results", str(tmp_path)]) == 0
    (run_dir,) = [p.parent for p in (tmp_path / "tiny").glob(f"*/{rundir.SBATCH_SCRIPT}")]
    rundir.update_result(run_dir, status="completed")
    assert main(["sbatch", str(path), "--results", str(tmp_path)]) == 0
    assert f"{run_dir.name}  skip: completed" in capsys.readouterr().out


def test_sbatch_takes_the_sweep_folders_lock_and_names_its_holder(tmp_path, write_yaml, tiny_data, capsys):
    path = write_yaml(tiny_sweep(tiny_data))
    argv = ["sbatch", str(path), "--results", str(tmp_path), "--retry-failed"]
    assert main(argv) == 0
    (run_dir,) = [p.parent for p in (tmp_path / "tiny").glob(f"*/{rundir.SBATCH_SCRIPT}")]
    rundir.update_result(run_dir, status="failed")  # a script to write again
    capsys.readouterr()
    with lock_holder(tmp_path / "tiny") as holder:
        since = json.loads((tmp_path / "tiny" / "sweep.json").read_text())["owner"]["since"]
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"error: {tmp_path / 'tiny'}: another `crackhpc sweep` (pid {holder.pid} on {procs.HOST}, since {since}) "
            f"is submitting or running this folder's jobs; wait for it (`crackhpc status {tmp_path / 'tiny'}`) "
            "or stop it first\n"
        )
    assert main(argv) == 0  # released with its holder's process


def test_slurm_dry_run_without_slurm_is_one_line(tmp_path, write_yaml, tiny_data, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    assert main(["sweep", str(write_yaml(tiny_sweep(tiny_data))), "--executor", "slurm", "--dry-run"]) == 2
    assert (
        capsys.readouterr().err
        == "error: executor slurm: srun not found on PATH; run this on a Slurm login node, or use --executor local\n"
    )
