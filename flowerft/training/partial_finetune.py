"""Partial fine-tuning: only the top of the base learns.

`finetune_from: LAYER` (or `finetune_blocks: N`, the base's last N blocks) cuts the base at
LAYER's input: the layers below stay frozen, those above learn (BatchNormalization stays
frozen everywhere, see model.unfreeze_base), as the keras-io EfficientNet guide unfreezes only
the top layers. Backpropagation then stops at the cut, and without augmentation the frozen
lower part runs only once (flowerft/training/cached.py).
"""

from __future__ import annotations

import keras

from flowerft.backbones.registry import block_starts, get_backbone, is_own
from flowerft.config import Config
from flowerft.errors import ConfigError
from flowerft.layer_tree import all_layers
from flowerft.model import batchnorm_learns, unfreeze_base


def is_partial(config: Config) -> bool:
    return bool(config.finetune_blocks or config.finetune_from)


def blocks(base: keras.Model, backbone: str | None = None) -> list[str]:
    """The first layer of each of the base's blocks, bottom to top (backbones.registry.block_starts).

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


def unfreeze(base: keras.Model, config: Config) -> tuple[keras.Model, keras.Model] | None:
    """Unfreeze the base for fine-tuning: its top part, (lower, upper), or all of it (None)."""
    if not is_partial(config):
        unfreeze_base(base, learn_batchnorm=batchnorm_learns(config))
        return None
    lower, upper = split_base(base, config)
    unfreeze_top(base, upper)
    return lower, upper
