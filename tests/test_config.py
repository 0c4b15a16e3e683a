import pytest

from crackhpc.config import STUDY_SPLIT, TrainConfig, load_sweep
from crackhpc.errors import ConfigError

BASE = """\
name: t
data:
  synthetic: {n: 20, size: 32}
"""


def _error(write_yaml, text: str) -> str:
    path = write_yaml(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_minimal_sweep_gets_the_study_defaults(write_yaml):
    sweep = load_sweep(write_yaml(BASE))
    assert sweep.name == "t" and sweep.data.split == STUDY_SPLIT
    study = TrainConfig()
    assert (study.batch_size, study.optimizer, study.lr, study.freeze_backbone, study.input_size, study.loss) == (
        100,
        "adam",
        1e-3,
        True,
        224,
        "cross_entropy",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "defaults: {modle: resnet18}\n", "defaults.modle: unknown key (allowed: framework, model"),
        (BASE + "defaults: {epochs: three}\n", "defaults.epochs: expected an integer, got 'three'"),
        (BASE + "defaults: {lr: fast}\n", "defaults.lr: expected a number"),
        (BASE + "defaults: {pretrained: 1}\n", "defaults.pretrained: expected true or false"),
        (
            BASE + "defaults: {model: resnet19}\n",
            "defaults.model: unknown value 'resnet19' (allowed: resnet18, resnet50, vgg16, efficientnet_lite0; any other",
        ),
        (
            BASE + "defaults: {framework: keras, model: resnet18}\n",
            "defaults.model: unknown value 'resnet18' (allowed: vgg16, resnet50 or any keras.applications model",
        ),
        (BASE + "defaults: {framework: jax}\n", "defaults.framework: unknown value 'jax'"),
        (BASE + "grid: {lr: []}\n", "grid.lr: empty list"),
        (BASE + "grid: {seeds: [1, 2]}\n", "grid.seeds: unknown key"),
        (BASE + "grid: {model: [resnet18, alexnet]}\n", "model: unknown value 'alexnet'"),
        (BASE + "runs: []\n", "runs: empty list"),
        (BASE + "runs: [{model: vgg16}]\ngrid: {model: [resnet18]}\n", "runs[0].model: also set in grid"),
        (BASE + "defaults: {epochs: 0}\n", "defaults.epochs: must be >= 1"),
        (BASE + "colour: blue\n", "colour: unknown key (allowed: name, description"),
        (BASE + "executor: pbs\n", "executor: unknown value 'pbs' (allowed: auto, local, debug, slurm)"),
        ("data: {synthetic: {n: 4}}\n", "name: required"),
        ("name: t\n", "data: required"),
        ("name: t\ndata: {root: /x, synthetic: {n: 4}}\n", "data: give exactly one of `root`"),
        (BASE.replace("size: 32}", "size: 32}\n  split: [0.5, 0.5, 0.5]"), "data.split: train/valid/test fractions"),
        (BASE + "resources: {partition: 'gpu; rm -rf ~'}\n", "resources.partition: 'gpu; rm -rf ~' has characters"),
        (BASE + "resources: {job_name: '$(reboot)'}\n", "resources.job_name"),
        (BASE + "resources: {sbatch: {output: /tmp/x}}\n", "resources.sbatch.output: not an sbatch option"),
        (BASE + "resources: {sbatch: {mail-user: 'a@b.c && reboot'}}\n", "resources.sbatch.mail-user: value"),
        (BASE + "resources: {gpus_per_node: 4, tasks_per_node: 2}\n", "resources.tasks_per_node: one task per GPU"),
        ("name: t\n data: [\n", "not valid YAML at line"),
        ("- a\n- b\n", "<top>: a sweep file must be a mapping"),
        # values that load but cannot run
        (BASE + "defaults: {epochs: 1, lr: 0.1, epochs: 50}\n", "not valid YAML at line 4: key 'epochs' given twice"),
        (BASE + "defaults: {lr: .inf}\n", "defaults.lr: must be a finite number"),
        (BASE + "defaults: {lr: 0}\n", "defaults.lr: must be > 0.0, got 0"),
        (BASE + "defaults: {lr: -0.001}\n", "defaults.lr: must be > 0.0, got -0.001"),
        (BASE + "grid: {lr: [0.001, 0]}\n", "grid.lr: must be > 0.0, got 0"),
        (BASE + "defaults: {seed: -1}\n", "defaults.seed: must be >= 0, got -1"),
        (BASE + "defaults: {seed: 1.0e+23}\n", "defaults.seed: expected an integer"),
        (BASE + "defaults: {seed: 99999999999}\n", "defaults.seed: must be <= 4294967295"),
        (BASE.replace("name: t", "name: " + "x" * 300), "name: letters, digits, _ . - only, at most 100 characters"),
    ],
)
def test_bad_input_gives_one_line_naming_file_and_key(write_yaml, text, expected):
    assert expected in _error(write_yaml, text)


