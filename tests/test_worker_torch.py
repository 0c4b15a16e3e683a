"""Real short training runs of the torch worker on tiny synthetic images (pretrained false)."""

import csv
import json
import shutil

import pytest

from crackhpc import rundir
from crackhpc.config import load_sweep
from crackhpc.errors import WeightsError
from crackhpc.grid import expand
from crackhpc.launcher import write_run_folders
from crackhpc.record import SweepFolder
from crackhpc.worker import run

from .conftest import tiny_sweep
from .running import set_epochs, stopped_after_an_epoch


def _run_folder(tmp_path, write_yaml, data_root, defaults=None):
    sweep = load_sweep(write_yaml(tiny_sweep(data_root, defaults=defaults)))
    (spec,) = write_run_folders(expand(sweep), SweepFolder(tmp_path / "results" / sweep.name), data_root, sweep)
    return tmp_path / "results" / sweep.name / spec.run_id


@pytest.mark.parametrize("model, frozen", [("resnet18", False), ("resnet50", True), ("vgg16", True)])
def test_each_model_trains_to_a_result(tmp_path, write_yaml, tiny_data, model, frozen):
    import torch

    run_dir = _run_folder(tmp_path, write_yaml, tiny_data, {"model": model, "freeze_backbone": frozen})
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not the run's cpus_per_task (1): the in-process run must restore it
    try:
        metrics = run(run_dir)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_done"] == 2
    assert result["n_train"] == 20 and result["n_test"] == 10
    assert result["feature_cache"] == ("computed" if frozen else "off")
    assert metrics["test_acc"] == result["test_acc"]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == rundir.METRIC_COLUMNS
    # the accuracy is the share of the test images not in misclassified.csv, each a wrong prediction
    wrong = list(csv.DictReader(open(run_dir / "misclassified.csv")))
    assert result["test_acc"] == pytest.approx(1 - len(wrong) / result["n_test"])
    assert all(r["predicted"] != r["true"] for r in wrong)


def test_frozen_backbone_learns_on_cached_features(tmp_path, write_yaml, tiny_data):
    """The head alone, on cached features, must fit the training set it sees."""
    run_dir = _run_folder(tmp_path, write_yaml, tiny_data, {"epochs": 30, "lr": 0.01})
    run(run_dir)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["train_acc"]) >= 0.8


def test_resume_from_checkpoint(tmp_path, write_yaml, tiny_data):
    run_dir = _run_folder(tmp_path, write_yaml, tiny_data, {"freeze_backbone": False})
    first = run(run_dir)
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("epochs: 2", "epochs: 3"))
    second = run(run_dir)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert second["epochs_done"] == 3
    assert "resumed from checkpoint.pt after epoch 2" in (run_dir / "worker.log").read_text()
    assert second["wall_time_s"] > first["wall_time_s"]  # time before the resume is counted


def test_corrupt_images_are_skipped_and_counted(tmp_path, write_yaml, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "Positive" / "00003.jpg").write_bytes(b"garbage")
    good = (data / "Negative" / "00005.jpg").read_bytes()
    (data / "Negative" / "00005.jpg").write_bytes(good[:40])
    run_dir = _run_folder(tmp_path, write_yaml, data)
    result = run(run_dir)
    assert result["skipped_images"] == 2
    assert result["n_train"] + result["n_valid"] + result["n_test"] == 38


def test_failure_is_recorded_with_its_error(tmp_path, write_yaml, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = _run_folder(tmp_path, write_yaml, data)
    for image in data.rglob("*.jpg"):
        image.write_bytes(b"not an image")
    with pytest.raises(Exception, match="no readable images"):
        run(run_dir)
    result = rundir.read_result(run_dir)
    assert result["status"] == "failed" and result["error"].startswith("DataError: ")
    assert "Traceback" in result["traceback"]


def test_pretrained_without_cached_weights_fails_at_once(tmp_path, write_yaml, tiny_data, monkeypatch):
    monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run_dir = _run_folder(tmp_path, write_yaml, tiny_data, {"pretrained": True})
    with pytest.raises(WeightsError, match=r"place resnet18-f37072fd.pth .* in .*cache/torch"):
        run(run_dir)
    assert rundir.read_result(run_dir)["status"] == "failed"


def test_pretrained_weights_from_the_offline_cache_are_loaded(tmp_path, write_yaml, tiny_data, monkeypatch):
    import dataclasses

    import torch
    import torchvision

    from crackhpc import weights

    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "cache" / "torch"
    cache.mkdir(parents=True)
    path = cache / "resnet18-f37072fd.pth"
    torch.save(state, path)
    spec = weights.CATALOG[("torch", "resnet18")]
    monkeypatch.setitem(
        weights.CATALOG,
        ("torch", "resnet18"),
        dataclasses.replace(spec, digest=weights.file_digest(path, "sha256")[:8]),
    )
    monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "cache"))
    from crackhpc.worker.torch_models import build

    backbone, _, weights_id = build("resnet18", pretrained=True)
    assert weights_id == weights.file_digest(path, "sha256")[:8]
    assert torch.equal(backbone[1].conv1.weight, state["conv1.weight"])
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="checksum does not match"):
        build("resnet18", pretrained=True)


@pytest.mark.parametrize("policy", ["last", "best", "none"])
def test_checkpoint_policy_through_a_requeue_then_predict(tmp_path, write_yaml, tiny_data, policy):
    """Live, the checkpoint has the optimizer (a requeue resumes from it); completed, it keeps what
    `checkpoints` says, which predict then uses."""
    import torch

    from crackhpc.errors import CrackhpcError
    from crackhpc.predict import model

    run_dir = _run_folder(tmp_path, write_yaml, tiny_data, {"epochs": 2000, "lr": 0.01, "checkpoints": policy})
    done = stopped_after_an_epoch(run_dir, run)
    live = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "rng"} <= set(live) and live["epoch"] == done
    assert (run_dir / "best.pt").is_file() == (policy == "best")
    set_epochs(run_dir, done + 2)
    run(run_dir)
    result = rundir.read_result(run_dir)
    assert "resumed from checkpoint.pt after epoch" in (run_dir / "worker.log").read_text()
    assert result["status"] == "completed" and result["epochs_done"] == done + 2
    assert not (run_dir / "best.pt").exists()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    best = max(rows, key=lambda r: float(r["val_acc"]))  # the first of equals, as the worker takes it
    expected = {"last": done + 2, "best": int(best["epoch"]), "none": None}[policy]
    assert (result["checkpoint"], result["checkpoint_epoch"]) == (policy, expected)
    if policy == "none":
        assert not (run_dir / "checkpoint.pt").exists() and result["checkpoint_bytes"] == 0
        with pytest.raises(CrackhpcError, match="it ran with `checkpoints: none`, which keeps no weights"):
            model.load(run_dir)
        return
    kept = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert "optimizer" not in kept and kept["weights_epoch"] == expected
    assert result["checkpoint_bytes"] == (run_dir / "checkpoint.pt").stat().st_size < live_size(live)
    images = torch.zeros((2, 32, 32, 3), dtype=torch.uint8).numpy()
    assert model.load(run_dir).probabilities(images).shape == (2,)


def live_size(state: dict) -> int:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())
