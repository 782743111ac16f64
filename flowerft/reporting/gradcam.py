"""Grad-CAM (Selvaraju et al. 2017): where in an image a classifier found the evidence for a class.

For class c, each channel k of the last convolutional feature map A (h x w x K) is weighted by
the mean over the map of d y_c / d A_k, and the map is ReLU(sum_k weight_k * A_k), scaled to
[0, 1] and upsampled to the image. y_c is the class's score *before* the softmax, as in the
paper: a confident softmax has almost no gradient left.

The feature map is found from the model, not from a list of layer names per backbone: it is
the output of the last layer whose output still has two spatial axes (rank 4), i.e. what the
global pooling of the head reduces. In a flowerft model that is the nested base (Xception's
block14_sepconv2_act, ResNet50's conv5_block3_out, ...); in a flat Keras classifier it is the
layer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from flowerft.errors import FlowerftError


@dataclass
class FeatureLayer:
    layer: keras.layers.Layer  # a top-level layer of the model (a nested base, or a plain layer)
    nested: bool  # a nested model: its output exists only in the outer graph, so layers are run in turn


def _rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used twice, or never called
        return None


def find_feature_layer(model: keras.Model) -> FeatureLayer:
    """The top-level layer that outputs the model's last spatial feature map (rank 4)."""
    found = None
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and _rank(layer) == 4:
            found = layer
    if found is None:
        raise FlowerftError(f"model {model.name} has no spatial feature map (no layer output of shape "
                            "batch x height x width x channels): Grad-CAM needs a convolutional backbone")
    height, width = found.output.shape[1:3]
    if height is not None and width is not None and height * width == 1:
        raise FlowerftError(f"the feature map of model {model.name} ({found.name}) is 1 x 1 at this image size: "
                            "there is nothing to localise; train at a larger --image-size")
    return FeatureLayer(found, isinstance(found, keras.Model))


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
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        at = layers.index(self.feature.layer)
        self.before, self.head = layers[: at + 1], layers[at + 1:]  # the head: pooling, dropout, Dense
        if not self.feature.nested:  # a flat graph: the map is a tensor of it
            self.to_features = keras.Model(model.inputs, self.feature.layer.output)
        self.checked = False

    def features(self, images: tf.Tensor) -> tf.Tensor:
        if not self.feature.nested:
            return self.to_features(images, training=False)
        x = images  # a nested base's output exists only in the outer graph: run the layers in turn
        for layer in self.before:
            x = layer(x, training=False)
        return x

    def scores(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(class scores before any softmax, probabilities) from the feature map, through the head."""
        x = features
        for layer in self.head[:-1]:
            x = layer(x, training=False)
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
        self._check(images, probabilities)
        gradients = tf.cast(tape.gradient(chosen, features), tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
        # Bilinear with half-pixel centres: each feature cell lands on the centre of the image
        # region it summarises.
        upsampled = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
        return upsampled.numpy(), probabilities.numpy()

    def _check(self, images, probabilities) -> None:
        """Once: the layers run in turn must give the model's own output, or the map explains another model."""
        if self.checked:
            return
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
