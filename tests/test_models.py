"""Model names (crackhpc.models) checked at load, and each library's offline weights cache
(crackhpc.weights, crackhpc.libraries): real registries, real files in the libraries' own layouts."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml

from crackhpc import weights
from crackhpc.cli import main
from crackhpc.config import load_sweep
from crackhpc.errors import WeightsError
from crackhpc.grid import expand
from crackhpc.preflight import weights_warnings

from .conftest import tiny_sweep
from .localhttp import served  # noqa: F401


def _refused(tmp_path, write_yaml, tiny_data, capsys, defaults, expected: str) -> None:
    """`crackhpc sweep` refuses the sweep: one line naming the key, exit 2, nothing written."""
    path = write_yaml(tiny_sweep(tiny_data, defaults=defaults))
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not results.exists()


@pytest.mark.parametrize(
    "defaults, expected",
    [
        (
            {"model": "timm:convnxt_atto"},
            "defaults.model: unknown timm model 'convnxt_atto'; did you mean timm:convnext_atto",
        ),
        (
            {"model": "torchvision:mobilenet_v3_smal"},
            "unknown torchvision classification model 'mobilenet_v3_smal'; did you mean torchvision:mobilenet_v3_small",
        ),
        (
            {"model": "convnext_atto"},
            "any other model as timm:<name>, torchvision:<name> or python:<module>:<function>",
        ),
        (
            {"model": "timm:convnext_atto.bogus"},
            "timm model convnext_atto has no weights tagged 'bogus' (tags: convnext_atto.d2_in1k)",
        ),
        (
            {"model": "timm:beit3_giant_patch14_224", "pretrained": True},
            "timm model beit3_giant_patch14_224 has no published weights: set pretrained: false",
        ),
        ({"model": "python:no_such_module_22:build"}, "no module 'no_such_module_22' importable here"),
        ({"model": "python:os.path:joins"}, "python:os.path:joins: os.path has no function 'joins'; did you mean join"),
        ({"model": "python:os"}, "a builder is named python:<module>:<function>"),
        ({"framework": "keras", "model": "timm:convnext_atto"}, "timm: models are torch models: set framework: torch"),
    ],
)
def test_bad_model_names_are_one_line_at_load(tmp_path, write_yaml, tiny_data, capsys, defaults, expected):
    _refused(tmp_path, write_yaml, tiny_data, capsys, defaults, expected)


def test_study_names_need_no_framework_and_library_names_default_their_size(tmp_path, write_yaml, tiny_data):
    raw = yaml.safe_load(
        tiny_sweep(tiny_data, grid={"model": ["resnet18", "timm:test_vit", "torchvision:squeezenet1_0"]})
    )
    del raw["defaults"]["input_size"]
    path = write_yaml(yaml.safe_dump(raw))
    specs = {s.train.model: s for s in expand(load_sweep(path))}
    assert {m: s.train.input_size for m, s in specs.items()} == {
        "resnet18": 224,
        "timm:test_vit": 160,  # its pretrained_cfg's
        "torchvision:squeezenet1_0": 224,
    }
    assert specs["timm:test_vit"].preprocess["mean"] == [0.5, 0.5, 0.5]
    assert specs["timm:test_vit"].preprocess["model_default"]["interpolation"] == "bicubic"
    assert specs["torchvision:squeezenet1_0"].preprocess["source"] == "torchvision weights transforms"
    assert all(":" not in s.run_id for s in specs.values())
    # the study's own names, checked in a fresh interpreter: neither torch nor TensorFlow is imported
    code = (
        "import sys; from crackhpc.config import load_sweep; from crackhpc.grid import expand; "
        f"expand(load_sweep({str(write_yaml(tiny_sweep(tiny_data), 'study.yaml'))!r})); "
        "print(sorted(m for m in ('torch', 'tensorflow', 'timm', 'keras') if m in sys.modules))"
    )
    out = os.popen(f"{sys.executable} -c {code!r}").read()
    assert out.strip() == "[]"


def _hub_file(cache, repo: str, data: bytes, filename: str = "model.safetensors"):
    """A file in huggingface_hub's own cache layout: blobs/<sha256>, snapshots/<commit>/<name> → blob, refs/main."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    sha, commit = hashlib.sha256(data).hexdigest(), "c" * 40
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / sha).write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / filename).symlink_to(f"../../blobs/{sha}")


