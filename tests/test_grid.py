import pytest

from crackhpc.config import load_sweep
from crackhpc.errors import ConfigError
from crackhpc.grid import expand

SWEEP = """\
name: g
data: {synthetic: {n: 20, size: 32}}
defaults: {pretrained: false}
grid:
  lr: [0.001, 0.0001]
  seed: [0, 1, 2]
runs:
  - {framework: torch, model: resnet18}
  - {framework: keras, model: vgg16, resources: {gpus_per_node: 2}}
"""


def test_runs_are_crossed_with_the_grid(write_yaml):
    specs = expand(load_sweep(write_yaml(SWEEP)))
    assert len(specs) == 12
    assert {(s.train.framework, s.train.model) for s in specs} == {("torch", "resnet18"), ("keras", "vgg16")}
    keras = [s for s in specs if s.train.framework == "keras"]
    assert all(s.resources.gpus_per_node == 2 and s.resources.world_size == 2 for s in keras)


def test_ids_are_readable_and_stable(write_yaml, tmp_path):
    first = [s.run_id for s in expand(load_sweep(write_yaml(SWEEP)))]
    again = [s.run_id for s in expand(load_sweep(write_yaml(SWEEP, name="copy.yaml")))]
    assert first == again and len(set(first)) == 12
    assert first[0].startswith("torch-resnet18-lr0.001-s0-") and len(first[0].rsplit("-", 1)[1]) == 8


def test_id_hash_follows_settings_not_resources(write_yaml):
    base = {s.run_id for s in expand(load_sweep(write_yaml(SWEEP)))}
    longer = {s.run_id for s in expand(load_sweep(write_yaml(SWEEP + "resources: {timeout_min: 999}\n", "b.yaml")))}
    other_data = {s.run_id for s in expand(load_sweep(write_yaml(SWEEP.replace("n: 20", "n: 30"), "c.yaml")))}
    assert base == longer
    assert not base & other_data


def test_duplicate_runs_are_an_error(write_yaml):
    text = "name: d\ndata: {synthetic: {n: 20}}\nruns: [{lr: 0.1}, {lr: 0.1}]\n"
    with pytest.raises(ConfigError, match="two runs resolve to the same settings"):
        expand(load_sweep(write_yaml(text)))
