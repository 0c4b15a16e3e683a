"""Keras/TensorFlow worker: the study's Keras VGG16 and ResNet50, any other keras.applications
model, or a python: builder's, in one process or data-parallel across the job's tasks
(tf.distribute.MultiWorkerMirroredStrategy or Horovod).

Same contract, run folder and result keys as the torch worker. Where it departs from the study's
notebook, it is for a reason:
- The backbone ends in global average pooling (512-d for VGG16, 2048-d for ResNet50), not VGG16's
  Flatten (25088-d at 224 px): the head no longer depends on the input size and the feature cache
  of the 40 000 images is 80 MB instead of 4 GB.
- A training loop of its own, not model.fit: Keras 3's fit fails under MultiWorkerMirroredStrategy
  (keras-team/keras#20585), and the loop gives the torch worker's semantics: a permutation per
  epoch from the seed (so a resumed run repeats the uninterrupted one), padded equal shards per
  rank, metrics over every image.
- Horovod through horovod.tensorflow's DistributedGradientTape: horovod.tensorflow.keras wraps
  Keras 2 optimizers only.
- It runs on Keras 3 (TensorFlow >= 2.16) and on Keras 2.15 (TensorFlow 2.15, the newest that
  Horovod 0.28.1 supports, see README): it calls only what both share, e.g. the optimizer's
  apply_gradients rather than Keras 3's apply. tests/test_horovod.py runs it on Keras 2.15.

This module imports TensorFlow; the worker imports it only for Keras runs, and the launcher and
the report never do.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .. import atomic, models, rundir
from ..config import RunSpec
from ..errors import CrackhpcError
from ..weights import has_file, locate
from . import backends, common, fastpath
from .distributed import DistEnv
from .features import FeatureKey

APPLICATIONS = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50}
AUTOTUNE = tf.data.AUTOTUNE


def head(num_classes: int = 2):
    """The classifier on the pooled features: softmax kept float32 under a bf16 policy."""
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32")


def backbone_factory(model: str, size: int) -> tuple[Callable[..., keras.Model], Callable]:
    """(make(weights) → a network from images to pooled features, its preprocess_input). `weights`:
    a weights file's path or None (random); for a python: builder, whether it is pretrained."""
    name = models.parse("keras", model)
    if name.library == "python":
        return (lambda weights: _python_backbone(name, bool(weights), size)), tf.identity
    application = APPLICATIONS[model] if name.library == "study" else getattr(keras.applications, name.name)
    preprocess = sys.modules[application.__module__].preprocess_input

    def make(weights):
        return application(include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")

    return make, preprocess


def _python_backbone(name: models.Name, pretrained: bool, size: int) -> keras.Model:
    label = f"python:{name.name}"
    try:
        made = models.load_builder(name)(pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001  (the user's code: whatever it raises is one line of the run's error)
        raise CrackhpcError(f"{label}: the builder raised {type(exc).__name__}: {exc}") from None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], keras.Model) and isinstance(made[1], int):
        net = made[0]
    elif isinstance(made, keras.Model):
        net = keras.Model(made.inputs, made.layers[-2].output)  # the whole classifier less its last layer
    else:
        raise CrackhpcError(
            f"{label}: returned {type(made).__name__}; a builder returns (keras.Model, feature_size: int) "
            "or a whole keras.Model classifier"
        )
    if len(net.output_shape) != 2:
        raise CrackhpcError(f"{label}: gives {net.output_shape} per batch, not a feature vector (batch, features)")
    return net


