"""Real short training runs of the Keras worker on tiny synthetic images (pretrained false, CPU)."""

import contextlib
import csv
import json

import numpy as np
import pytest

# Triton (which torchvision imports) segfaults when it loads after TensorFlow 2.21, and the torch
# tests run in this same pytest process; loaded before TensorFlow, it is fine.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

pytest.importorskip("tensorflow", reason="the Keras worker needs TensorFlow: pip install 'crackhpc[tf]'")

from crackhpc import rundir  # noqa: E402
from crackhpc.config import load_sweep  # noqa: E402
from crackhpc.errors import CrackhpcError, WeightsError  # noqa: E402
from crackhpc.grid import expand  # noqa: E402
from crackhpc.launcher import Submission, submit, write_run_folders  # noqa: E402
from crackhpc.record import SweepFolder
from crackhpc.worker import run  # noqa: E402

from .conftest import assert_events_match_metrics, tiny_sweep  # noqa: E402
from .running import set_epochs, stopped_after_an_epoch  # noqa: E402

pytestmark = pytest.mark.tf

KERAS = {"framework": "keras", "model": "vgg16"}
# Frozen backbone, head trained on cached features. SGD, not Adam: Adam's update ignores the
# gradient's scale, so a wrongly summed (instead of averaged) gradient would go unnoticed.
HEAD_ONLY = {**KERAS, "epochs": 30, "lr": 0.01, "optimizer": "sgd"}
RESULT_KEYS = {
    "epochs_done",
    "best_val_acc",
    "best_epoch",
    "test_loss",
    "test_acc",
    "n_train",
    "n_valid",
    "n_test",
    "skipped_images",
    "wall_time_s",
    "images_per_s",
    "world_size",
    "device",
    "feature_cache",
}


def _run_folders(tmp_path, write_yaml, data_root, defaults, name="tiny", **top):
    sweep = load_sweep(
        write_yaml(tiny_sweep(data_root, name=name, defaults={**KERAS, **defaults}, **top), f"{name}.yaml")
    )
    specs = write_run_folders(expand(sweep), SweepFolder(tmp_path / "results" / sweep.name), data_root, sweep)
    return [tmp_path / "results" / sweep.name / spec.run_id for spec in specs]


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


@pytest.mark.parametrize("model, frozen", [("vgg16", False), ("resnet50", True)])
def test_each_model_trains_to_a_result(tmp_path, write_yaml, tiny_data, model, frozen):
    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {"model": model, "freeze_backbone": frozen})
    metrics = run(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed", result.get("error")
    assert RESULT_KEYS <= set(metrics) and metrics["test_acc"] == result["test_acc"]
    assert result["epochs_done"] == 2 and result["n_train"] == 20 and result["n_test"] == 10
    assert result["feature_cache"] == ("computed" if frozen else "off")
    assert (result["backend"], result["world_size"], result["device"]) == ("single", 1, "cpu")
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == rundir.METRIC_COLUMNS
    wrong = list(csv.DictReader(open(run_dir / "misclassified.csv")))
    assert len(wrong) == round((1 - result["test_acc"]) * result["n_test"])
    assert all(r["predicted"] != r["true"] and 0.5 <= float(r["probability"]) <= 1 for r in wrong)
    assert (run_dir / "checkpoint.npz").is_file()


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, write_yaml, tiny_data):
    """Weights, optimizer state and the per-epoch shuffle all come back: the last epoch and the
    test loss of a run stopped at an epoch's end, as a requeue stops it, and resumed, equal those of
    a run never stopped. (A completed run's checkpoint keeps no optimizer state: only a live one resumes exactly.)"""
    (split,) = _run_folders(tmp_path, write_yaml, tiny_data, {"epochs": 2000, "lr": 0.01}, name="split")
    done = stopped_after_an_epoch(split, run)
    (whole,) = _run_folders(tmp_path, write_yaml, tiny_data, {"epochs": done + 1, "lr": 0.01}, name="whole")
    uninterrupted = run(whole)
    set_epochs(split, done + 1)
    resumed = run(split)
    assert f"resumed from checkpoint.npz after epoch {done}" in (split / "worker.log").read_text()
    assert [r["epoch"] for r in _rows(split)] == [str(e) for e in range(1, done + 2)]
    assert resumed["epochs_done"] == done + 1
    for key in ("train_loss", "val_loss"):
        assert float(_rows(split)[done][key]) == pytest.approx(float(_rows(whole)[done][key]), rel=1e-5)
    assert resumed["test_loss"] == pytest.approx(uninterrupted["test_loss"], rel=1e-5)
    # time before the resume is counted: every epoch's, the first attempt's too
    assert resumed["wall_time_s"] >= sum(float(r["epoch_time_s"]) for r in _rows(split))
    assert_events_match_metrics(split, 0.01)  # the same TensorBoard events as a torch run's, each epoch once


