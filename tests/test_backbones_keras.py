"""keras.applications backbones (and a python: builder's) trained for real on tiny synthetic
images (random init, 32 px, 1 epoch): frozen through the feature cache and end to end, then exported."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

# Triton (which torchvision imports) segfaults when it loads after TensorFlow 2.21 (tests/test_worker_keras.py)
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

pytest.importorskip("tensorflow", reason="Keras backbones need TensorFlow: pip install 'crackhpc[tf]'")

from crackhpc import rundir  # noqa: E402
from crackhpc.cli import main  # noqa: E402
from crackhpc.export import export  # noqa: E402
from crackhpc.keras_files import FILES  # noqa: E402
from crackhpc.libraries import _asked_file  # noqa: E402
from crackhpc.predict.model import load  # noqa: E402

from .conftest import tiny_sweep  # noqa: E402

pytestmark = pytest.mark.tf


KERAS_BUILDER = """\
import keras


def pair(pretrained):
    x = keras.Input((None, None, 3))
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(keras.layers.Rescaling(1 / 255)(x)))
    return keras.Model(x, y), 8
"""


def test_keras_applications_frozen_and_trained(tmp_path, tiny_data, monkeypatch):
    (tmp_path / "kerasnets22.py").write_text(KERAS_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    runs = [
        {"model": "python:kerasnets22:pair", "freeze_backbone": False},
        {"model": "MobileNetV3Small", "freeze_backbone": True, "lr": 0.001},
        {"model": "MobileNetV3Small", "freeze_backbone": True, "lr": 0.01},
        {"model": "MobileNetV3Small", "freeze_backbone": False},
        # frozen only: its end-to-end run takes a minute here (TensorFlow tracing its gradient), and
        # MobileNetV3Small's already trains an application end to end
        {"model": "EfficientNetB0", "freeze_backbone": True},
    ]
    path = tmp_path / "keras.yaml"
    path.write_text(tiny_sweep(tiny_data, name="kb", defaults={"framework": "keras", "epochs": 1}, runs=runs))
    assert main(["sweep", str(path), "--results", str(tmp_path / "results"), "--executor", "debug"]) == 0
    sweep = tmp_path / "results" / "kb"
    results = {}
    for run_dir in sorted(p for p in sweep.iterdir() if (p / rundir.CONFIG).is_file()):
        spec = rundir.read_config(run_dir)
        result = rundir.read_result(run_dir)
        assert result["status"] == "completed" and 0 <= result["test_acc"] <= 1
        results[(spec.train.model, spec.train.freeze_backbone, spec.train.lr)] = (run_dir, result["feature_cache"])
        if spec.train.model in ("MobileNetV3Small", "EfficientNetB0"):
            module = {"MobileNetV3Small": "mobilenet_v3", "EfficientNetB0": "efficientnet"}[spec.train.model]
            assert spec.preprocess["function"] == f"keras.applications.{module}.preprocess_input"
    assert sorted(c for (m, frozen, _), (_, c) in results.items() if m == "MobileNetV3Small") == [
        "computed",
        "off",
        "reused",
    ]
    assert results[("EfficientNetB0", True, 0.001)][1] == "computed"
    # the exported file gives predict's probabilities (preprocess_input applied by the caller, as model.json says)
    import keras

    run_dir = results[("MobileNetV3Small", True, 0.01)][0]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = load(run_dir).probabilities(images)
    out = export(run_dir, "keras", tmp_path / "export")
    model = keras.models.load_model(out / "model.keras")
    x = keras.applications.mobilenet_v3.preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(np.asarray(model(x))[:, 1], expected, atol=1e-4)


@pytest.mark.parametrize("model", ["MobileNetV3Small", "EfficientNetB0"])
def test_keras_file_list_is_the_installed_keras_own(model):
    """crackhpc/keras_files.py (read without TensorFlow) says what Keras itself would fetch."""
    assert _asked_file(model) == FILES[model]