def _foldable(net: keras.Model) -> dict[str, keras.layers.Layer]:
    """{convolution's name: the BatchNormalization that alone reads its output}, for convolutions
    with no activation of their own that give channels last. Read from the calls in `net`'s own
    graph (Keras 3): a layer called twice, or a convolution whose output is also read elsewhere or
    is one of the network's outputs, is left alone."""
    calls: dict[str, int] = {}
    readers: dict[str, int] = {}
    inputs: dict[str, list] = {}
    for node in (node for nodes in net._nodes_by_depth.values() for node in nodes):
        name = node.operation.name
        calls[name] = calls.get(name, 0) + 1
        inputs[name] = list(node.input_tensors)
        for tensor in node.input_tensors:
            source = tensor._keras_history.operation.name
            readers[source] = readers.get(source, 0) + 1
    for tensor in tf.nest.flatten(net.outputs):
        source = tensor._keras_history.operation.name
        readers[source] = readers.get(source, 0) + 1
    pairs = {}
    for norm in net.layers:
        if (
            type(norm) is not keras.layers.BatchNormalization
            or calls.get(norm.name) != 1
            or len(inputs[norm.name]) != 1
        ):
            continue
        conv = inputs[norm.name][0]._keras_history.operation
        if (
            isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            and calls.get(conv.name) == 1
            and readers[conv.name] == 1
            and conv.get_config()["activation"] == "linear"
            and conv.data_format == "channels_last"
            and norm.axis in (-1, len(inputs[norm.name][0].shape) - 1)
        ):
            pairs[conv.name] = norm
    return pairs


def for_inference(net: keras.Model) -> keras.Model:
    """`net` for inference with each BatchNormalization after a convolution folded into it. In
    inference BatchNorm is a fixed affine map, and under mixed_bfloat16 Keras computes it in
    float32 (a cast of every activation there and back): folded, Keras ResNet50's bf16 feature
    pass ran 2.9x as fast here. The folded network is made of Keras's own layers only, so that
    an exported model loads without crackhpc. Runs as it is: a Sequential or subclassed network
    (Keras clones those without the graph), and any network on Keras 2 (Horovod's), whose
    clone_model cannot leave a layer out."""
    if (
        isinstance(net, keras.Sequential)
        or not hasattr(net, "_nodes_by_depth")  # subclassed: no graph to read
        or "call_function" not in inspect.signature(keras.models.clone_model).parameters
    ):
        return net
    pairs = _foldable(net)
    folded = {norm.name for norm in pairs.values()}

    def clone(layer):
        if layer.name in folded:
            return layer  # never called below
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        return args[0] if layer.name in folded else layer(*args, **kwargs)

    try:
        out = keras.models.clone_model(net, clone_function=clone, call_function=call)
    except ValueError:  # a Functional subclass whose constructor Keras cannot call
        return net
    for layer in net.layers:
        if layer.name in folded or not layer.weights:
            continue
        weights = layer.get_weights()
        norm = pairs.get(layer.name)
        if norm is not None:
            mean, var = norm.moving_mean.numpy(), norm.moving_variance.numpy()
            gamma = norm.gamma.numpy() if norm.scale else 1.0
            beta = norm.beta.numpy() if norm.center else 0.0
            scale = gamma / np.sqrt(var + norm.epsilon)
            kernel = weights[0]  # out channels last; a depthwise kernel's are (in, multiplier)
            kernel = kernel * scale.reshape(kernel.shape[2:] if isinstance(layer, keras.layers.DepthwiseConv2D) else -1)
            bias = weights[1] if len(weights) > 1 else np.zeros_like(mean)
            weights = [kernel, (bias - mean) * scale + beta]
        out.get_layer(layer.name).set_weights(weights)
    return out


class _Single:
    name = backends.SINGLE
    loss_divisor = 1

    def scope(self):
        return contextlib.nullcontext()

    def run(self, step, args):
        return step(*args)

    def gradient(self, tape, loss, variables):
        return tape.gradient(loss, variables)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def start(self, variables) -> None:
        pass


