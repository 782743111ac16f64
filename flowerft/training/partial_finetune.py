"""Partial fine-tuning: only the top of the base learns, and its frozen lower part runs once.

`finetune_from: LAYER` (or `finetune_blocks: N`, the base's last N blocks) cuts the base at
LAYER's input: the layers below stay frozen, those above learn (BatchNormalization stays
frozen everywhere, see model.unfreeze_base), as the keras-io EfficientNet guide unfreezes only
the top layers. Backpropagation then stops at the cut.

The frozen part (pixel scaling and the base up to the cut) maps each image to the same
activations every epoch when nothing is augmented, so fine_tune_on_activations computes them
once and trains the top alone on them, with the same optimizer, schedule, batches and
per-epoch shuffle as the plain loop (pipelines.indexed_pipeline), and checkpoints the full
classifier. The activations are stored in the lower part's compute type (float32, or
bfloat16/float16 under a mixed policy, whose next layer casts to that type anyway), so
caching changes no value; they live in memory when they take under a quarter of RAM (or
with cache: memory), else in a file under <run_dir>/cache/ that the run removes at its end.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from flowerft.backbones.registry import block_starts, get_backbone, is_own
from flowerft.config import Config
from flowerft.data import pipelines
from flowerft.errors import ConfigError
from flowerft.model import all_layers, batchnorm_learns, unfreeze_base
from flowerft.training import distribute


def is_partial(config: Config) -> bool:
    return bool(config.finetune_blocks or config.finetune_from)


def blocks(base: keras.Model, backbone: str | None = None) -> list[str]:
    """The first layer of each of the base's blocks, bottom to top (backbones.block_starts).

    A registry backbone names its blocks its own way (Inception by the layers that end them); a
    model the user brings is read with the common `block<N>_` naming.
    """
    family = None if backbone is None or is_own(backbone) else get_backbone(backbone)
    names = [layer.name for layer in base.layers]
    # A base whose layers are not the family's (one given in its place) may still use the common naming.
    return block_starts(names, family) or block_starts(names, None)


def cut_layer(base: keras.Model, config: Config) -> str:
    """The name of the base's lowest layer that learns."""
    starts = blocks(base, config.backbone)
    if config.finetune_from:
        names = [layer.name for layer in base.layers]
        if config.finetune_from not in names:
            hint = f"e.g. {starts[-2]}" if len(starts) > 1 else "see model.summary()"
            raise ConfigError(f"finetune_from: {base.name} has no layer named {config.finetune_from!r}; "
                              f"give the name of a layer of the base ({hint})")
        return config.finetune_from
    if not starts:
        raise ConfigError(f"finetune_blocks: {config.backbone}'s layers name no blocks; cut it with "
                          "finetune_from: LAYER instead")
    if config.finetune_blocks > len(starts):
        raise ConfigError(f"finetune_blocks: {config.backbone} has {len(starts)} blocks, got {config.finetune_blocks}; "
                          f"give 1 to {len(starts)} (0 fine-tunes the whole base)")
    return starts[-config.finetune_blocks]


def split_base(base: keras.Model, config: Config) -> tuple[keras.Model, keras.Model]:
    """(lower, upper) models sharing the base's layers: upper(lower(x)) == base(x)."""
    name = cut_layer(base, config)
    cut = base.get_layer(name).input
    if isinstance(cut, (list, tuple)):
        raise ConfigError(f"finetune_from: {name} takes {len(cut)} inputs; cut the base at a layer with one input")
    try:
        upper = keras.Model(cut, base.output, name=f"{base.name}_top")
    except ValueError:  # "not connected": a path from the base's input reaches the top around the cut
        raise ConfigError(
            f"finetune_from: a residual connection of {base.name} goes around {name}, so it cannot be cut there; "
            f"cut at the first layer of a block (finetune_blocks N does)"
        ) from None
    return keras.Model(base.input, cut, name=f"{base.name}_bottom"), upper


def unfreeze_top(base: keras.Model, upper: keras.Model) -> None:
    """Only `upper`'s layers learn, BatchNormalization excepted (model.unfreeze_base says why)."""
    top = {id(layer) for layer in upper.layers}
    base.trainable = True
    for layer in all_layers(base):
        if layer is not base:
            layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)


