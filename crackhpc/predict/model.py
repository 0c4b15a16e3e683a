"""Which trained run to use, and that run's classifier rebuilt as it was trained: the same
network, weights, input size, preprocessing, precision and device rules.

The checkpoint holds what the run trained. A frozen backbone with the feature cache trains its
head only, so its checkpoint is the head: the backbone is rebuilt as the worker built it (the
ImageNet file, or the random init from the run's seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import rundir
from ..config import RunSpec
from ..data.layout import CLASSES, is_crack
from ..errors import CrackhpcError
from ..record import RECORD
from ..states import RunState

CRACK = CLASSES.index("positive")
# The patches a prediction will classify are not counted before its model loads: it is always
# probed where the CPU has bf16 units (a few seconds, once per prediction folder).
UNCOUNTED = 2**31
ASCENDING = ("test_loss", "wall_time_s", "compute_hours")  # --metric columns where less is better


def checkpoint_path(run_dir: Path, spec: RunSpec) -> Path:
    return run_dir / rundir.CHECKPOINT[spec.train.framework]


def check_run(run_dir: str | Path) -> tuple[Path, RunSpec, dict]:
    """(run folder, spec, result) of a completed run with its checkpoint; CrackhpcError otherwise."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise CrackhpcError(f"{run_dir}: no such run folder")
    if not (run_dir / rundir.CONFIG).is_file():
        if (run_dir / RECORD).is_file():
            raise CrackhpcError(
                f"{run_dir}: a sweep folder: name one of its run folders (predict also takes --best [--metric NAME])"
            )
        raise CrackhpcError(f"{run_dir}: not a crackhpc run folder (no {rundir.CONFIG})")
    spec = rundir.read_config(run_dir)
    result = rundir.read_result(run_dir)
    status = rundir.state_of(result)
    if status is not RunState.COMPLETED:
        why = f": {result['error']}" if status is RunState.FAILED and result.get("error") else ""
        raise CrackhpcError(
            f"{run_dir}: the run is {status.value}{why}; predict uses completed runs only "
            f"(`crackhpc status {run_dir.parent}` shows where it stands)"
        )
    if not checkpoint_path(run_dir, spec).is_file():
        raise CrackhpcError(f"{run_dir}: no {checkpoint_path(run_dir, spec).name}: {_why_no_weights(result)}")
    return run_dir, spec, result


def _why_no_weights(result: dict) -> str:
    """Why a completed run has no checkpoint, as its result.json tells (crackhpc.clean, common.finish)."""
    retrain = "to predict with it, delete its result.json and rerun it (`crackhpc sweep --retry-failed`)"
    if result.get(rundir.CLEANED):
        return f"`crackhpc clean --checkpoints` removed its trained weights on {result[rundir.CLEANED]}; {retrain}"
    if result.get("checkpoint") == "none":
        return f"it ran with `checkpoints: none`, which keeps no weights; {retrain} with checkpoints: last or best"
    return "the trained weights are missing (deleted, or copied without them)"


def best_run(sweep_dir: str | Path, metric: str = "best_val_acc") -> tuple[Path, str]:
    """The sweep's best completed run with a checkpoint by `metric` (largest, or smallest for a
    loss or a cost), ties broken by test loss; and a line saying which and why."""
    from ..report.tables import summary

    sweep_dir = Path(sweep_dir).resolve()
    if not (sweep_dir / RECORD).is_file():
        raise CrackhpcError(f"{sweep_dir}: not a sweep folder (no {RECORD}); --best needs results/<sweep name>")
    df = summary(sweep_dir)
    if metric not in df.columns or metric in ("run_id", "status"):
        numeric = [c for c in df.columns if df[c].dtype.kind in "fi"]
        raise CrackhpcError(
            f"--metric {metric}: not a column of {sweep_dir / 'summary.csv'}; one of: {', '.join(numeric)}"
        )
    done = df[(df["status"] == RunState.COMPLETED.value) & df[metric].notna()]
    done = done[[checkpoint_path(sweep_dir / r, rundir.read_config(sweep_dir / r)).is_file() for r in done["run_id"]]]
    if done.empty:
        raise CrackhpcError(
            f"{sweep_dir}: no completed run with a checkpoint and a {metric} (`crackhpc status {sweep_dir}`)"
        )
    done = done.sort_values(
        [metric, "test_loss", "run_id"], ascending=[metric in ASCENDING, True, True], na_position="last"
    )
    row = done.iloc[0]
    note = f"best run by {metric}: {row['run_id']} ({metric} {row[metric]:.4g}, test_loss {row['test_loss']:.4g}; {len(done)} completed)"
    return sweep_dir / row["run_id"], note


def classes_of(spec: RunSpec) -> tuple[str, ...]:
    """The run's classes in label order (a run from before they were recorded: the crack dataset's)."""
    return tuple(spec.data.classes) if spec.data.classes else CLASSES