class _TFDistribute(_Single):
    name = "tf-distribute"

    def __init__(self, env: DistEnv):
        # the ranks' TF servers listen on the job's port + rank: the meeting is on the next one
        backends.meet(self.name, env, env.master_port + env.world_size)
        os.environ["TF_CONFIG"] = env.tf_config()
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # The Keras optimizer sums the replicas' gradients; each replica's mean loss is scaled so the sum is the mean.
        self.loss_divisor = self.strategy.num_replicas_in_sync
        self._sum = tf.function(
            lambda v: self.strategy.reduce("SUM", self.strategy.run(tf.identity, (v,)), axis=None),
            reduce_retracing=True,
        )

    def scope(self):
        return self.strategy.scope()

    def run(self, step, args):
        return self.strategy.experimental_local_results(self.strategy.run(step, args))[0]

    def all_sum(self, values):
        return self._sum(tf.constant(values)).numpy()


class _Horovod(_Single):
    name = "horovod"

    def __init__(self, hvd):
        self.hvd = hvd

    def gradient(self, tape, loss, variables):
        return self.hvd.DistributedGradientTape(tape).gradient(loss, variables)  # averaged over ranks

    def all_sum(self, values):
        return self.hvd.allreduce(tf.constant(values), op=self.hvd.Sum).numpy()

    def start(self, variables) -> None:
        self.hvd.broadcast_variables(variables, root_rank=0)


def _configure(env: DistEnv, cpus: int) -> str:
    """One GPU per task and the task's CPU count; returns the device's name."""
    gpus = tf.config.list_physical_devices("GPU")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
        if gpus:
            tf.config.set_visible_devices(gpus[env.local_rank % len(gpus)], "GPU")
    except RuntimeError:
        pass  # TensorFlow already ran in this process (tests, a notebook): it keeps its settings
    return f"gpu:{env.local_rank % len(gpus)}" if gpus else "cpu"


def _inference(model):
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def choose(spec: RunSpec, device: str, phase: str, images: int, cache_dir: Path | None, log) -> fastpath.Choice:
    """fp32 or bf16 for this run's network on this device (fastpath), timed on a random-init copy
    of it: the backbone for the feature pass, backbone and head for training."""
    cfg = spec.train
    make, _ = backbone_factory(cfg.model, cfg.input_size)
    size = cfg.input_size

    def network():
        net = make(None)
        if phase == "features":
            return for_inference(net)
        net.trainable = not cfg.freeze_backbone
        x = keras.Input((size, size, 3))
        return keras.Model(x, head(len(common.class_names(spec)))(net(x)))

    job = fastpath.Job.of(cfg, phase, images)
    return fastpath.keras_choice(job, network, device, max(1, spec.resources.cpus_per_task), cache_dir, log)


def pretrained_weights(cfg) -> tuple[str | bool | None, str]:
    """(what backbone_factory's make takes, the weights' id for the feature cache)."""
    if not cfg.pretrained:
        return None, f"random-seed{cfg.seed}"
    if not has_file("keras", cfg.model):
        return True, f"python-pretrained-seed{cfg.seed}"
    path, wf = locate("keras", cfg.model)
    return str(path), wf.digest