def test_backbone_features_are_computed_once_for_the_sweep(tmp_path, write_yaml, tiny_data):
    first, second = _run_folders(tmp_path, write_yaml, tiny_data, {}, grid={"lr": [0.01, 0.001]})
    assert run(first)["feature_cache"] == "computed"
    assert run(second)["feature_cache"] == "reused"
    cached = list((first.parent / ".cache" / "features").glob("*.npy"))
    assert [p.name.startswith("features-keras-vgg16-") for p in cached] == [True]


def test_pretrained_without_cached_weights_fails_with_where_to_put_them(tmp_path, write_yaml, tiny_data, monkeypatch):
    monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {"pretrained": True})
    with pytest.raises(
        WeightsError, match=r"place vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 .* in .*cache/keras"
    ):
        run(run_dir)
    assert rundir.read_result(run_dir)["status"] == "failed"


def test_pretrained_weights_from_the_offline_cache_are_used(tmp_path, write_yaml, tiny_data, monkeypatch):
    """A stand-in for the published notop file, in its format (Keras 2 HDF5, by layer name):
    the cached features must be that network's on the run's preprocessed images."""
    import dataclasses

    import h5py
    import keras
    import numpy as np
    from keras.src.legacy.saving import legacy_h5_format

    from crackhpc import weights

    keras.utils.set_random_seed(123)
    net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    spec = weights.CATALOG[("keras", "vgg16")]
    path = tmp_path / "cache" / "keras" / spec.filename
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, net)
    monkeypatch.setitem(
        weights.CATALOG, ("keras", "vgg16"), dataclasses.replace(spec, digest=weights.file_digest(path, "md5"))
    )
    monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "cache"))
    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {"pretrained": True, "epochs": 1})
    assert run(run_dir)["feature_cache"] == "computed"
    cache = run_dir.parent / ".cache"
    (features,) = [np.load(p) for p in (cache / "features").glob("*.npy")]
    (images,) = [np.load(p) for p in (cache / "images").glob("*px.npy")]
    expected = net.predict(keras.applications.vgg16.preprocess_input(images[:4].astype("float32")), verbose=0)
    np.testing.assert_allclose(features[:4], expected, rtol=1e-4, atol=1e-4)


def test_horovod_backend_without_horovod_is_one_clear_line(tmp_path, write_yaml, tiny_data):
    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {"backend": "horovod"})
    with pytest.raises(CrackhpcError, match=r"HOROVOD_WITH_TENSORFLOW=1"):
        run(run_dir)
    error = rundir.read_result(run_dir)["error"]
    assert (
        error.startswith(
            "BackendError: backend horovod: horovod is not installed; build it with tests/horovod/build.sh"
        )
        and "\n" not in error
    )


