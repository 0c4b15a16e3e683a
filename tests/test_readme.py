"""Every command of README.md's `bash` blocks runs as written, but for the substitutions of README's
"Tests" section (one table, read from there), in a scratch folder on a machine without Slurm.

A block is known by the heading above it (`Using it`, or `Using it #2` for a second block under the
same heading). Each block must be in BLOCKS; each of its commands then runs, unless README's "Not
run" table lists it with the reason. The commands of all blocks run in README order, in one test and
one scratch folder, so that later commands find what earlier ones made (the tiny sweep that "Using
it" trains is the model of "Using a trained model")."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from crackhpc import rundir
from crackhpc.data.synth import synthesize

from .conftest import EXPECTED_SKIPS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BASH = shutil.which("bash") or "/bin/bash"  # the commands run in bash, their PATH is theirs
HOW = 'README.md\'s "Tests" section'

# The README blocks this test knows, by the heading above them.
BLOCKS = (
    "Set-up: two commands",
    "Using it",
    "The sweep file",
    "Search",
    "Any backbone",
    "TensorBoard and MLflow",
    "TensorBoard and MLflow #2",
    "Using a trained model",
    "Datasets of N classes",
    "Distributed runs and backends",
    "Distributed runs and backends #2",
    "Multi-node",
)


@dataclass(frozen=True)
class Command:
    block: str
    text: str  # as README writes it, continuation lines joined, the comment after it left out


def _strip_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (outside quotes, after a blank)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


SHELLS = ("bash", "sh", "shell", "console")  # the fences whose lines are commands


def readme_blocks(text: str) -> dict[str, list[Command]]:
    """The shell blocks of a README, each as its commands, by block name, in README order."""
    blocks: dict[str, list[Command]] = {}
    heading, fence, lines = "(top)", None, []
    for line in text.splitlines():
        if fence is None:
            if m := re.match(r"^\s*(```+)\s*(\S*)", line):
                fence, lines = (m.group(1), m.group(2)), []
            elif m := re.match(r"^#+\s+(.*)$", line):
                heading = m.group(1).strip()
            continue
        if line.strip() != fence[0]:
            lines.append(line)
            continue
        if fence[1] in SHELLS:
            name, n = heading, 2
            while name in blocks:
                name, n = f"{heading} #{n}", n + 1
            commands, current = [], ""
            for raw in lines:
                piece = _strip_comment(raw)
                current += piece[:-1] + " " if piece.endswith("\\") else piece
                if not piece.endswith("\\"):
                    if current.strip():
                        commands.append(Command(name, " ".join(current.split())))
                    current = ""
            blocks[name] = commands
        fence = None
    return blocks


def _cells(row: str) -> list[str]:
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
    return [c[1:-1] if len(c) > 1 and c[0] == c[-1] == "`" else c for c in cells]


def readme_table(text: str, header: str) -> list[list[str]]:
    """The rows of the README table whose header row is `header`."""
    lines = text.splitlines()
    start = lines.index(header) + 2  # the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


TEXT = README.read_text()
BLOCKS_FOUND = readme_blocks(TEXT)
SUBSTITUTIONS = readme_table(TEXT, "| block | README text | runs as | why |")
NOT_RUN = {(block, command): why for block, command, why in readme_table(TEXT, "| block | command | why not |")}


def substituted(command: Command, values: dict[str, str]) -> str:
    text = command.text
    for block, readme, runs_as, _ in SUBSTITUTIONS:
        if block == command.block:
            text = text.replace(readme, "" if runs_as == "(nothing)" else runs_as)
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def why_not_run(command: Command) -> str | None:
    return NOT_RUN.get((command.block, command.text)) or NOT_RUN.get((command.block, "*"))


def test_every_fenced_block_says_its_language():
    """An untagged block could hold commands this test would not see: bash for commands, text for output."""
    openers = [m.group(1) for m in re.finditer(r"^\s*```+(\S*).*$", TEXT, re.M)][::2]
    assert "" not in openers, (
        "README.md has a fenced block without a language: tag it (bash for commands, text for output)"
    )


def test_every_readme_block_and_command_is_run_or_listed_as_not_run():
    unknown = [name for name in BLOCKS_FOUND if name not in BLOCKS]
    assert not unknown, (
        f"README.md has bash blocks tests/test_readme.py does not know: {unknown} (first command: "
        f"{BLOCKS_FOUND[unknown[0]][0].text if BLOCKS_FOUND[unknown[0]] else '-'}). Every README command must "
        f"run as written: add the block's name to BLOCKS in tests/test_readme.py, and in {HOW} add what "
        "its commands need changed to run on a tiny sweep (the substitution table) or, for a command "
        'that cannot run in a test, a row of the "Not run" table saying why'
    )
    gone = [b for b in BLOCKS if b not in BLOCKS_FOUND] + [k for k in NOT_RUN if k[0] not in BLOCKS_FOUND]
    assert not gone, f"tests/test_readme.py and {HOW} name blocks README.md no longer has: {gone}"
    commands = {(c.block, c.text) for block in BLOCKS_FOUND.values() for c in block}
    commands_text = {text for _, text in commands}
    stale = [k for k in NOT_RUN if k[1] != "*" and k not in commands]
    assert not stale, f"{HOW} lists as not run commands README.md no longer has (or has edited): {stale}"
    unused = [row[:2] for row in SUBSTITUTIONS if not any(row[1] in c.text for c in BLOCKS_FOUND.get(row[0], []))]
    assert not unused, f"{HOW} substitutes README text that its block no longer has: {unused}"
    assert all(why for why in NOT_RUN.values()), f'every row of {HOW}\'s "Not run" table says why'
    assert set(CHECKS) <= commands_text, "CHECKS names a command README.md no longer has"


def test_the_readme_block_parser():
    text = (
        "# A\n```bash\nx --a 'b # c'   # comment\ny \\\n  --z  # too\n\n# full-line comment\n```\n"
        "```yaml\nk: v\n```\n## B\n```bash\np\n```\n```bash\nq\n```\n"
    )
    assert readme_blocks(text) == {
        "A": [Command("A", "x --a 'b # c'"), Command("A", "y --z")],
        "B": [Command("B", "p")],
        "B #2": [Command("B #2", "q")],
    }


@pytest.fixture
def scratch(tmp_path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """(the folder the commands run in, their environment, the values of @name@ in the table)."""
    home = tmp_path
    (home / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "capstone.yaml", home / "jobs")
    smoke = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    smoke["data"]["synthetic"] = {"n": 40, "size": 32, "seed": 0}
    smoke["defaults"].update(epochs=1, input_size=32)
    smoke["grid"]["seed"] = [0]
    for run in smoke["runs"]:
        run.pop("input_size", None)
    (home / "jobs" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    search = yaml.safe_load((ROOT / "jobs" / "search.yaml").read_text())
    search["data"]["synthetic"] = smoke["data"]["synthetic"]
    search["defaults"].update(epochs=2, input_size=32)
    search["search"].update(trials=2, parallel=1)
    (home / "jobs" / "search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    damage = yaml.safe_load((ROOT / "jobs" / "damage.yaml").read_text())  # 4 classes, as tiny
    damage["data"]["synthetic"].update(n=40, size=32)
    damage["defaults"].update(epochs=1, input_size=32)
    damage["grid"]["seed"] = [0]
    for run in damage["runs"]:
        run.pop("input_size", None)
    (home / "jobs" / "damage.yaml").write_text(yaml.safe_dump(damage, sort_keys=False))
    backbones = yaml.safe_load((ROOT / "jobs" / "backbones.yaml").read_text())  # its torch runs, as tiny
    backbones["data"]["synthetic"].update(n=40, size=32)
    backbones["defaults"].update(epochs=1, input_size=32)
    backbones["runs"] = [r for r in backbones["runs"] if r.get("framework", "torch") == "torch"]
    (home / "jobs" / "backbones.yaml").write_text(yaml.safe_dump(backbones, sort_keys=False))
    (home / "clusters.yaml").write_text("here: {partition: debug}\n")
    archive = home / "www" / "concrete.zip"
    synthesize(home / "www" / "images", 20, size=32, seed=1)
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for image in sorted((home / "www" / "images").rglob("*.jpg")):
            zf.write(image, Path("concrete") / image.relative_to(home / "www" / "images"))
    # A machine without Slurm: on PATH only the venv (python, crackhpc) and git.
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "CRACKHPC_CLUSTERS": str(home / "clusters.yaml"),
        "CRACKHPC_CACHE": str(home / "cache"),
    }
    return home, env, {"archive": str(archive)}


def _run_id(home: Path) -> str:
    """The tiny smoke sweep's ResNet18 trained end to end."""
    for run in sorted((home / "results" / "smoke").glob("torch-*")):
        train = rundir.read_config(run).train
        if train.model == "resnet18" and not train.freeze_backbone:
            return run.name
    return "(no trained run yet)"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# What some commands must leave behind, beyond exiting 0 (by README text).
