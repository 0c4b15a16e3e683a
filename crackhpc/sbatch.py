"""`crackhpc sbatch`: a plain sbatch script per run, for sites or workflows that submit by hand.

The run folders are written as `crackhpc sweep` writes them; each script comes from a template in
slurm_templates/ (string.Template: `${name}` is filled in here, `$$` is a literal `$`):

    torch_srun.sbatch     every run but Horovod ones: `srun python -m crackhpc.worker RUN_FOLDER`
    keras_horovod.sbatch  backend horovod: the same srun step with MPI wire-up (--mpi=pmi2)
    srun_step.sh          shared by both: USR2 (time limit near, or preemption) requeues the job

Every value that reaches the script is validated (crackhpc.config) and shell-quoted here; only
resources.setup lines are written as the sweep gives them, since they are shell by intent.
"""

from __future__ import annotations

import shlex
import sys
import sysconfig
from pathlib import Path
from string import Template

from . import atomic, preflight, rundir, slurm
from .attempts import START_SHELL
from .config import RunSpec, Sweep
from .engine import SBATCH, SUBMIT, Engine, Unit
from .errors import CrackhpcError
from .grid import expand
from .launcher import FIX_KIND, prepare_runs, sweep_folder

# slurm_templates/ of the source checkout (an editable install), else the copy a wheel installs.
TEMPLATE_DIRS = (
    Path(__file__).resolve().parent.parent / "slurm_templates",
    Path(sysconfig.get_path("data")) / "share" / "crackhpc" / "slurm_templates",
)
SIGNAL_LEAD_S = 90  # time left when Slurm warns the job, as for submitit's jobs


def template_name(spec: RunSpec) -> str:
    return "keras_horovod.sbatch" if spec.train.backend == "horovod" else "torch_srun.sbatch"


def sbatch_lines(spec: RunSpec, run_dir: Path) -> list[str]:
    """The #SBATCH lines of one run's script: this script's own, then its resources as for submitit
    (where the sweep's `resources.sbatch` may replace ours, e.g. `signal`)."""
    options = {
        "job-name": f"{spec.resources.job_name}-{spec.sweep}",
        "output": run_dir / f"{rundir.SBATCH_LOG}.out",
        "error": run_dir / f"{rundir.SBATCH_LOG}.err",
        "signal": f"B:USR2@{SIGNAL_LEAD_S}",
        "open-mode": "append",
        **slurm.options(spec.resources),
    }
    return [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in options.items()]


def _template(name: str) -> Template:
    for folder in TEMPLATE_DIRS:
        if (folder / name).is_file():
            return Template((folder / name).read_text())
    raise CrackhpcError(
        f"sbatch template {name} is in neither {' nor '.join(map(str, TEMPLATE_DIRS))}: "
        "reinstall crackhpc (pip install -e . from the checkout)"
    )


def render(spec: RunSpec, run_dir: Path) -> str:
    """The sbatch script of one run folder."""
    res = spec.resources
    srun_step = _template("srun_step.sh").substitute(max_requeues=res.max_requeues, signal_lead_s=SIGNAL_LEAD_S)
    return _template(template_name(spec)).substitute(
        run_id=spec.run_id,
        sweep=spec.sweep,
        srun_step=srun_step.rstrip("\n"),
        start_line=START_SHELL,
        sbatch_options="\n".join(sbatch_lines(spec, run_dir)),
        setup="\n".join(res.setup) or "# (none)",
        python=shlex.quote(sys.executable),
        run_dir=shlex.quote(str(run_dir)),
    )


def write_scripts(
    sweep: Sweep, results: Path, out: Path | None = None, submit: bool = False, retry_failed: bool = False, echo=print
) -> list[Path]:
    """Run folders and a script for each run that needs one (as `crackhpc sweep` would submit);
    with `submit`, the engine sbatches each and records the job ids in sweep.json for status and cancel."""
    if sweep.search is not None:
        raise CrackhpcError(
            f"{sweep.path}: search: a search draws its runs as it goes, which plain scripts cannot: "
            "use `crackhpc sweep` (--controller slurm runs its controller as a Slurm job)"
        )
    folder = sweep_folder(sweep, results)
    specs = expand(sweep)
    engine = Engine(folder, None, SBATCH, echo)
    with engine.locked(FIX_KIND) as record:
        actions = engine.plan([s.run_id for s in specs], retry_failed)
        todo = [s for s in specs if actions[s.run_id] == SUBMIT]
        echo(f"sweep {sweep.name}: {len(specs)} runs, {len(todo)} to write, results in {folder.path}")
        for spec in specs:
            if actions[spec.run_id] != SUBMIT:
                echo(f"  {spec.run_id}  {actions[spec.run_id]}")
        if not todo:
            return []
        preflight.require_weights(todo)
        record.current_runs = [s.run_id for s in specs]
        if submit:
            engine.own()
        scripts = {}
        for spec in prepare_runs(sweep, results, folder, todo, record):
            run_dir = folder.run(spec.run_id)
            scripts[spec.run_id] = out / f"{spec.run_id}.sbatch" if out else run_dir / rundir.SBATCH_SCRIPT
            atomic.write_text(scripts[spec.run_id], render(spec, run_dir))
            if not submit:
                echo(f"  {scripts[spec.run_id]}")
        if submit:  # scripts alone leave no record: the runs are found by their folders until submitted
            folder.save(record)
            engine.run(
                [Unit(s.run_id, scripts[s.run_id], s.resources, f"{s.resources.job_name}-{sweep.name}") for s in todo],
                wait=False,
            )
    return list(scripts.values())