def test_missing_file_says_where_sweeps_live(tmp_path):
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_sweep(tmp_path / "nope.yaml")


def test_float_written_without_dot_is_accepted(write_yaml):
    sweep = load_sweep(write_yaml(BASE + "defaults: {lr: 1e-4}\n"))  # YAML reads 1e-4 as a string
    from crackhpc.grid import expand

    assert expand(sweep)[0].train.lr == 1e-4


def test_relative_data_root_is_resolved(write_yaml, tmp_path):
    sweep = load_sweep(write_yaml("name: t\ndata: {root: data/concrete}\n"), base=tmp_path)
    assert sweep.data.root == str(tmp_path / "data" / "concrete")


def test_shipped_sweeps_load():
    from pathlib import Path

    from crackhpc.grid import expand

    for path in sorted(Path(__file__).parents[1].glob("jobs/*.yaml")):
        assert expand(load_sweep(path)), path


def test_set_overrides_edit_the_yaml_before_validation(write_yaml):
    from crackhpc.grid import expand

    path = write_yaml(BASE + "defaults: {epochs: 5}\nruns:\n  - {model: resnet18}\n  - {model: vgg16}\n")
    sweep = load_sweep(
        path,
        overrides=[
            "defaults.epochs=2",
            "runs.1.lr=0.01",
            "name=t-small",
            "data.synthetic={n: 40, size: 48}",
            "resources.cpus_per_task=1",
        ],
    )
    assert (sweep.name, sweep.data.synthetic.n, sweep.data.synthetic.size, sweep.resources.cpus_per_task) == (
        "t-small",
        40,
        48,
        1,
    )
    assert [(s.train.model, s.train.epochs, s.train.lr) for s in expand(sweep)] == [
        ("resnet18", 2, 1e-3),
        ("vgg16", 2, 0.01),
    ]
    assert sweep.overrides[0] == "defaults.epochs=2"


def test_set_can_swap_real_data_for_synthetic(write_yaml):
    sweep = load_sweep(
        write_yaml("name: t\ndata: {root: data/concrete}\n"), overrides=["data.root=null", "data.synthetic={n: 40}"]
    )
    assert sweep.data.root is None and sweep.data.synthetic.n == 40


@pytest.mark.parametrize(
    "item, expected",
    [
        ("defaults.epochs", "--set 'defaults.epochs': expected KEY.PATH=VALUE"),
        ("defaults..epochs=2", "expected KEY.PATH=VALUE"),
        ("defaults.epochs=[1", "the value is not valid YAML"),
        ("runs.5.lr=0.1", "runs.5: "),
        ("name.first=x", "name.first: name in "),
    ],
)
def test_bad_set_is_one_line(write_yaml, item, expected):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_yaml(BASE + "runs: [{model: vgg16}]\n"), overrides=[item])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_set_values_are_validated_like_the_file(write_yaml):
    path = write_yaml(BASE)
    with pytest.raises(ConfigError, match=r"\(with --set\): defaults.epochs: expected an integer, got 'two'"):
        load_sweep(path, overrides=["defaults.epochs=two"])
    with pytest.raises(ConfigError, match="defaults.modle: unknown key"):
        load_sweep(path, overrides=["defaults.modle=vgg16"])