def _capstone_synthetic(home: Path) -> bool:
    rows = _rows(home / "results" / "capstone-synthetic" / "summary.csv")
    assert sorted((r["framework"], r["model"], r["status"]) for r in rows) == [
        ("keras", "resnet50", "completed"),
        ("keras", "vgg16", "completed"),
        ("torch", "resnet18", "completed"),
    ]
    assert all(r["batch_size"] == "100" and r["freeze_backbone"] == "True" for r in rows)  # the study's
    overrides = json.loads((home / "results" / "capstone-synthetic" / "sweep.json").read_text())["overrides"]
    return overrides[0] == "name=capstone-synthetic" and len(overrides) == 9


CHECKS = {
    (
        "crackhpc sweep jobs/capstone.yaml --executor local --set name=capstone-synthetic --set data.root=null "
        "--set 'data.synthetic={n: 200, size: 64}' --set 'data.split=[0.6, 0.2, 0.2]' --set defaults.pretrained=false "
        "--set defaults.input_size=64 --set defaults.epochs=2 --set resources.gpus_per_node=0 "
        "--set resources.cpus_per_task=1"
    ): _capstone_synthetic,
    "crackhpc sweep jobs/capstone.yaml --cluster NAME": lambda home: (
        [r["status"] for r in _rows(home / "results" / "smoke" / "summary.csv")] == ["completed"] * 3
    ),
    "crackhpc report results/capstone": lambda home: (home / "results" / "smoke" / "report.md").is_file(),
    "crackhpc sweep jobs/search.yaml": lambda home: (
        sorted(r["status"] in ("completed", "pruned") for r in _rows(home / "results" / "search" / "summary.csv"))
        == [True, True]
        and (home / "results" / "search" / "search.db").is_file()
    ),
    "crackhpc report results/search": lambda home: (
        "## Search" in (home / "results" / "search" / "report.md").read_text()
    ),
    "crackhpc data fetch data/concrete [--url URL | --archive FILE]": lambda home: (
        len(list((home / "data" / "concrete").rglob("*.jpg"))) == 20
    ),
    "crackhpc predict results/smoke --best photos/ --out maps/ --set resources.cpus_per_task=2": lambda home: (
        len(_rows(home / "maps" / "summary.csv")) == 2
    ),
    "crackhpc report results/backbones": lambda home: (
        sorted(r["model"] for r in _rows(home / "results" / "backbones" / "summary.csv"))
        == ["efficientnet_lite0", "timm:convnext_atto", "timm:vit_tiny_patch16_224", "torchvision:mobilenet_v3_small"]
    ),
    "crackhpc data synth data/damage --classes crack,spalling,stain,clean --n 400 --size 64": lambda home: (
        sorted(p.name for p in (home / "data" / "damage").iterdir()) == ["clean", "crack", "spalling", "stain"]
    ),
    "crackhpc report results/damage": lambda home: (
        "## Per class (test split)" in (home / "results" / "damage" / "report.md").read_text()
        and [r["classes"] for r in _rows(home / "results" / "damage" / "summary.csv")]
        == ["clean crack spalling stain"] * 2
    ),
    "crackhpc predict results/damage --best photos/ --out damage-maps/ --tile 64": lambda home: (
        {"top_class", "patches_spalling"} <= set(_rows(home / "damage-maps" / "summary.csv")[0])
    ),
}


