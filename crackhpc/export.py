"""`crackhpc export RUN --format torchscript|onnx|keras`: a trained run as one model file that
plain torch, onnxruntime or keras load without crackhpc, and model.json describing how to feed it.

torchscript and onnx take what `crackhpc predict` feeds its model: uint8 RGB images (N, size,
size, 3), the normalisation inside; out come softmax probabilities (N, classes), of the crack dataset's
two column 1 the crack.
The keras file takes float RGB images in 0..255 after the backbone's preprocess_input, which
model.json names (a Lambda layer would need `safe_mode=False` to load)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from . import atomic
from .data.layout import CLASSES, is_crack
from .errors import CrackhpcError
from .models import preprocessing

FORMATS = {"torchscript": ("torch", "model.pt"), "onnx": ("torch", "model.onnx"), "keras": ("keras", "model.keras")}
MODEL_JSON = "model.json"


def _torch_probabilities(run_dir: Path, spec):
    """The module predict runs (BatchNorm folded), with the softmax: uint8 NHWC → (N, classes), on the CPU."""
    import torch

    from .predict.model import torch_module
    from .worker.torch_models import for_inference

    return torch.nn.Sequential(for_inference(torch_module(run_dir, spec)), torch.nn.Softmax(dim=1)).eval()


def _write_torchscript(run_dir: Path, spec, path: Path) -> None:
    import torch

    size = spec.train.input_size
    buf = io.BytesIO()
    # TorchScript is deprecated in favour of torch.export, whose files need torch >= 2.x on the
    # reader's side as well; it is what the users load with plain torch.jit.load today.
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(
            _torch_probabilities(run_dir, spec), torch.zeros((2, size, size, 3), dtype=torch.uint8)
        )
        torch.jit.save(traced, buf)
    atomic.write_bytes(path, buf.getvalue())


def _write_onnx(run_dir: Path, spec, path: Path) -> None:
    import torch

    try:
        import onnx  # noqa: F401  (the exporter's own import fails with a longer message)
    except ImportError:
        raise CrackhpcError("export --format onnx needs the onnx package: pip install 'crackhpc[onnx]'") from None
    size = spec.train.input_size
    buf = io.BytesIO()
    # The TorchScript-based exporter: the dynamo one needs onnxscript and gains nothing for a plain CNN.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _torch_probabilities(run_dir, spec),
            (torch.zeros((2, size, size, 3), dtype=torch.uint8),),
            buf,
            input_names=["images"],
            output_names=["probabilities"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        )
    atomic.write_bytes(path, buf.getvalue())


def _write_keras(run_dir: Path, spec, path: Path) -> None:
    from .predict.model import keras_model

    model, _ = keras_model(run_dir, spec)
    tmp = path.with_name(f".{path.stem}.tmp.keras")  # keras picks the format by the suffix
    model.save(tmp)
    tmp.replace(path)


def describe(spec, result: dict, fmt: str, filename: str) -> dict:
    """model.json: what a user of the file needs to feed it and read it."""
    from .predict.model import classes_of

    size = spec.train.input_size
    classes = classes_of(spec)
    doc = {
        "format": fmt,
        "file": filename,
        "run_id": spec.run_id,
        "sweep": spec.sweep,
        "framework": spec.train.framework,
        "model": spec.train.model,
        "pretrained": spec.train.pretrained,
        # which epoch's weights (`checkpoints: best`: the best validation epoch's); runs from before
        # the setting kept their last epoch's
        "weights": {"kept": result.get("checkpoint", "last"), "epoch": result.get("checkpoint_epoch")},
        "classes": list(classes),
        **({"crack_class": CLASSES.index("positive")} if is_crack(classes) else {}),
        "input": {
            "shape": ["N", size, size, 3],
            "layout": "NHWC",
            "colour": "RGB",
            "resize": f"each image (or each patch of a large photo: 227 px, the dataset's crops, by default) "
            f"resized to {size}x{size} with bilinear filtering (PIL Image.resize(..., Image.Resampling.BILINEAR)), "
            "EXIF orientation applied",
        },
        "output": {
            "name": "probabilities",
            "shape": ["N", len(classes)],
            "meaning": "softmax over classes"
            + ("; column 1 = crack" if is_crack(classes) else ", in the order of classes"),
        },
        "test_acc": result.get("test_acc"),
        "test_loss": result.get("test_loss"),
        "best_val_acc": result.get("best_val_acc"),
        "n_test": result.get("n_test"),
        "trained": result.get("finished"),
    }
    prep = spec.preprocess or preprocessing(spec.train.framework, spec.train.model)
    if spec.train.framework == "torch":
        doc["input"]["dtype"] = "uint8"
        doc["normalisation"] = {
            "inside_model": True,
            "formula": "(x / 255 - mean) / std, per channel",
            "mean": list(prep["mean"]),
            "std": list(prep["std"]),
        }
    else:
        doc["input"]["dtype"] = "float32 (0..255)"
        doc["normalisation"] = {"inside_model": False, "preprocess": prep["function"]}
        if spec.train.model in ("vgg16", "resnet50"):
            doc["normalisation"]["formula"] = (
                "caffe mode: RGB to BGR, minus the ImageNet mean [103.939, 116.779, 123.68]"
            )
    return doc


def export(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None) -> Path:
    """Write the model file and model.json to out_dir (default RUN/export-FORMAT); returns out_dir."""
    from .predict.model import check_run

    run_dir, spec, result = check_run(run_dir)
    framework, filename = FORMATS[fmt]
    if spec.train.framework != framework:
        choices = [f for f, (fw, _) in FORMATS.items() if fw == spec.train.framework]
        raise CrackhpcError(f"{run_dir}: a {spec.train.framework} run exports as {' or '.join(choices)}, not {fmt}")
    out_dir = Path(out_dir) if out_dir else run_dir / f"export-{fmt}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write = {"torchscript": _write_torchscript, "onnx": _write_onnx, "keras": _write_keras}[fmt]
    try:
        write(run_dir, spec, out_dir / filename)
    except CrackhpcError:
        raise
    except Exception as exc:  # noqa: BLE001  (the tracer's or exporter's own error, of any class: one line)
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        other = [f for f, (fw, _) in FORMATS.items() if fw == framework and f != fmt]
        raise CrackhpcError(
            f"{run_dir}: {spec.train.model} does not export as {fmt} ({type(exc).__name__}: {first[:300]})"
            + (f"; try --format {other[0]}" if other else "")
        ) from None
    atomic.write_json(out_dir / MODEL_JSON, describe(spec, result, fmt, filename))
    return out_dir
