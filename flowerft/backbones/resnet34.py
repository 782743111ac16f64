"""Géron's ResNet-34 (Hands-On ML, 3rd ed., section 14.5), from built-in Keras layers only.

The book writes each residual unit as a `ResidualUnit(keras.layers.Layer)` subclass; a custom
class would not load in Keras's safe mode without its code, so here each unit is the same
layers wired functionally, named `block<N>_...` so that `finetune_blocks` finds its 16 units:

    Conv2D(64, 7, strides=2) -> BN -> ReLU -> MaxPool(3, strides=2)
    -> 3 units of 64 filters -> 4 of 128 -> 6 of 256 -> 3 of 512   (each unit that changes
       the filter count halves the size, with a 1x1 convolution on its skip path)

Keras ships no ImageNet weights for it: it trains from scratch (`weights none`) or loads a
weights file of this same network (`weights PATH`). The signature follows keras.applications'
constructors, so model.make_base calls it like any other.
"""

from __future__ import annotations

import keras

FILTERS = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3


def residual_unit(x, filters: int, strides: int, name: str):
    """The book's ResidualUnit: two 3x3 convolutions beside a skip path, added, then ReLU."""
    conv = dict(kernel_size=3, padding="same", use_bias=False)
    y = keras.layers.Conv2D(filters, strides=strides, name=f"{name}_1_conv", **conv)(x)
    y = keras.layers.BatchNormalization(name=f"{name}_1_bn")(y)
    y = keras.layers.ReLU(name=f"{name}_1_relu")(y)
    y = keras.layers.Conv2D(filters, strides=1, name=f"{name}_2_conv", **conv)(y)
    y = keras.layers.BatchNormalization(name=f"{name}_2_bn")(y)
    skip = x
    if strides > 1:
        skip = keras.layers.Conv2D(filters, 1, strides=strides, padding="same", use_bias=False,
                                   name=f"{name}_skip_conv")(x)
        skip = keras.layers.BatchNormalization(name=f"{name}_skip_bn")(skip)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([y, skip]))


def ResNet34(include_top: bool = False, weights=None, input_shape=(224, 224, 3), classes: int = 1000):  # noqa: N802
    """The network without its top (or with the book's GAP + Dense top), random or from a weights file."""
    if weights == "imagenet":
        raise ValueError("ResNet-34 has no ImageNet weights in Keras")
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    previous = 64
    for i, filters in enumerate(FILTERS, start=1):
        x = residual_unit(x, filters, 1 if filters == previous else 2, name=f"block{i}")
        previous = filters
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name="resnet34")
    if weights is not None:
        model.load_weights(weights)
    return model