def test_readme_commands_run_as_written(scratch):
    """One test, the blocks in README order: later blocks use what earlier ones made."""
    home, env, values = scratch
    for command in (c for block, commands in BLOCKS_FOUND.items() if block in BLOCKS for c in commands):
        if why := why_not_run(command):
            print(f"not run: {command.text}: {why}")
            continue
        line = substituted(command, {**values, "run_id": _run_id(home)})
        start = time.monotonic()
        out = subprocess.run([BASH, "-c", line], cwd=home, env=env, capture_output=True, text=True, timeout=300)
        print(f"{time.monotonic() - start:6.1f} s  {line}")
        assert out.returncode == 0, (
            f"README block {command.block!r}: `{command.text}`, run as `{line}`, exited {out.returncode}:\n"
            f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
        check = CHECKS.get(command.text)
        assert check is None or check(home), f"README block {command.block!r}: `{line}` did not leave what it should"


def test_readme_lists_exactly_the_skips_ci_allows():
    """README's "Tests" section names the skips a complete set-up still has: the same tests as
    tests/conftest.py's EXPECTED_SKIPS, which CI lets pass, no more and no fewer."""
    section = README.read_text().split("**Skips.**", 1)[1].split("\n\n**", 1)[0]
    assert set(re.findall(r"`(tests/[\w/]+\.py::\w+)`", section)) == set(EXPECTED_SKIPS)
