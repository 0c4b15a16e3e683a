"""The study's Keras loop as it was written: the baseline for the Keras rows of the benchmark.

The study fed `model.fit` from `ImageDataGenerator(preprocessing_function=preprocess_input)
.flow_from_directory(target_size=(224, 224), batch_size=100)`: a keras Sequence that loads each
batch with PIL on the training thread. Keras 3 dropped ImageDataGenerator; this is the same loader
as a `keras.utils.PyDataset` (load_img → img_to_array → preprocess_input), and the same model:
the application without top, frozen, and a 2-class softmax head, Adam, categorical cross-entropy.
Every epoch decodes every JPEG and runs the whole frozen backbone again.

As in naive.py, three choices keep its accuracies comparable with crackhpc's run for run, and
none makes it slower: the model is built right after `keras.utils.set_random_seed(seed)` in the
order crackhpc's worker builds it; images are resized bilinearly, as crackhpc's image cache does;
each epoch is shuffled with the permutation crackhpc draws (numpy's default_rng([seed, epoch])).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import keras
import numpy as np

from crackhpc.data.layout import Item
from crackhpc.worker.keras_worker import APPLICATIONS

from .naive import Trial

BATCH = 100


class ManifestBatches(keras.utils.PyDataset):
    """flow_from_directory over one split of a manifest, shuffled per epoch like crackhpc."""

    def __init__(self, root: str, items: Sequence[Item], size: int, preprocess, seed: int | None = None):
        super().__init__()
        self.root, self.items, self.size, self.preprocess, self.seed = root, list(items), size, preprocess, seed
        self.epoch = 1
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.items))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))

    def __len__(self) -> int:
        return -(-len(self.items) // BATCH)

    def __getitem__(self, k: int):
        batch = [self.items[i] for i in self.order[k * BATCH : (k + 1) * BATCH]]
        x = np.stack(
            [
                keras.utils.img_to_array(
                    keras.utils.load_img(
                        os.path.join(self.root, item.path), target_size=(self.size, self.size), interpolation="bilinear"
                    )
                )
                for item in batch
            ]
        )
        y = keras.utils.to_categorical([item.label for item in batch], 2)
        return self.preprocess(x), y

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


def build(model: str, size: int, seed: int) -> keras.Model:
    application, _ = APPLICATIONS[model]
    keras.utils.set_random_seed(seed)
    backbone = application(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    backbone.trainable = False
    head = keras.layers.Dense(2, activation="softmax")
    return keras.Sequential([keras.Input((size, size, 3)), backbone, head])


def run(model: str, root: str, items: Sequence[Item], size: int, trial: Trial) -> dict:
    """One training run: test accuracy, the misclassified test images and the per-epoch wall times."""
    lr, seed, epochs = trial
    preprocess = APPLICATIONS[model][1]
    split = {s: [i for i in items if i.split == s] for s in ("train", "valid", "test")}
    train = ManifestBatches(root, split["train"], size, preprocess, seed)
    valid, test = (ManifestBatches(root, split[s], size, preprocess) for s in ("valid", "test"))
    net = build(model, size, seed)
    net.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
    epoch_s = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.t0)

    # shuffle=False: the PyDataset draws crackhpc's order itself
    net.fit(train, validation_data=valid, epochs=epochs, shuffle=False, verbose=0, callbacks=[Timer()])
    predicted = net.predict(test, verbose=0).argmax(1)
    wrong = {item.path for item, p in zip(test.items, predicted) if p != item.label}
    return {"test_acc": 1 - len(wrong) / len(test.items), "wrong": wrong, "epoch_s": epoch_s}
