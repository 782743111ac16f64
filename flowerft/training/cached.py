"""Run the frozen part once: what a phase trains on instead of images, when nothing is augmented.

A frozen part (BatchNorm in inference mode, no augmentation) maps each image to the same
outputs every epoch, so both phases may compute them once, with the one batched-inference loop
(flowerft/inference.py), and train only what learns on them:
- the head phase: the base's pooled features, for the Dense head;
- a partial fine-tune (partial_finetune.py): the activations at the cut, for the base's top.
Each trains with the same optimizer, schedule, batches and per-epoch shuffle as the plain loop:
pipelines.indexed_pipeline shuffles the indices exactly as the image pipeline shuffles its items,
so each step sees the same images. The checkpoints hold the full classifier.

The activations are stored in the lower part's compute type (float32, or bfloat16/float16
under a mixed policy, whose next layer casts to that type anyway), so caching changes no
value; they live in memory when they take under a quarter of RAM (or with cache: memory),
else in a file under <run_dir>/cache/ that the run removes at its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from flowerft import inference
from flowerft.data import pipelines
from flowerft.training import distribute
from flowerft.training.partial_finetune import top_model


@dataclass
class Cached:
    """What a phase fits instead of the whole classifier, and the batches it fits on."""

    model: keras.Model  # the head or the base's top: it shares its weights with the classifier
    train: tf.data.Dataset
    valid: tf.data.Dataset
    seconds: float  # computing the frozen part's outputs, added to the phase's wall time


def head_features(model: keras.Model, data, setup) -> Cached:
    """The Dense head, and batches of the base's pooled features (recipe.Data, recipe.Setup)."""
    start = time.perf_counter()
    config = setup.config
    setup.notify(f"computing the frozen base's features of {sum(data.sizes):,} images once (the head trains on them)")
    with model.distribute_strategy.scope():  # the head trains under the model's strategy
        extractor = keras.Model(model.input, model.get_layer("avg_pool").output)
        extract = distribute.local_inference(extractor)  # traced once, for both splits
        as_float = lambda images: tf.cast(extract(images), tf.float32)  # noqa: E731
        train_features, train_labels = map(tf.convert_to_tensor, inference.collect(as_float, data.in_order))
        valid_features, valid_labels = map(tf.convert_to_tensor, inference.collect(as_float, data.valid))
        features = keras.Input(shape=(int(train_features.shape[1]),), name="features")
        head = keras.Model(features, model.get_layer("predictions")(features), name="head")  # shares its weights
    train_ds = pipelines.indexed_pipeline(
        train_features, train_labels, batch_size=config.batch_size, shuffle_buffer=config.shuffle_buffer,
        seed=config.seed, epoch=setup.epoch,
    )
    valid_ds = pipelines.indexed_pipeline(valid_features, valid_labels, batch_size=config.batch_size)
    return Cached(head, train_ds, valid_ds, time.perf_counter() - start)


def top_activations(model: keras.Model, parts: tuple[keras.Model, keras.Model], data, setup) -> Cached:
    """The base's top with the head, and batches of the activations at the cut.

    `parts` is partial_finetune.unfreeze's (lower, upper).
    """
    start = time.perf_counter()
    config = setup.config
    with model.distribute_strategy.scope():  # the top trains under the model's strategy
        extractor, top = top_model(model, *parts)
    folder = setup.cache_dir / "activations"
    per_image = int(np.prod(extractor.output.shape[1:])) * tf.as_dtype(extractor.output.dtype).size
    n_train, n_valid = data.sizes
    in_memory = nbytes_fit_in_memory(per_image * (n_train + n_valid), config.cache)
    setup.notify(f"computing the frozen part's activations of {n_train + n_valid:,} images once (the top trains on them)")
    if not in_memory:
        folder.mkdir(parents=True, exist_ok=True)
    pipes, extract = [], distribute.local_inference(extractor)  # traced once, for both splits
    for split, ds, n, shuffle in (("train", data.in_order, n_train, True), ("valid", data.valid, n_valid, False)):
        values, labels, dtype = activations(extractor, ds, n, None if in_memory else folder / f"{split}.npy", extract)
        pipes.append(pipelines.indexed_pipeline(
            values, labels, batch_size=config.batch_size, gather=gather(values, dtype),
            **(dict(shuffle_buffer=config.shuffle_buffer, seed=config.seed, epoch=setup.epoch) if shuffle else {}),
        ))
    return Cached(top, *pipes, time.perf_counter() - start)


def activations(
    extractor: keras.Model, ds, n: int, file: Path | None, extract=None,
) -> tuple[np.ndarray, tf.Tensor, tf.DType]:
    """Every batch of `ds` through the frozen part: (n activations, labels, their dtype).

    Two-byte types are kept as their uint16 bits (numpy has no bfloat16); `file` makes
    the array a memory-mapped .npy there instead of RAM.
    """
    shape = (n, *extractor.output.shape[1:])
    dtype = tf.as_dtype(extractor.output.dtype)
    stored = np.uint16 if dtype.size == 2 else dtype.as_numpy_dtype
    values = np.lib.format.open_memmap(file, "w+", stored, shape) if file else np.empty(shape, stored)
    labels, at = [], 0
    for out, y in inference.batches(extract or distribute.local_inference(extractor), ds):
        values[at:at + len(y)] = out.view(np.uint16) if dtype.size == 2 else out
        at += len(y)
        labels.append(y)
    return values, tf.convert_to_tensor(np.concatenate(labels)), dtype


def gather(values: np.ndarray, dtype: tf.DType):
    """Index batch -> those rows of `values` as `dtype`, inside tf.data (a memmap reads only them)."""
    shape = values.shape[1:]

    def take(indices):
        rows = tf.numpy_function(lambda i: values[np.asarray(i)], [indices], tf.as_dtype(values.dtype), stateful=False)
        rows = tf.bitcast(rows, dtype) if dtype.size == 2 else rows
        return tf.ensure_shape(rows, [None, *shape])

    return take


def nbytes_fit_in_memory(nbytes: int, cache: str) -> bool:
    return cache == "memory" or (cache == "auto" and nbytes < pipelines.ram_bytes() / 4)