def test_a_sweep_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.encode() + "description: b\xe9ton\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte \d+\): save it as UTF-8"):
        load_sweep(path)


def test_absurd_grids_are_refused_before_crossing(write_yaml):
    # 10^15 runs: refused from the list sizes, as crossing them would never end (the time it takes
    # is measured by benchmarks/config_limits.py)
    values = ", ".join(str(i + 1) for i in range(1000))
    keys = ("seed", "epochs", "batch_size", "lr", "input_size")
    path = write_yaml(BASE + "grid: {" + ", ".join(f"{k}: [{values}]" for k in keys) + "}\n")
    with pytest.raises(
        ConfigError,
        match=r"grid: 1,000,000,000,000,000 runs \(1000 x 1000 x 1000 x 1000 x 1000\), more than the limit "
        r"of 1,000: shrink the grid or pass --max-runs 1000000000000000$",
    ):
        load_sweep(path)
    small = write_yaml(BASE + "grid: {seed: [0, 1, 2]}\nruns: [{model: vgg16}, {model: resnet18}]\n", "small.yaml")
    with pytest.raises(ConfigError, match=r"6 runs \(2 x 3\)"):
        load_sweep(small, max_runs=5)
    assert len(load_sweep(small, max_runs=6).entries) == 6


def test_max_runs_on_the_command_line_lifts_the_limit(write_yaml, tmp_path, capsys):
    from crackhpc.cli import main

    seeds = ", ".join(map(str, range(1001)))
    path = write_yaml(BASE + f"grid: {{seed: [{seeds}]}}\n")
    argv = ["sweep", str(path), "--dry-run", "--executor", "local", "--results", str(tmp_path / "results")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: grid: 1,001 runs (1001), more than the limit of 1,000: shrink the grid or pass --max-runs 1001\n"
    )
    assert main([*argv, "--max-runs", "1001"]) == 0
    assert "1001 runs, 1001 to submit" in capsys.readouterr().out


def test_merge_keys_reuse_settings_and_a_key_set_twice_is_still_refused(write_yaml):
    path = write_yaml(
        BASE
        + """x-common: &common {epochs: 2, lr: 0.01, batch_size: 8}
runs:
  - <<: *common
    model: resnet50
  - <<: *common
    lr: 0.1
"""
    )
    sweep = load_sweep(path)
    settings = [(t.model, t.epochs, t.lr, t.batch_size) for _, t, _ in sweep.entries]
    assert settings == [("resnet50", 2, 0.01, 8), ("resnet18", 2, 0.1, 8)]  # its own key wins over the merged one
    twice = BASE + "x-common: &common {epochs: 2}\nruns:\n  - {<<: *common, lr: 0.1, lr: 0.2}\n"
    assert "key 'lr' given twice" in _error(write_yaml, twice)


@pytest.mark.parametrize(
    "synthetic, problem",
    [
        ("{n: 40, classes: [crack, rust]}", "data.synthetic.classes: unknown value 'rust' (allowed: crack, spalling"),
        ("{n: 40, classes: [crack]}", "data.synthetic.classes: give two or more different classes, got ['crack']"),
        ("{n: 3, classes: [crack, stain, clean, holes]}", "data.synthetic: n: 3 images for 4 classes"),
    ],
)
def test_synthetic_classes_are_checked_at_load(write_yaml, synthetic, problem):
    path = write_yaml(f"name: t\ndata: {{synthetic: {synthetic}}}\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert problem in str(info.value) and str(info.value).startswith(f"{path}: ")
