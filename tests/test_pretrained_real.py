"""The study's accuracy class with real ImageNet weights on real crack images, when both are here.

Nothing is downloaded: the weights come from the offline cache (`crackhpc prefetch`) and the
images from ../shared/data (or $CRACKHPC_REAL_DATA). Otherwise the test skips with the reason.
"""
import os
from pathlib import Path

import pytest

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.errors import CrackhpcError
from crackhpc.launcher import submit
from crackhpc.weights import locate

REAL_DATA = Path(os.environ.get("CRACKHPC_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_frozen_pretrained_resnet18_reaches_the_study_accuracy(tmp_path, write_yaml):
    try:
        locate("torch", "resnet18")
    except CrackhpcError as exc:
        pytest.skip(f"real weights absent: {exc}")
    from crackhpc.data.layout import detect

    try:
        detect(REAL_DATA)
    except CrackhpcError as exc:
        pytest.skip(f"real crack images absent: {exc}")
    sweep = load_sweep(write_yaml(f"""\
name: real
data: {{root: {REAL_DATA}, split: [0.75, 0.2, 0.05]}}
defaults: {{framework: torch, model: resnet18, pretrained: true, freeze_backbone: true, epochs: 3}}
resources: {{gpus_per_node: 0, cpus_per_task: 2, timeout_min: 120}}
"""))
    (run_id,) = submit(sweep, tmp_path / "results", "local", echo=lambda *_: None)
    result = rundir.read_result(tmp_path / "results" / "real" / run_id)
    assert result["status"] == "completed" and result["test_acc"] >= 0.99, result