def top_model(model: keras.Model, lower: keras.Model, upper: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor: images -> activations at the cut, top: activations -> class probabilities); shared weights."""
    layers = model.layers[1:]  # image -> [pixel_scaling] -> base -> avg_pool -> predictions
    base_at = next(i for i, layer in enumerate(layers) if isinstance(layer, keras.Model))
    x = model.input
    for layer in layers[:base_at]:
        x = layer(x)
    extractor = keras.Model(model.input, lower(x), name="lower")
    activations = keras.Input(shape=tuple(lower.output.shape[1:]), name="activations")
    y = upper(activations)
    for layer in layers[base_at + 1:]:
        y = layer(y)
    return extractor, keras.Model(activations, y, name="top")


def activations(extractor: keras.Model, ds, n: int, file: Path | None, extract=None) -> tuple[np.ndarray, tf.Tensor, tf.DType]:
    """Every batch of `ds` through the frozen part: (n activations, labels, their dtype).

    Two-byte types are kept as their uint16 bits (numpy has no bfloat16); `file` makes
    the array a memory-mapped .npy there instead of RAM.
    """
    shape = (n, *extractor.output.shape[1:])
    dtype = tf.as_dtype(extractor.output.dtype)
    stored = np.uint16 if dtype.size == 2 else dtype.as_numpy_dtype
    values = np.lib.format.open_memmap(file, "w+", stored, shape) if file else np.empty(shape, stored)
    extract = extract or distribute.local_inference(extractor)
    labels, at = [], 0
    for images, y in ds:
        out = np.asarray(extract(images))
        values[at:at + len(y)] = out.view(np.uint16) if dtype.size == 2 else out
        at += len(y)
        labels.append(y)
    return values, tf.concat(labels, 0), dtype


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


def unfreeze(base: keras.Model, config: Config) -> tuple[keras.Model, keras.Model] | None:
    """Unfreeze the base for fine-tuning: its top part, (lower, upper), or all of it (None)."""
    if not is_partial(config):
        unfreeze_base(base, learn_batchnorm=batchnorm_learns(config))
        return None
    lower, upper = split_base(base, config)
    unfreeze_top(base, upper)
    return lower, upper


def fine_tune_on_activations(
    model, parts, unshuffled_train_ds, valid_ds, config: Config, run_dir: Path, fit, *, sizes: tuple[int, int], **options
):
    """The fine-tune phase with its frozen lower part run once (see the module docstring).

    `parts` is unfreeze's (lower, upper); `sizes` the number of training and validation
    images; `fit(top, train_ds, valid_ds, save=model, **options)` is train._fit_phase for this phase.
    """
    start = time.perf_counter()
    with model.distribute_strategy.scope():  # the top trains under the model's strategy
        extractor, top = top_model(model, *parts)
    folder = run_dir / "cache" / "activations"
    per_image = int(np.prod(extractor.output.shape[1:])) * tf.as_dtype(extractor.output.dtype).size
    n_train, n_valid = sizes
    in_memory = nbytes_fit_in_memory(per_image * (n_train + n_valid), config.cache)
    if not in_memory:
        folder.mkdir(parents=True, exist_ok=True)
    pipes, extract = [], distribute.local_inference(extractor)  # traced once, for both splits
    for split, ds, n, shuffle in (("train", unshuffled_train_ds, n_train, True), ("valid", valid_ds, n_valid, False)):
        values, labels, dtype = activations(extractor, ds, n, None if in_memory else folder / f"{split}.npy", extract)
        pipes.append(pipelines.indexed_pipeline(
            values, labels, batch_size=config.batch_size, gather=gather(values, dtype),
            **(dict(shuffle_buffer=config.shuffle_buffer, seed=config.seed, epoch=options["shuffle_epoch"]) if shuffle else {}),
        ))
    seconds = time.perf_counter() - start
    result = fit(top, *pipes, save=model, **options)
    result.wall_time_s = round(result.wall_time_s + seconds, 3)
    return result
