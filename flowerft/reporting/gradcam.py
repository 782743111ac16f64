"""Grad-CAM (Selvaraju et al. 2017): where in an image a classifier found the evidence for a class.

For class c, each channel k of the last convolutional feature map A (h x w x K) is weighted by
the mean over the map of d y_c / d A_k, and the map is ReLU(sum_k weight_k * A_k), scaled to
[0, 1] and upsampled to the image. y_c is the class's score *before* the softmax, as in the
paper: a confident softmax has almost no gradient left.

The feature map is found from the model, not from a list of layer names per backbone: it is
the output of the last layer whose output still has two spatial axes (rank 4), i.e. what the
global pooling reduces. In a flowerft model that is the nested base (Xception's
block14_sepconv2_act, ResNet50's conv5_block3_out, ...); in a flat Keras classifier it is the
layer itself; in a base that pools itself (a classifier of your own cut at its pooled features)
it is the last such layer inside the base. The input and pixel scaling are rank 4 too, but are
the image, not features: never the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from flowerft.backbones.own_model import SCALING_LAYERS
from flowerft.errors import FlowerftError


@dataclass
class FeatureLayer:
    # A top-level layer of the model, then, while that is a nested model that pools its own map,
    # the layer inside it: the last one outputs the map.
    path: list[keras.layers.Layer]

    @property
    def layer(self) -> keras.layers.Layer:
        return self.path[-1]

    @property
    def nested(self) -> bool:
        """The map is a whole nested base's output (it exists only in the outer graph)."""
        return isinstance(self.layer, keras.Model)


def _rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used twice, or never called
        return None


def _is_image(layer) -> bool:
    """The input or its pixel scaling: rank 4, but no feature map."""
    return isinstance(layer, (keras.layers.InputLayer, *SCALING_LAYERS)) or layer.name == "pixel_scaling"


def _last_map(model: keras.Model) -> list[keras.layers.Layer] | None:
    found = None
    for layer in model.layers:
        if _is_image(layer):
            continue
        if _rank(layer) == 4:
            found = [layer]
        elif isinstance(layer, keras.Model) and (inside := _last_map(layer)):  # a base that pools its map
            found = [layer, *inside]
    return found


def find_feature_layer(model: keras.Model) -> FeatureLayer:
    """The path to the layer that outputs the model's last spatial feature map (rank 4)."""
    path = _last_map(model)
    if path is None:
        raise FlowerftError(f"model {model.name} has no spatial feature map (no layer output of shape "
                            "batch x height x width x channels): Grad-CAM needs a convolutional backbone")
    _refuse_one_by_one(model, path[-1].name, path[-1].output.shape)
    return FeatureLayer(path)


def _refuse_one_by_one(model: keras.Model, name: str, shape) -> None:
    height, width = shape[1:3]
    if height is not None and width is not None and height * width == 1:
        raise FlowerftError(f"the feature map of model {model.name} ({name}) is 1 x 1 at this image size: "
                            "there is nothing to localise; train at a larger --image-size")


def _split(model: keras.Model, path: list) -> tuple[list, list]:
    """(steps from `model`'s input to the map at the end of `path`, steps from the map on to its output),
    each a list of callables run in turn."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    at = layers.index(path[0])
    after = layers[at + 1:]  # the head: pooling, dropout, Dense
    if len(path) > 1:  # the map is inside a nested model: through it, then on with the layers after it
        to_map, from_map = _split(path[0], path[1:])
        return layers[:at] + to_map, from_map + after
    if isinstance(path[0], keras.Model):  # its output exists only in the outer graph: run the layers in turn
        return layers[:at + 1], after
    return [keras.Model(model.inputs, path[0].output)], after  # a tensor of this graph: a model up to it


def _scores_layer(model: keras.Model):
    """The last layer, and whether its softmax must be left out to get the class scores."""
    last = model.layers[-1]
    softmax = isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax
    return last, softmax


class GradCam:
    """Grad-CAM maps of one model; build once, call on batches of raw [0, 255] images."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.feature = find_feature_layer(model)
        self.last, self.softmax = _scores_layer(model)
        # A classifier that outputs logits (a whole Keras application with classifier_activation=None):
        # its scores are the output, its probabilities their softmax.
        self.logits = not self.softmax and getattr(self.last, "activation", None) is keras.activations.linear
        self.to_map, from_map = _split(model, self.feature.path)
        self.head = from_map[:-1]  # from_map ends with the model's last layer: scores() runs it itself
        self.checked = False

    def features(self, images: tf.Tensor) -> tf.Tensor:
        x = images
        for step in self.to_map:
            x = step(x, training=False)
        return x

    def scores(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(class scores before any softmax, probabilities) from the feature map, through the head."""
        x = features
        for step in self.head:
            x = step(x, training=False)
        probabilities = tf.cast(self.last(x, training=False), tf.float32)
        if not self.softmax:
            return probabilities, tf.nn.softmax(probabilities) if self.logits else probabilities
        logits = tf.matmul(tf.cast(x, self.last.kernel.dtype), self.last.kernel)
        if self.last.bias is not None:
            logits += self.last.bias
        return tf.cast(logits, tf.float32), probabilities

    def __call__(self, images: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """(maps, probabilities): maps [n, height, width] in [0, 1] at the images' resolution, for
        `classes` (one per image; None: each image's predicted class)."""
        images = tf.convert_to_tensor(np.asarray(images, dtype="float32"))
        features = self.features(images)
        with tf.GradientTape() as tape:
            tape.watch(features)
            scores, probabilities = self.scores(features)
            if classes is None:
                classes = tf.argmax(probabilities, axis=1)
            chosen = tf.gather(scores, tf.cast(classes, tf.int32), axis=1, batch_dims=1)
        self._check(images, features, probabilities)
        gradients = tf.cast(tape.gradient(chosen, features), tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
        # Bilinear with half-pixel centres: each feature cell lands on the centre of the image
        # region it summarises.
        upsampled = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
        return upsampled.numpy(), probabilities.numpy()

    def _check(self, images, features, probabilities) -> None:
        """Once: the layers run in turn must give the model's own output, or the map explains another model."""
        if self.checked:
            return
        # A base that takes any input size: its map's size is known only now.
        _refuse_one_by_one(self.model, self.feature.layer.name, features.shape)
        expected = np.asarray(self.model(images[:2], training=False), dtype="float32")
        if self.logits:
            expected = np.asarray(tf.nn.softmax(expected))
        if not np.allclose(probabilities.numpy()[:2], expected, atol=1e-4):
            raise FlowerftError(f"cannot explain model {self.model.name}: its head is not one chain of layers "
                                "from the feature map to the class scores")
        self.checked = True


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's maximum."""
    row, column = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(row), int(column)