@pytest.mark.parametrize("where", ["HF_HUB_CACHE", "CRACKHPC_CACHE"])
def test_timm_weights_load_offline_from_the_hub_cache(tmp_path, monkeypatch, capsys, where):
    """The hub's own cache, or the shared cache's huggingface/hub (a cluster profile's `cache:`)."""
    import timm
    import torch
    from safetensors.torch import save

    from crackhpc.worker.torch_models import build

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("CRACKHPC_CACHE", raising=False)
    hub = tmp_path / "hub"
    if where == "CRACKHPC_CACHE":
        monkeypatch.setenv("CRACKHPC_CACHE", str(tmp_path / "shared"))
        hub = tmp_path / "shared" / "huggingface" / "hub"
    # missing: one line with the prefetch that fetches it
    with pytest.raises(WeightsError) as missing:
        build("timm:test_vit", True)
    assert "run `crackhpc prefetch --models torch:timm:test_vit` on the login node" in str(missing.value)
    assert str(hub) in str(missing.value) and "\n" not in str(missing.value)
    specs = expand(load_sweep_text(tmp_path, "timm:test_vit"))
    assert any("crackhpc prefetch --models torch:timm:test_vit" in w for w in weights_warnings(specs))

    torch.manual_seed(1)
    written = timm.create_model("test_vit").state_dict()
    _hub_file(hub, "timm/test_vit.r160_in1k", save(written))
    backbone, head, weights_id = build("timm:test_vit", True)
    loaded = backbone[1].state_dict()
    assert set(loaded) == {k for k in written if not k.startswith("head.")}
    assert all(torch.equal(loaded[k], written[k]) for k in loaded)
    assert weights_id.startswith("timm/test_vit.r160_in1k@") and head.in_features == 64
    capsys.readouterr()
    assert main(["models", "timm:test_vit*"]) == 0  # `crackhpc models` sees it cached, under both names
    rows = {tuple(line.split()) for line in capsys.readouterr().out.splitlines()}
    assert {("torch", "timm:test_vit.r160_in1k", "cached"), ("torch", "timm:test_vit", "cached")} <= rows
    assert {
        ("torch", "timm:test_vit2", "missing"),
        ("torch", "timm:test_vit4", "none"),
    } <= rows  # not here; none published


def load_sweep_text(tmp_path, model: str, framework: str = "torch"):
    path = tmp_path / f"{framework}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: pre
        data: {{synthetic: {{n: 8, size: 32}}}}
        defaults: {{framework: {framework}, model: {model}, pretrained: true}}
        """)
    )
    return load_sweep(path)


@pytest.mark.parametrize(
    "framework, model, cache, filename",
    [
        ("torch", "torchvision:mobilenet_v3_small", "TORCH_HOME/hub/checkpoints", "mobilenet_v3_small-047dcff4.pth"),
        ("keras", "MobileNetV3Small", "KERAS_HOME/models", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    ],
)
def test_library_caches_are_searched_and_checked(tmp_path, monkeypatch, framework, model, cache, filename):
    """torchvision's and Keras's files: looked for in the library's own cache folder, and checked
    against the published hash (a stand-in file, as any file but the published one, is refused)."""
    home, _, folder = cache.partition("/")
    monkeypatch.setenv(home, str(tmp_path))
    monkeypatch.delenv("CRACKHPC_CACHE", raising=False)
    with pytest.raises(WeightsError) as missing:
        weights.locate(framework, model)
    line = str(missing.value)
    assert f"place {filename}" in line and f"in {tmp_path / folder}" in line
    assert f"run `crackhpc prefetch --models {framework}:{model}` on the login node" in line
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / filename).write_bytes(b"not the published weights")
    with pytest.raises(WeightsError, match="checksum does not match the published"):
        weights.locate(framework, model)


class _Hub(http.server.BaseHTTPRequestHandler):
    """The two requests huggingface_hub's hf_hub_download makes of a hub: HEAD (commit, ETag, size), then GET."""

    files: dict[str, bytes] = {}

    def _head(self) -> bytes | None:
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):  # noqa: N802  (http.server's naming)
        self._head()

    def do_GET(self):  # noqa: N802
        if (data := self._head()) is not None:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_prefetch_puts_timm_weights_in_the_hub_cache_layout(tmp_path, monkeypatch):
    """`crackhpc prefetch` through huggingface_hub (from a local hub at HF_ENDPOINT), into
    <cache>/huggingface/hub, where the workers' offline lookup finds that very file."""
    import torch
    from safetensors.torch import load_file, save

    written = {"w": torch.arange(6.0).reshape(2, 3)}
    _Hub.files = {"/timm/test_vit.r160_in1k/resolve/main/model.safetensors": save(written)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CRACKHPC_CACHE"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_DISABLE_XET="1")
    cache = tmp_path / "cache"
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "crackhpc.cli",
                "prefetch",
                "--models",
                "torch:timm:test_vit",
                "--cache",
                str(cache),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    assert "downloaded" in out.stdout and str(cache / "huggingface" / "hub") in out.stdout
    monkeypatch.setenv("CRACKHPC_CACHE", str(cache))
    path, wf = weights.locate("torch", "timm:test_vit")
    assert torch.equal(load_file(path)["w"], written["w"]) and wf.digest.startswith("timm/test_vit.r160_in1k@")


@pytest.mark.parametrize("model", ["torch:torchvision:mobilenet_v3_small", "keras:MobileNetV3Small"])
def test_prefetch_of_library_files_checks_their_published_hash(tmp_path, served, capsys, model):
    """torchvision's and Keras's files come by URL (here a mirror, --base-url) and are kept only
    if their hash is the published one: a stand-in file is refused, nothing left in the cache."""
    root, base = served
    wf = weights.file_for(*model.split(":", 1))
    (root / wf.filename).write_bytes(b"a stand-in, not the published weights")
    cache = tmp_path / "cache"
    assert main(["prefetch", "--models", model, "--cache", str(cache), "--base-url", base]) == 1
    err = capsys.readouterr().err
    assert f"error: {wf.filename} from {base}/{wf.filename}: expected " in err and "not kept" in err
    assert not list((cache / model.split(":")[0]).glob("*"))