def test_two_worker_tf_distribute_run_matches_one_process(tmp_path, write_yaml, tiny_data):
    """Two local processes under MultiWorkerMirroredStrategy (TF_CONFIG from the job's ranks).
    On identical cached features the two halves of each global batch give the single process's
    mean gradient, so the test loss agrees up to float rounding (tolerance 1e-4)."""
    resources = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 3, "tasks_per_node": 2}
    sweep = load_sweep(write_yaml(tiny_sweep(tiny_data, name="two", defaults=HEAD_ONLY, resources=resources)))
    submit(sweep, tmp_path / "results", Submission("local"), echo=lambda *_: None)
    (run_id,) = json.loads((tmp_path / "results" / "two" / "sweep.json").read_text())["runs"]
    two = rundir.read_result(tmp_path / "results" / "two" / run_id)
    assert two["status"] == "completed", two.get("error")
    assert (two["world_size"], two["backend"], two["params_in_sync"]) == (2, "tf-distribute", True)
    assert len(_rows(tmp_path / "results" / "two" / run_id)) == 30
    (single,) = _run_folders(tmp_path, write_yaml, tiny_data, HEAD_ONLY, name="one")
    one = run(single)
    assert one["world_size"] == 1 and "params_in_sync" not in one
    assert abs(two["test_acc"] - one["test_acc"]) <= 0.1 + 1e-9
    assert two["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)


def test_a_keras_run_never_loads_torch(tmp_path, write_yaml, tiny_data):
    import subprocess
    import sys

    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {"epochs": 1})
    code = (
        "import sys; from crackhpc.worker import run; run(sys.argv[1]); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code, str(run_dir)], check=True, capture_output=True)


def test_best_checkpoint_through_a_requeue_then_predict(tmp_path, write_yaml, tiny_data):
    """`checkpoints: best` in Keras: the live checkpoint has the optimizer's variables, the completed
    one the best validation epoch's weights alone, which predict loads."""
    import numpy as np

    from crackhpc.predict import model

    (run_dir,) = _run_folders(tmp_path, write_yaml, tiny_data, {**HEAD_ONLY, "epochs": 2000, "checkpoints": "best"})
    done = stopped_after_an_epoch(run_dir, run)
    with np.load(run_dir / "checkpoint.npz") as live:
        assert "o0" in live.files and (run_dir / "best.npz").is_file()
    set_epochs(run_dir, done + 2)
    run(run_dir)
    result = rundir.read_result(run_dir)
    best = max(_rows(run_dir), key=lambda r: float(r["val_acc"]))
    assert result["status"] == "completed" and "resumed from checkpoint.npz" in (run_dir / "worker.log").read_text()
    assert (result["checkpoint"], result["checkpoint_epoch"]) == ("best", int(best["epoch"]))
    with np.load(run_dir / "checkpoint.npz") as kept:
        assert not any(k.startswith("o") for k in kept.files)
        assert json.loads(str(kept["state"]))["weights_epoch"] == int(best["epoch"])
    assert not (run_dir / "best.npz").exists()
    assert model.load(run_dir).probabilities(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)


def test_a_dataset_of_three_classes_gets_a_three_class_head(tmp_path, write_yaml):
    """Trained (vgg16, random init, head only) and read back by predict as the worker built it."""
    from crackhpc.data.synth import synthesize_classes
    from crackhpc.predict.model import load

    data = tmp_path / "damage"
    synthesize_classes(data, ["crack", "spalling", "clean"], 36, size=32, seed=0)
    (run_dir,) = _run_folders(tmp_path, write_yaml, data, {})
    result = run(run_dir)
    assert result["classes"] == ["clean", "crack", "spalling"] and len(result["confusion"]) == 3
    assert sum(map(sum, result["confusion"])) == result["n_test"] == 9
    wrong = list(csv.DictReader(open(run_dir / "misclassified.csv")))
    assert {r["true"] for r in wrong} | {r["predicted"] for r in wrong} <= set(result["classes"])
    classifier = load(run_dir)
    scores = classifier.scores(np.zeros((2, 32, 32, 3), np.uint8))
    assert scores.shape == (2, 3) and np.allclose(scores.sum(1), 1, atol=1e-5)


def _with_statistics(net):
    """`net` with BatchNorm statistics and affine maps far from their initial 0/1 (as trained ones are)."""
    import keras

    rng = np.random.default_rng(0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable, (low, high) in zip(
                (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta),
                ((-0.5, 0.5), (0.5, 2.0), (0.5, 1.5), (-0.5, 0.5)),
            ):
                if variable is not None:
                    variable.assign(rng.uniform(low, high, variable.shape))
    return net


def test_batchnorm_is_folded_only_where_it_alone_reads_a_linear_convolution():
    import keras

    from crackhpc.worker.keras_worker import for_inference

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization
    x = keras.Input((16, 16, 3))
    a = bn(name="bn_a", scale=False)(keras.layers.Conv2D(8, 3, use_bias=False, name="a")(x))  # folded, gains a bias
    b = bn(name="bn_b", center=False)(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="b")(a))  # folded
    c = keras.layers.Conv2D(16, 1, activation="relu", name="c")(b)
    c = bn(name="bn_c")(c)  # after the convolution's ReLU: kept
    d = keras.layers.Conv2D(16, 1, name="d")(c)
    e = keras.layers.Add()([bn(name="bn_d")(d), d])  # d is also read by Add: kept
    net = _with_statistics(keras.Model(x, keras.layers.GlobalAveragePooling2D()(e)))
    folded = for_inference(net)
    kept = sorted(layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert kept == ["bn_c", "bn_d"]
    images = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(images, training=False), net(images, training=False), rtol=1e-4, atol=1e-5)


def test_a_convolution_called_twice_or_also_an_output_keeps_its_batchnorm():
    import keras

    from crackhpc.worker.keras_worker import for_inference

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(3, 1, name="shared")
    twice = keras.layers.BatchNormalization(name="bn_twice")(shared(shared(x)))
    seen = keras.layers.Conv2D(3, 1, name="seen")(x)
    exposed = keras.layers.BatchNormalization(name="bn_exposed")(seen)
    net = _with_statistics(keras.Model(x, [twice, seen, exposed]))
    folded = for_inference(net)
    kept = sorted(layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert kept == ["bn_exposed", "bn_twice"]
    images = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    for got, want in zip(folded(images, training=False), net(images, training=False)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_folded_resnet50_gives_the_features_of_the_network_as_built(policy):
    import keras

    from crackhpc.worker.keras_worker import for_inference

    keras.mixed_precision.set_global_policy(policy)
    try:
        net = _with_statistics(
            keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
        )
        folded = for_inference(net)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    images = np.random.default_rng(1).uniform(-100, 100, (4, 32, 32, 3)).astype(np.float32)
    want = np.asarray(net(images, training=False), dtype=np.float32)
    got = np.asarray(folded(images, training=False), dtype=np.float32)
    cosine = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > (0.9999999 if policy == "float32" else 0.999), cosine