class Trainer:
    def __init__(self, spec: RunSpec, run_dir: Path, env: DistEnv, log, comm: _Single, device: str):
        self.spec, self.cfg, self.run_dir, self.env, self.log, self.comm = spec, spec.train, run_dir, env, log, comm
        self.backend = comm.name
        self.device = device

    # -- data and model -------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        self.data = data = common.load_data(self.spec, self.run_dir, common.cpu_workers(self.spec), self.log)
        self.feature_mode = cfg.freeze_backbone and cfg.feature_cache
        phase, images = (
            ("features", len(data.items)) if self.feature_mode else ("train", cfg.epochs * len(data.index["train"]))
        )
        self.choice = choose(self.spec, self.device, phase, images, data.cache_dir, self.log)
        common.record_choice(self.run_dir, self.env, self.log, self.choice)
        self.policy = fastpath.keras_policy(self.choice)  # softmax head kept float32 below
        keras.mixed_precision.set_global_policy(self.policy)
        weights, weights_id = pretrained_weights(cfg)
        keras.utils.set_random_seed(cfg.seed)
        make, preprocess = backbone_factory(cfg.model, cfg.input_size)
        size = cfg.input_size

        def backbone():
            net = make(weights)
            net.trainable = not cfg.freeze_backbone  # frozen: BatchNorm keeps its statistics, as in torch
            return net

        self.inputs, self.feature_cache = data.images, "off"
        self.preprocess: Callable | None = preprocess
        if self.feature_mode:
            # outside the strategy: it runs forward only, on one rank at a time
            extractor = _inference(for_inference(backbone()))
            feats, self.feature_cache = common.features(
                data,
                FeatureKey(f"keras-{cfg.model}", weights_id, size, self.policy, self.spec.preprocess),
                lambda: self.predict(extractor, np.arange(len(data.items))),
                self.log,
            )
            self.inputs, self.preprocess = feats, None
        with self.comm.scope():
            x = keras.Input(self.inputs.shape[1:])
            features = x if self.feature_mode else backbone()(x)
            self.model = keras.Model(x, head(len(data.classes))(features))
            self.optimizer = (
                keras.optimizers.Adam(cfg.lr) if cfg.optimizer == "adam" else keras.optimizers.SGD(cfg.lr, momentum=0.9)
            )
            self.optimizer.build(self.model.trainable_variables)
        self.train_step, self.forward = self._train_step(), _inference(self.model)

    def _dataset(self, order: np.ndarray, batch: int) -> tf.data.Dataset:
        """(inputs, labels) batches of the positions in `order`, gathered batch by batch from the
        memory-mapped arrays: from_tensor_slices would copy the whole array (6 GB at 224 px) into memory."""
        inputs, labels = self.inputs, self.data.labels

        def gather(idx):
            idx = np.sort(idx)  # sequential reads from the memory map
            return np.ascontiguousarray(inputs[idx]), labels[idx]

        def shaped(idx):
            x, y = tf.numpy_function(gather, [idx], (tf.as_dtype(inputs.dtype), tf.int64))
            x.set_shape((None,) + inputs.shape[1:])
            y.set_shape((None,))
            return (x if self.preprocess is None else self.preprocess(tf.cast(x, tf.float32))), y

        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch)
        return ds.map(shaped, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def _train_step(self):
        model, optimizer, comm, num_classes = self.model, self.optimizer, self.comm, len(self.data.classes)

        def step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                losses = keras.losses.categorical_crossentropy(tf.one_hot(y, num_classes), probs)
                loss = tf.reduce_mean(losses) / comm.loss_divisor
            optimizer.apply_gradients(
                zip(comm.gradient(tape, loss, model.trainable_variables), model.trainable_variables)
            )
            correct = tf.reduce_sum(tf.cast(tf.argmax(probs, 1) == y, tf.float64))
            return tf.stack([tf.reduce_sum(tf.cast(losses, tf.float64)), correct, tf.cast(tf.size(y), tf.float64)])

        return tf.function(lambda x, y: comm.run(step, (x, y)), reduce_retracing=True)

    def predict(self, forward, positions: np.ndarray) -> np.ndarray:
        """`forward`'s outputs for `positions` (ascending), computed on this rank alone."""
        outs = [forward(x).numpy().astype(np.float32) for x, _ in self._dataset(positions, self.cfg.batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    # -- loops ----------------------------------------------------------------------------
    def _shard(self, epoch: int) -> np.ndarray:
        """This rank's share of the epoch's permutation, padded like torch's DistributedSampler so
        every rank takes the same number of steps (collectives would wait forever otherwise)."""
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.data.index["train"])
        world = self.env.world_size
        order = np.concatenate([order, order[: (-len(order)) % world]])
        return order[self.env.rank :: world]

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        sums = tf.zeros(3, tf.float64)
        for x, y in self._dataset(self._shard(epoch), common.per_rank_batch(self.cfg.batch_size, self.env)):
            sums += self.train_step(x, y)
        loss, correct, seen = self.comm.all_sum(sums.numpy())
        return loss / max(seen, 1), correct / max(seen, 1), int(seen)

    def evaluate(self, split: str):
        """(loss, accuracy, records) over the whole split; each rank predicts every world_size-th image."""
        positions = self.data.index[split]
        mine = slice(self.env.rank, None, self.env.world_size)
        probs = self.predict(self.forward, positions[mine])
        labels = self.data.labels[positions[mine]]
        # the ranks fill disjoint columns, so a sum gathers them
        table = np.zeros((3, len(positions)))
        if len(probs):
            table[0, mine] = keras.losses.categorical_crossentropy(
                np.eye(len(self.data.classes), dtype=np.float32)[labels], probs
            ).numpy()
            table[1, mine] = probs.argmax(1)
            table[2, mine] = probs.max(1)
        loss, pred, prob = self.comm.all_sum(table.ravel()).reshape(3, -1)
        records = [(int(p), int(k), float(q)) for p, k, q in zip(positions, pred, prob)]
        return float(loss.sum()) / max(len(records), 1), common.accuracy(records, self.data.labels), records

    def params_in_sync(self) -> bool:
        """Whether every rank holds the same weights, from a 48-bit slice of each rank's digest
        (exact in float64); the ranks fill their own slot, so a sum gathers them."""
        slots = np.zeros(self.env.world_size)
        slots[self.env.rank] = int(common.state_digest(self.model.get_weights())[:12], 16)
        return len(set(self.comm.all_sum(slots))) == 1

    def agree(self, flag: bool) -> bool:
        return bool(self.comm.all_sum(np.array([float(flag)]))[0])

    # -- checkpoints ----------------------------------------------------------------------
    def load_checkpoint(self) -> dict:
        def read(path):
            with np.load(path) as saved:
                self.model.set_weights([saved[f"w{i}"] for i in range(len(self.model.weights))])
                if "o0" in saved.files:  # a completed run's checkpoint has the weights alone (common.finish)
                    for i, variable in enumerate(self.optimizer.variables):
                        variable.assign(saved[f"o{i}"])
                return json.loads(str(saved["state"]))

        return common.resume(self.run_dir / rundir.CHECKPOINT["keras"], self.data, self.log, read)

    def save_checkpoint(self, epoch: int, rows: list, elapsed: float) -> None:
        optimizer = {f"o{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)}
        self._save(
            self.run_dir / rundir.CHECKPOINT["keras"], common.bookkeeping(epoch, rows, elapsed, self.data), optimizer
        )

    def save_weights(self, path: Path, state: dict) -> None:
        self._save(path, state, {})

    def _save(self, path: Path, state: dict, optimizer: dict) -> None:
        arrays = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
        buf = io.BytesIO()
        np.savez(buf, state=np.array(json.dumps(state)), **arrays, **optimizer)
        atomic.write_bytes(path, buf.getvalue())

    def load_weights(self, path: Path) -> None:
        with np.load(path) as saved:
            self.model.set_weights([saved[f"w{i}"] for i in range(len(self.model.weights))])

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        start = time.perf_counter()
        self.prepare()
        state = self.load_checkpoint()
        self.comm.start(self.model.variables + self.optimizer.variables)
        outcome = common.fit(self, start, state)
        return common.result(self, outcome, self.params_in_sync() if self.env.world_size > 1 else None)


def train(spec: RunSpec, run_dir: Path, env: DistEnv, log) -> dict:
    backend = backends.resolve("keras", spec.train.backend, env.world_size)
    comm = _Single()
    if backend == "horovod":
        hvd, env = backends.init_horovod("horovod.tensorflow", env)
        comm = _Horovod(hvd)
    # Device and thread settings first: TensorFlow fixes them when its runtime starts, which
    # creating MultiWorkerMirroredStrategy does.
    device = _configure(env, max(1, spec.resources.cpus_per_task))
    if backend == "tf-distribute":
        comm = _TFDistribute(env)
    with backends.rank_failures(backend) if backend == "horovod" else contextlib.nullcontext():
        return Trainer(spec, run_dir, env, log, comm, device).run()
