"""Run ids are the names of run folders: a refactoring that changed them would orphan every
completed run (resubmission would train it again). Pinned for the shipped sweep files."""

from pathlib import Path

from crackhpc.config import load_sweep
from crackhpc.grid import expand

JOBS = Path(__file__).resolve().parent.parent / "jobs"
# jobs/smoke.yaml as it was when these ids were pinned; the shipped file may gain runs since.
SMOKE = """\
name: smoke
executor: local
data:
  synthetic: {n: 600, size: 64, seed: 0}
  split: [0.6, 0.2, 0.2]
  split_seed: 0
defaults:
  framework: torch
  model: resnet18
  pretrained: false
  epochs: 6
  batch_size: 32
  lr: 0.001
  input_size: 64
grid:
  seed: [0, 1]
runs:
  - {freeze_backbone: false}
  - {freeze_backbone: true}
resources:
  gpus_per_node: 0
  cpus_per_task: 1
  timeout_min: 20
"""


def ids(path: Path) -> list[str]:
    # data.root is resolved against `base` and hashed: a fixed base keeps the ids machine-independent.
    return [spec.run_id for spec in expand(load_sweep(path, base=Path("/pinned")))]


def test_smoke_run_ids_are_stable(tmp_path):
    (tmp_path / "smoke.yaml").write_text(SMOKE)
    assert ids(tmp_path / "smoke.yaml") == [
        "torch-resnet18-frzn-s0-2a094826",
        "torch-resnet18-frzn-s1-dd85fa08",
        "torch-resnet18-frzy-s0-35a1aef1",
        "torch-resnet18-frzy-s1-c8185a50",
    ]


def test_capstone_run_ids_are_stable():
    assert ids(JOBS / "capstone.yaml") == ["keras-vgg16-babf28d8", "keras-resnet50-1fe56c82", "torch-resnet18-7df8e9c4"]