@dataclass
class Classifier:
    """`scores(uint8 NHWC at input_size)` → each class's probability per image (N, classes), float64;
    of the crack dataset's, `probabilities` → P(crack) per image."""

    run_dir: Path
    spec: RunSpec
    device: str
    precision: str
    scores: Callable[[np.ndarray], np.ndarray]
    module: object = None  # the framework's model (torch nn.Module on uint8 NHWC → logits; keras Model)

    @property
    def input_size(self) -> int:
        return self.spec.train.input_size

    @property
    def classes(self) -> tuple[str, ...]:
        return classes_of(self.spec)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if not is_crack(self.classes):
            raise CrackhpcError(f"{self.run_dir}: a model of {', '.join(self.classes)}, not of cracks")
        return self.scores(images)[:, CRACK]


def load(run_dir: str | Path, cache: Path | None = None) -> Classifier:
    """The run's classifier; `cache`: a folder where the precision probe's timings are kept
    (worker/fastpath.py), so the shards of one prediction probe once."""
    run_dir, spec, _ = check_run(run_dir)
    return (_load_torch if spec.train.framework == "torch" else _load_keras)(run_dir, spec, cache)


def torch_module(run_dir: Path, spec: RunSpec):
    """nn.Sequential(Normalize, backbone, head) on uint8 NHWC → logits, with the run's weights, on the CPU."""
    import torch
    from torch import nn

    from ..worker.torch_models import build

    cfg = spec.train
    torch.manual_seed(cfg.seed)  # the worker's order: seed, then build (a random frozen backbone is this init)
    backbone, head, _ = build(cfg.model, cfg.pretrained, num_classes=len(classes_of(spec)), input_size=cfg.input_size)
    trained = head if cfg.freeze_backbone and cfg.feature_cache else nn.Sequential(backbone, head)

    def read(path: Path) -> None:
        trained.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])

    rundir.read_checkpoint(checkpoint_path(run_dir, spec), read, rundir.FIX_RETRAIN.format(run=run_dir))
    normalize, net = backbone
    return nn.Sequential(normalize, net, head).eval()


def _quiet(message: str) -> None:
    pass


def _load_torch(run_dir: Path, spec: RunSpec, cache: Path | None) -> Classifier:
    import torch

    from ..worker import fastpath
    from ..worker.torch_models import for_inference

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    module = for_inference(torch_module(run_dir, spec))
    # the worker's rules for its feature pass (inference), decided for this machine; never compiled:
    # predict's batches change size with the photos
    job = fastpath.Job.of(spec.train, "features", UNCOUNTED)
    choice = fastpath.torch_choice(job, module, device, cache, _quiet)
    module = fastpath.set_memory_format(module.to(device), choice.memory_format)
    autocast = fastpath.torch_autocast(choice)

    @torch.inference_mode()
    def scores(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = module(x).float()
        return torch.softmax(logits, 1).double().cpu().numpy()

    return Classifier(run_dir, spec, str(device), choice.precision, scores, module)


def keras_model(run_dir: Path, spec: RunSpec, policy: str = "float32"):
    """(keras Model on preprocessed float images → softmax, preprocess function) with the run's weights."""
    import keras

    from ..worker.keras_worker import backbone_factory, for_inference, head, pretrained_weights

    cfg = spec.train
    keras.mixed_precision.set_global_policy(policy)
    weights, _ = pretrained_weights(cfg)
    keras.utils.set_random_seed(cfg.seed)  # the worker's order: seed, then the backbone
    make, preprocess = backbone_factory(cfg.model, cfg.input_size)
    size = cfg.input_size
    net = make(weights)
    dense = head(len(classes_of(spec)))
    x = keras.Input((size, size, 3))
    if cfg.freeze_backbone and cfg.feature_cache:
        net = for_inference(net)  # the network the worker computed the features with
        features = keras.Input(net.output_shape[1:])
        trained = keras.Model(features, dense(features))  # the head, trained on the cached features
        model = keras.Model(x, trained(net(x, training=False)))
    else:
        trained = model = keras.Model(x, dense(net(x)))

    def read(path: Path) -> None:
        with np.load(path) as saved:
            weights = sorted((k for k in saved.files if k.startswith("w")), key=lambda k: int(k[1:]))
            trained.set_weights([saved[k] for k in weights])

    rundir.read_checkpoint(checkpoint_path(run_dir, spec), read, rundir.FIX_RETRAIN.format(run=run_dir))
    return model, preprocess


def _load_keras(run_dir: Path, spec: RunSpec, cache: Path | None) -> Classifier:
    import tensorflow as tf

    from ..worker import fastpath
    from ..worker.keras_worker import choose

    device = "gpu:0" if tf.config.list_physical_devices("GPU") else "cpu"
    choice = choose(spec, device, "features", UNCOUNTED, cache, _quiet)
    model, preprocess = keras_model(run_dir, spec, fastpath.keras_policy(choice))
    forward = tf.function(lambda x: model(preprocess(tf.cast(x, tf.float32)), training=False), reduce_retracing=True)

    def scores(images: np.ndarray) -> np.ndarray:
        return np.asarray(forward(tf.constant(images)), dtype=np.float64)

    return Classifier(run_dir, spec, device, choice.precision, scores, model)
