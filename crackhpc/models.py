"""The model names a sweep may give, checked before anything is built or submitted.

    torch:  the study's resnet18 | resnet50 | vgg16 | efficientnet_lite0
            timm:<name>[.<tag>]          any name timm.list_models() knows (a tag picks its weights)
            torchvision:<name>           any classification model of torchvision.models.list_models()
            python:<module>:<function>   your own builder (below)
    keras:  the study's vgg16 | resnet50
            any keras.applications model by its name (EfficientNetB0, MobileNetV3Small, ...)
            python:<module>:<function>

A `python:` builder is called as `function(pretrained=<bool>)` on the compute node and returns
either (backbone, feature_size), a network mapping a normalised image batch to a pooled
feature vector of that size, or a whole classifier whose last layer crackhpc replaces with its
own head. torch builders get float NCHW images normalised with ImageNet's mean and std, Keras
builders float NHWC images in 0..255.

A registry (timm, torchvision, keras.applications) is imported only when a name of it appears:
the study's names need no framework here, so the launcher stays free of torch and TensorFlow.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

STUDY = {"torch": ("resnet18", "resnet50", "vgg16", "efficientnet_lite0"), "keras": ("vgg16", "resnet50")}
PREFIXES = {"torch": ("timm", "torchvision", "python"), "keras": ("python",)}
FORMS = {
    "torch": "timm:<name>, torchvision:<name> or python:<module>:<function>",
    "keras": "a keras.applications name such as EfficientNetB0, or python:<module>:<function>",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)  # TF-Lite's (x - 127.5) / 127.5 on [0, 1] pixels
# crackhpc decodes every image (and predict every patch of a photo) resized whole: the training
# images are crops already, and a centre crop would cut off cracks that run along an edge.
RESIZE = "bilinear, whole image (no centre crop)"
# keras.applications' own input sizes where they are not 224 (their documentation)
_KERAS_SIZES = {
    **dict(zip([f"EfficientNetB{i}" for i in range(8)], (224, 240, 260, 300, 380, 456, 528, 600))),
    **{"EfficientNetV2B1": 240, "EfficientNetV2B2": 260, "EfficientNetV2B3": 300, "EfficientNetV2S": 384},
    **{"EfficientNetV2M": 480, "EfficientNetV2L": 480, "InceptionV3": 299, "InceptionResNetV2": 299},
    **{"Xception": 299, "NASNetLarge": 331},
}
_PYTHON = re.compile(r"^python:([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


class UnknownModel(ValueError):
    """A model name that no registry knows, or weights it does not publish: the message is one line."""


@dataclass(frozen=True)
class Name:
    framework: str
    library: str  # study | timm | torchvision | keras | python
    name: str  # without the prefix: convnext_atto.d2_in1k, EfficientNetB0, pkg.mod:build

    @property
    def module_function(self) -> tuple[str, str]:
        module, _, function = self.name.partition(":")
        return module, function


def _close(word: str, candidates, prefix: str = "") -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(prefix + m for m in matches)}?" if matches else ""


def parse(framework: str, model: str) -> Name:
    """The name's library, from its form alone (no registry is read): UnknownModel if no form fits."""
    if model in STUDY.get(framework, ()):
        return Name(framework, "study", model)
    prefix, sep, rest = model.partition(":")
    if sep and prefix in PREFIXES.get(framework, ()):
        if prefix == "python" and not _PYTHON.match(model):
            raise UnknownModel(f"{model!r}: a builder is named python:<module>:<function>, e.g. python:mynets:build")
        if not rest:
            raise UnknownModel(f"{model!r}: give the model's name after {prefix}:")
        return Name(framework, prefix, rest)
    if framework == "keras" and not sep and model.isidentifier():
        return Name(framework, "keras", model)
    allowed = ", ".join(STUDY.get(framework, ()))
    hint = ""
    if sep and framework == "keras" and prefix in PREFIXES["torch"]:
        hint = f"; {prefix}: models are torch models: set framework: torch"
    raise UnknownModel(
        f"unknown value {model!r} (allowed: {allowed}; any other model as {FORMS.get(framework, '')})"
        + (hint or _close(model, STUDY.get(framework, ())))
    )


@cache
def _timm_names() -> tuple[frozenset[str], frozenset[str]]:
    import timm

    return frozenset(timm.list_models()), frozenset(timm.list_pretrained())


@cache
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


@cache
def keras_table() -> dict[str, tuple[str, str, str, str]] | None:
    """crackhpc/keras_files.py's table where it was read for the installed Keras (or none is
    installed here, as on a login node without TensorFlow); None for another Keras version."""
    from importlib.metadata import PackageNotFoundError, version

    from .keras_files import FILES, KERAS_VERSION

    try:
        return FILES if version("keras") == KERAS_VERSION else None
    except PackageNotFoundError:
        return FILES


@cache
def _keras_names() -> frozenset[str]:
    if table := keras_table():
        return frozenset(table)
    import keras

    return frozenset(n for n in dir(keras.applications) if n[:1].isupper())


