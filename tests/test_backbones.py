"""Backbones of timm, torchvision and python: builders trained for real on tiny synthetic images
(random init, 32 px, 1 epoch): frozen through the feature cache and end to end; then exported and
predicted with. The Keras applications are in tests/test_backbones_keras.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crackhpc import rundir
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.errors import CrackhpcError
from crackhpc.export import export
from crackhpc.grid import expand
from crackhpc.launcher import write_run_folders
from crackhpc.predict.model import load
from crackhpc.record import SweepFolder
from crackhpc.worker import run

from .conftest import tiny_sweep

MODELS = [
    "timm:mobilenetv3_small_050",
    "timm:convnext_atto",
    "timm:test_vit",
    "torchvision:mobilenet_v3_small",
    "torchvision:squeezenet1_0",
]


@pytest.fixture(scope="module")
def trained_backbones(tmp_path_factory, tiny_data):
    """Each model frozen (twice: the second run reuses the first's features) and end to end."""
    tmp = tmp_path_factory.mktemp("backbones")
    runs = [{"freeze_backbone": True, "lr": 0.001}, {"freeze_backbone": True, "lr": 0.01}, {"freeze_backbone": False}]
    path = tmp / "sweep.yaml"
    path.write_text(tiny_sweep(tiny_data, name="bb", defaults={"epochs": 1}, grid={"model": MODELS}, runs=runs))
    assert main(["sweep", str(path), "--results", str(tmp / "results"), "--executor", "debug"]) == 0
    return tmp / "results" / "bb"


def _runs(sweep_dir, model: str) -> dict[str, dict]:
    """run kind (frozen-0.001, frozen-0.01, trained) → result.json, of one model's runs."""
    out = {}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file()):
        cfg = rundir.read_config(run_dir).train
        if cfg.model == model:
            out[f"frozen-{cfg.lr:g}" if cfg.freeze_backbone else "trained"] = {
                **rundir.read_result(run_dir),
                "dir": run_dir,
            }
    return out


@pytest.mark.parametrize("model", MODELS)
def test_each_backbone_trains_frozen_through_the_feature_cache_and_end_to_end(trained_backbones, model):
    runs = _runs(trained_backbones, model)
    assert {k: r["status"] for k, r in runs.items()} == dict.fromkeys(
        ("frozen-0.001", "frozen-0.01", "trained"), "completed"
    )
    # the two frozen runs share one feature pass; the end-to-end run has none
    assert sorted(r["feature_cache"] for r in runs.values()) == ["computed", "off", "reused"]
    assert all(0 <= r["test_acc"] <= 1 and r["n_test"] > 0 for r in runs.values())
    config = rundir.read_config(runs["trained"]["dir"])
    assert config.preprocess["resize"].startswith("bilinear") and len(config.preprocess["mean"]) == 3


@pytest.mark.parametrize("model", ["timm:test_vit", "torchvision:squeezenet1_0"])
def test_export_torchscript_and_onnx_give_predicts_probabilities(trained_backbones, model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    run_dir = _runs(trained_backbones, model)["frozen-0.001"]["dir"]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = load(run_dir).probabilities(images)
    scripted = torch.jit.load(str(export(run_dir, "torchscript", tmp_path / "ts") / "model.pt"))
    np.testing.assert_allclose(scripted(torch.from_numpy(images))[:, 1].detach().numpy(), expected, atol=1e-4)
    session = onnxruntime.InferenceSession(str(export(run_dir, "onnx", tmp_path / "onnx") / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"images": images})[0][:, 1], expected, atol=1e-4)


BUILDERS = """\
import torch
from torch import nn


class Spectrum(nn.Module):
    # complex numbers: neither the ONNX exporter nor crackhpc's head can take them as they are
    def forward(self, x):
        return torch.fft.rfft2(x).abs().mean((2, 3))


def pair(pretrained):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8


def whole(pretrained):
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1000))


def spectrum(pretrained):
    return nn.Sequential(nn.Conv2d(3, 4, 3), Spectrum()), 4


def raises(pretrained):
    raise RuntimeError("no such checkpoint: /nowhere/net.pt")


def wrong(pretrained):
    return 42
"""


def test_python_builders(tmp_path, tiny_data, monkeypatch):
    """A user's builder: (backbone, size) and a whole classifier train; one that raises or returns
    the wrong type fails its run with one line saying so; one that does not export says so."""
    (tmp_path / "mynets22.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    models = [f"python:mynets22:{f}" for f in ("pair", "whole", "spectrum", "raises", "wrong")]
    path = tmp_path / "py.yaml"
    path.write_text(tiny_sweep(tiny_data, name="py", defaults={"epochs": 1}, grid={"model": models}))
    sweep = load_sweep(path)  # at load: the module and its functions are there
    specs = write_run_folders(expand(sweep), SweepFolder(tmp_path / "py"), tiny_data, sweep)
    folders = {spec.train.model.rsplit(":", 1)[1]: tmp_path / "py" / spec.run_id for spec in specs}
    for name in ("pair", "whole", "spectrum"):
        assert run(folders[name])["test_acc"] >= 0
    errors = {}
    for name in ("raises", "wrong"):
        with pytest.raises(CrackhpcError) as failed:
            run(folders[name])
        result = rundir.read_result(folders[name])
        assert result["status"] == "failed" and str(failed.value) in result["error"]
        errors[name] = str(failed.value)
    assert (
        errors["raises"]
        == "python:mynets22:raises: the builder raised RuntimeError: no such checkpoint: /nowhere/net.pt"
    )
    assert errors["wrong"].startswith(
        "python:mynets22:wrong: returned int; a builder returns (torch.nn.Module, feature_size: int)"
    )
    assert rundir.read_result(folders["whole"])["feature_cache"] == "computed"
    with pytest.raises(CrackhpcError) as refused:
        export(folders["spectrum"], "onnx", tmp_path / "onnx")
    assert "\n" not in str(refused.value) and "python:mynets22:spectrum does not export as onnx" in str(refused.value)
    assert "try --format torchscript" in str(refused.value)
