"""`crackhpc predict` and `export --format keras` with tiny Keras runs (32 px, random init, CPU)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest

with contextlib.suppress(ImportError):  # before TensorFlow: see tests/test_worker_keras.py
    import torchvision  # noqa: F401

pytest.importorskip("tensorflow", reason="Keras runs need TensorFlow: pip install 'crackhpc[tf]'")

from crackhpc import rundir  # noqa: E402
from crackhpc.data.split import read_manifest  # noqa: E402
from crackhpc.predict.inputs import grid, open_photo, patches  # noqa: E402

from .conftest import tiny_sweep  # noqa: E402
from .test_predict import rows  # noqa: E402

pytestmark = pytest.mark.tf


def cli(*args) -> tuple[int, str, str]:
    """The command in its own process: TensorFlow's logging keeps the stream it first wrote to,
    which an in-process call's redirection closes under it."""
    out = subprocess.run([sys.executable, "-m", "crackhpc.cli", *map(str, args)], capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def keras_runs(tmp_path_factory, tiny_data) -> dict:
    """freeze_backbone → run folder: a head on cached features, and a network trained end to end,
    from one sweep (one TensorFlow start-up for both)."""
    folder = tmp_path_factory.mktemp("keras")
    (folder / "k.yaml").write_text(
        tiny_sweep(
            tiny_data,
            "k",
            defaults={"framework": "keras", "model": "vgg16"},
            runs=[{"freeze_backbone": True}, {"freeze_backbone": False}],
        )
    )
    code, _, err = cli("sweep", folder / "k.yaml", "--executor", "debug", "--results", folder / "results")
    assert code == 0, err
    runs = [p for p in (folder / "results" / "k").iterdir() if (p / rundir.CONFIG).is_file()]
    return {rundir.read_config(r).train.freeze_backbone: r for r in runs}


@pytest.mark.parametrize("frozen", [True, False])
def test_keras_run_predicts_at_its_accuracy_and_exports_the_same_probabilities(keras_runs, tmp_path, tiny_data, frozen):
    import keras

    run = keras_runs[frozen]
    test = [i for i in read_manifest(rundir.manifest_of(run)) if i.split == "test"]
    (tmp_path / "test.txt").write_text("".join(f"{tiny_data / i.path}\n" for i in test))
    code, _, err = cli("predict", run, tmp_path / "test.txt", "--out", tmp_path / "pred", "--executor", "debug")
    assert code == 0, err
    summary = rows(tmp_path / "pred" / "summary.csv")
    prob = {r["image"]: float(r["max_probability"]) for r in summary}
    accuracy = np.mean([(prob[str(tiny_data / i.path)] >= 0.5) == (i.label == 1) for i in test])
    assert accuracy == pytest.approx(rundir.read_result(run)["test_acc"])

    code, _, err = cli("export", run, "--format", "keras", "--out", tmp_path / "export")
    assert code == 0, err
    meta = json.loads((tmp_path / "export" / "model.json").read_text())
    assert meta["normalisation"]["preprocess"] == "keras.applications.vgg16.preprocess_input"
    model = keras.saving.load_model(tmp_path / "export" / meta["file"])
    preprocess = keras.applications.vgg16.preprocess_input
    for photo in summary[:4]:
        image = open_photo(photo["image"], input_size=32)
        x = patches(image, grid(image.width, image.height, 227, 227), 32).astype("float32")
        probs = np.asarray(model(preprocess(x), training=False))[:, meta["crack_class"]]
        np.testing.assert_allclose(probs, [float(photo["max_probability"])], atol=1e-5)