def check(framework: str, model: str, pretrained: bool = False) -> Name:
    """The parsed name once its registry knows it (and publishes weights, when `pretrained`);
    UnknownModel with close matches otherwise. Imports the registry's library, for its names only."""
    name = parse(framework, model)
    if name.library == "timm":
        arch, _, tag = name.name.partition(".")
        models, weights = _timm_names()
        if arch not in models:
            raise UnknownModel(f"unknown timm model {arch!r}{_close(arch, models, 'timm:')}")
        tagged = sorted(w for w in weights if w.split(".")[0] == arch)
        if tag and name.name not in weights:
            raise UnknownModel(f"timm model {arch} has no weights tagged {tag!r} (tags: {', '.join(tagged) or 'none'})")
        if pretrained and not tagged:
            raise UnknownModel(f"timm model {arch} has no published weights: set pretrained: false")
    elif name.library == "torchvision":
        names = _torchvision_names()
        if name.name not in names:
            raise UnknownModel(
                f"unknown torchvision classification model {name.name!r}{_close(name.name, names, 'torchvision:')}"
            )
    elif name.library == "keras":
        names = _keras_names()
        if name.name not in names:
            lower = {n.lower(): n for n in names}
            guess = lower.get(name.name.lower())
            near = f"; did you mean {guess}?" if guess else _close(name.name, [*STUDY["keras"], *names])
            raise UnknownModel(
                f"unknown value {name.name!r} (allowed: {', '.join(STUDY['keras'])} or any keras.applications "
                f"model, e.g. EfficientNetB0){near}"
            )
    elif name.library == "python":
        _check_builder(name)
    return name


def _check_builder(name: Name) -> None:
    """The module is importable here and has the function; whether it builds is the worker's to find."""
    module, function = name.module_function
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UnknownModel(
            f"python:{name.name}: no module {module!r} importable here (put its folder on PYTHONPATH, "
            "also in the jobs' environment)"
        )
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # the user's module: any error is theirs to see, in one line
        raise UnknownModel(f"python:{name.name}: importing {module} failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(mod, function, None)):
        functions = [k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")]
        raise UnknownModel(f"python:{name.name}: {module} has no function {function!r}{_close(function, functions)}")


def load_builder(name: Name):
    """The user's builder function (the worker's side of `_check_builder`)."""
    _check_builder(name)
    module, function = name.module_function
    return getattr(importlib.import_module(module), function)


@cache
def default_input_size(framework: str, model: str) -> int:
    """The model's own input size: what its weights were trained at (224 for the study's)."""
    name = parse(framework, model)
    if name.library == "timm":
        return int(_timm_cfg(name.name)["input_size"][-1])
    if name.library == "torchvision":
        return int(_torchvision_transforms(name.name).crop_size[0])
    if name.library == "keras":
        return _KERAS_SIZES.get(name.name, 224)
    return 224


def _timm_cfg(model: str) -> dict:
    import timm
    from timm.data import resolve_data_config

    cfg = timm.models.get_pretrained_cfg(model)
    return resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {}, use_test_size=False)


def _torchvision_transforms(model: str):
    import torchvision

    return torchvision.models.get_model_weights(model).DEFAULT.transforms()


def keras_preprocess_name(model: str) -> str:
    """The keras.applications module whose preprocess_input the model's weights expect."""
    if table := keras_table():
        module = table[model][3]
    else:
        import keras

        module = getattr(keras.applications, model).__module__.rsplit(".", 1)[-1]
    return f"keras.applications.{module}.preprocess_input"


@cache
def preprocessing(framework: str, model: str) -> dict[str, Any]:
    """How images are prepared for the model, as config.yaml records it. torch: (x / 255 - mean) / std
    inside the network; keras: the application's preprocess_input on 0..255 floats. `model_default`
    is what the library itself would do at evaluation, for the record (see RESIZE)."""
    name = parse(framework, model)
    if framework == "keras":
        if name.library == "python":
            return {"function": "none: the builder's network takes 0..255 floats", "resize": RESIZE}
        module = model if name.library == "study" else None
        function = f"keras.applications.{module}.preprocess_input" if module else keras_preprocess_name(name.name)
        return {"function": function, "resize": RESIZE}
    if name.library == "timm":
        cfg = _timm_cfg(name.name)
        return {
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "resize": RESIZE,
            "source": "timm resolve_data_config",
            "model_default": {"interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"]},
        }
    if name.library == "torchvision":
        t = _torchvision_transforms(name.name)
        return {
            "mean": list(t.mean),
            "std": list(t.std),
            "resize": RESIZE,
            "source": "torchvision weights transforms",
            "model_default": {
                "interpolation": t.interpolation.value,
                "resize_size": list(t.resize_size),
                "crop_size": list(t.crop_size),
            },
        }
    if model == "efficientnet_lite0":
        return {"mean": list(LITE0_MEAN), "std": list(LITE0_STD), "resize": RESIZE}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize": RESIZE}


def registered(framework: str, pattern: str = "*") -> list[str]:
    """Every name a sweep may give for `framework` that matches the glob `pattern` (python: builders aside)."""
    from fnmatch import fnmatch

    names = list(STUDY[framework])
    if framework == "torch":
        names += [f"timm:{n}" for n in sorted(_timm_names()[1])] + [f"timm:{n}" for n in sorted(_timm_names()[0])]
        names += [f"torchvision:{n}" for n in sorted(_torchvision_names())]
    else:
        names += sorted(_keras_names())
    return [n for n in dict.fromkeys(names) if fnmatch(n.lower(), pattern.lower())]
