"""Where timm, torchvision and keras.applications publish a model's ImageNet weights, read from
each library's own file list (crackhpc.weights looks for the file offline, crackhpc.prefetch
fetches it): timm's pretrained_cfg (its Hugging Face hub repository, else its URL), torchvision's
weights enum, and the file name and hash a Keras application asks keras.utils.get_file for.
Each library is imported only here, and only for its own names."""

from __future__ import annotations

import re
from functools import cache
from pathlib import PurePosixPath
from urllib.parse import urlparse

from .errors import WeightsError
from .models import UnknownModel, check, keras_table
from .weights import WeightsFile

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.\w+$")  # torch hub's convention: resnet18-f37072fd.pth


def _url_file(framework: str, model: str, url: str) -> WeightsFile:
    filename = PurePosixPath(urlparse(url).path).name
    found = _HASH_IN_NAME.search(filename)
    return WeightsFile(framework, model, filename, url, "sha256", found[1] if found else "")


@cache
def library_file(framework: str, model: str) -> WeightsFile:
    """The published weights file of a timm, torchvision or keras.applications model."""
    try:
        name = check(framework, model, pretrained=True)
    except UnknownModel as exc:
        raise WeightsError(f"{framework} {model}: {exc}") from None
    if name.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(name.name)
        if cfg is not None and cfg.hf_hub_id:
            repo = cfg.hf_hub_id.split("@")[0]
            return WeightsFile(
                framework, model, "model.safetensors", f"https://huggingface.co/{repo}", "sha256", "", hub_repo=repo
            )
        if cfg is not None and cfg.url:
            return _url_file(framework, model, cfg.url)
    elif name.library == "torchvision":
        import torchvision

        return _url_file(framework, model, torchvision.models.get_model_weights(name.name).DEFAULT.url)
    elif name.library == "keras":
        return _keras_file(name.name)
    raise WeightsError(f"no published ImageNet weights known for {framework} {model}")


def weights_status(framework: str, model: str) -> str:
    """`crackhpc models`' column: cached (usable offline here), missing, or none (no published file)."""
    from .weights import file_for, locate

    try:
        file_for(framework, model)
    except WeightsError:
        return "none"
    try:
        locate(framework, model)
    except WeightsError:
        return "missing"
    return "cached"


class _Asked(Exception):
    def __init__(self, fname: str, origin: str, file_hash: str | None):
        super().__init__(fname)
        self.fname, self.origin, self.file_hash = fname, origin, file_hash


def _keras_file(model: str) -> WeightsFile:
    """The no-top file the application would download: from crackhpc/keras_files.py where it was
    read for the installed Keras, else read now (`_asked_file`)."""
    table = keras_table()
    fname, url, digest, _ = table[model] if table else _asked_file(model)
    return WeightsFile("keras", model, fname, url, "sha256" if len(digest) != 32 else "md5", digest)


def _asked_file(model: str) -> tuple[str, str, str, str]:
    """(file name, URL, hash, preprocess module): the application is built (random, no weights
    read) up to its call of keras.utils.get_file, which is stopped there."""
    import warnings

    import keras
    from keras.src.utils import file_utils

    def asked(fname, origin=None, *args, file_hash=None, **kwargs):
        raise _Asked(fname, origin or "", file_hash)

    application = getattr(keras.applications, model)
    original = file_utils.get_file
    file_utils.get_file = asked
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "weights for input shape (224, 224) will be loaded"
            application(include_top=False, weights="imagenet")
    except _Asked as call:
        return call.fname, call.origin, call.file_hash or "", application.__module__.rsplit(".", 1)[-1]
    finally:
        file_utils.get_file = original
        keras.backend.clear_session()
    raise WeightsError(f"keras.applications.{model} asked for no weights file")


def keras_files_module() -> str:
    """crackhpc/keras_files.py for the installed Keras (minutes: every application is built)."""
    import keras

    names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
    rows = "".join(f"    {n!r}: {_asked_file(n)!r},\n" for n in names)
    return f'''"""keras.applications' no-top ImageNet files, as each application asks keras.utils.get_file for
them, and the module whose preprocess_input it takes: the names and files known without importing
TensorFlow (the launcher's checks, `crackhpc models`). crackhpc.libraries reads them from Keras
itself for another Keras version. Written by: python -m crackhpc.libraries > crackhpc/keras_files.py"""

KERAS_VERSION = {keras.__version__!r}
# name: (file name, URL, hash (md5 or sha256, as keras.utils.get_file takes it), preprocess module)
FILES = {{
{rows}}}
'''


if __name__ == "__main__":
    print(keras_files_module(), end="")
