"""From image files to batches: decode, resize, (cache), shuffle, (augment), batch, prefetch.

The functions are small and pure so that tests can run them eagerly and inside
`Dataset.map`. Where the images come from is flowerft/data/sources.py (and a module per kind of source).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import tensorflow as tf

from flowerft.config import MIXING, Config
from flowerft.data.dataset_options import without_autotune
from flowerft.data.image_io import decode_image, load_image_file, resize_image

if TYPE_CHECKING:
    from flowerft.data.splitting import Splits

# A batch of (float images, labels) -> the same, augmented (make_augmenter).
Augmenter = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def to_model_input(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # The model takes raw RGB pixels in [0, 255] and scales them itself.
    return tf.cast(images, tf.float32), labels


def epoch_variable() -> tf.Variable:
    """The epoch whose order a training pipeline gives; callbacks.ShuffleEpoch sets it as each epoch begins."""
    return tf.Variable(0, dtype=tf.int64, trainable=False, name="shuffle_epoch")


def shuffle_for_epoch(ds: tf.data.Dataset, shuffle_buffer: int, seed: int, epoch: tf.Variable | None) -> tf.data.Dataset:
    """`ds` shuffled in an order that is a pure function of (seed, epoch), not of how many epochs ran.

    tf.data's reshuffle_each_iteration draws a new order per iterator, counted from when the
    dataset was built, so a resumed run (a new process) would replay epoch 1's order in epoch 4.
    Here the shuffle seed is derived from the `epoch` variable, read when each epoch's iterator
    starts (inside flat_map, so at iteration time, not when the pipeline is built): a resumed
    epoch sees its images in the order the uninterrupted run gave them.
    """
    if epoch is None:  # outside training (benchmarks, tests): a new order per iteration will do
        return ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    n = ds.cardinality()

    def epoch_order(_):
        # This function's own graph seed, so the order depends on (seed, epoch) alone; and a
        # symbolic op seed needs a nonzero one (TF's random_seed.get_seed tests seeds == (0, 0)).
        tf.random.set_seed(1)
        return ds.shuffle(shuffle_buffer, seed=seed * 1_000_003 + tf.identity(epoch), reshuffle_each_iteration=False)

    ds = tf.data.Dataset.from_tensors(0).flat_map(epoch_order)
    return ds.apply(tf.data.experimental.assert_cardinality(n)) if n >= 0 else ds


def make_pipeline(
    ds: tf.data.Dataset,
    load: Callable[[tf.Tensor], tf.Tensor],
    *,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: tf.Variable | None = None,
    augment: Augmenter | None = None,
) -> tf.data.Dataset:
    """(source item, label) -> batches of (float32 images, labels), prefetched.

    `load` turns a source item into a resized uint8 image. Shuffling happens before
    loading, so a folder source shuffles file names rather than decoded images.
    """
    if shuffle_buffer:
        ds = shuffle_for_epoch(ds, shuffle_buffer, seed, epoch)
    ds = ds.map(lambda x, y: (load(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, augment)


def indexed_pipeline(
    values: tf.Tensor,
    labels: tf.Tensor,
    *,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: tf.Variable | None = None,
    augment: Augmenter | None = None,
    gather: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 values, labels) gathered from in-memory tensors by shuffled index.

    Only indices are shuffled, and tf.data's shuffle order does not depend on what it
    shuffles: for the same buffer and seed, these batches hold exactly the items that
    `make_pipeline` gives from the same source order. `gather(indices)` reads values that
    are not a tensor (training.cached.gather: an array, possibly memory-mapped).
    """
    gather = gather or (lambda i: tf.gather(values, i))
    ds = tf.data.Dataset.range(int(labels.shape[0]))
    if shuffle_buffer:
        ds = shuffle_for_epoch(ds, shuffle_buffer, seed, epoch)
    ds = ds.batch(batch_size).map(
        lambda i: (tf.cast(gather(i), tf.float32), tf.gather(labels, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _finish(ds, augment)


def _finish(ds: tf.data.Dataset, augment: Augmenter | None) -> tf.data.Dataset:
    if augment is not None:  # after batching: mixup and cutmix mix the images of a batch
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    # Multi-worker runs shard each batch across workers (every worker reads the whole pipeline and
    # keeps its part): the default, sharding by file, cannot work on a list of file names or on
    # in-memory tensors, and this keeps each global batch what it is on one device.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return without_autotune(ds.prefetch(tf.data.AUTOTUNE).with_options(options))


def mixes_labels(policy: str) -> bool:
    """Whether `policy` (Config.augment) mixes images, and so makes soft (one-hot, mixed) labels."""
    return any(part in MIXING for part in policy.split("+"))


def make_augmenter(policy: str, seed: int, n_classes: int) -> Augmenter | None:
    """A training batch's images (and labels) augmented as `policy` says (Config.augment); None for "none".

    "basic": random left-right flips, rotations up to 18 degrees and zooms up to 10%; "randaugment":
    Keras's RandAugment at its defaults (two of its eleven ops drawn per batch, their amounts per
    image; it computes all eleven, so expect it to cost more than "basic"); "mixup" and "cutmix":
    each image blended with (or a patch pasted from) another of its batch, its label mixed by the
    same share, so the labels come out one-hot and soft (for CategoricalCrossentropy). Every layer is
    seeded from `seed` and computes in float32 whatever the model's precision: this is data, not the
    saved model.
    """
    import keras

    parts = policy.split("+")
    layers = []
    if "basic" in parts:
        layers += [
            keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32"),
            keras.layers.RandomRotation(0.05, seed=seed, dtype="float32"),
            keras.layers.RandomZoom(0.1, seed=seed, dtype="float32"),
        ]
    if "randaugment" in parts:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed, dtype="float32"))
    mixing = {"mixup": keras.layers.MixUp, "cutmix": keras.layers.CutMix}
    mix = [mixing[part](seed=seed, dtype="float32") for part in parts if part in mixing]
    if not layers and not mix:
        return None

    def augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for layer in layers:
            images = layer(images, training=True)
        for layer in mix:  # last: two augmented images are mixed, not mixed images augmented
            mixed = layer({"images": images, "labels": tf.one_hot(labels, n_classes)}, training=True)
            images, labels = mixed["images"], mixed["labels"]
        return images, labels

    return augment


def loader(splits: Splits, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    if splits.element == "path":
        return lambda path: load_image_file(path, image_size)
    if splits.element == "encoded":  # an image file's bytes (Hugging Face datasets)
        return lambda contents: resize_image(decode_image(contents), image_size)
    return lambda image: resize_image(image, image_size)


def decode_split(splits: Splits, split: str, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Every image of a split decoded and resized once: uint8 [n, size, size, 3], and labels."""
    load = loader(splits, image_size)
    ds = splits.get(split).map(lambda x, y: (load(x), y), num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    images, labels = [], []
    for x, y in without_autotune(ds.prefetch(tf.data.AUTOTUNE)):
        images.append(x)
        labels.append(y)
    return tf.concat(images, 0), tf.concat(labels, 0)


def cache_mode(config: Config, n_images: int) -> str:
    """memory, file or none; "auto" keeps decoded images in memory if they take < 1/4 of RAM."""
    if config.cache != "auto":
        return config.cache
    needed = n_images * config.image_size**2 * 3
    return "memory" if needed < ram_bytes() / 4 else "file"


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every OS
        return 8 * 2**30


def pipeline(
    splits: Splits,
    split: str,
    config: Config,
    *,
    training: bool = False,
    cache: str = "none",
    cache_dir: Path | None = None,
    epoch: tf.Variable | None = None,
) -> tf.data.Dataset:
    """The batched (images, labels) of one split, shuffled (and augmented) for training.

    cache "memory" decodes the split once into a tensor and shuffles indices into it; "file"
    caches decoded images in `cache_dir` after the first pass (and then shuffles decoded
    images, as a file cache cannot be read at random); "none" decodes every epoch. A training
    pipeline's order follows `epoch` (see shuffle_for_epoch).
    """
    options = dict(
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer if training else 0,
        seed=config.seed,
        epoch=epoch,
        augment=make_augmenter(config.augment, config.seed, len(splits.class_names)) if training else None,
    )
    if cache == "memory":
        if split not in splits.decoded:
            splits.decoded[split] = decode_split(splits, split, config.image_size)
        return indexed_pipeline(*splits.decoded[split], **options)
    load = loader(splits, config.image_size)
    ds = splits.get(split)
    if cache == "file":
        cache_dir.mkdir(parents=True, exist_ok=True)
        ds = ds.map(lambda x, y: (load(x), y), num_parallel_calls=tf.data.AUTOTUNE).cache(str(cache_dir / split))
        load = tf.identity
    return make_pipeline(ds, load, **options)
