"""The classifier: raw RGB pixels -> the backbone's own scaling -> frozen/unfrozen base -> new head.

    image [0, 255] -> pixel scaling -> base (e.g. Xception, no top) -> global average pooling
                   -> Dense(n_classes, softmax)

The scaling lives inside the model, so a saved `.keras` file takes raw pixels and needs no
preprocessing code beside it. Only built-in layers are used: a `Lambda` would not load in
Keras's safe mode.
"""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import keras
import numpy as np

from flowerft.backbones import weights_files
from flowerft.backbones.registry import Backbone, get_backbone, is_own
from flowerft.config import Config
from flowerft.errors import ConfigError, OfflineError
from flowerft.layer_tree import all_layers

# ImageNet channel means, BGR order, as keras.applications.imagenet_utils' "caffe" mode uses them.
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype="float32")
# ImageNet RGB mean and std of [0, 1] pixels, as the "torch" mode uses them.
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype="float32")
# Long enough for a slow but working network, short enough that offline fails fast.
DOWNLOAD_TIMEOUT_SECONDS = 15.0
# The moving statistics' momentum of BatchNorm trained from scratch (see unfreeze_base).
SCRATCH_BATCHNORM_MOMENTUM = 0.9


def pixel_scaling(scaling: str) -> keras.layers.Layer | None:
    """A built-in layer equal to the backbone's `preprocess_input`, or None if it scales itself."""
    if scaling == "tf":  # [0, 255] -> [-1, 1]
        return keras.layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="pixel_scaling")
    if scaling == "caffe":  # RGB -> BGR, minus the ImageNet mean: a fixed 1x1 convolution does both
        swap_rgb_bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        return keras.layers.Conv2D(
            3,
            1,
            name="pixel_scaling",
            trainable=False,
            kernel_initializer=keras.initializers.Constant(swap_rgb_bgr),
            bias_initializer=keras.initializers.Constant(-CAFFE_BGR_MEAN),
        )
    if scaling == "torch":  # /255, minus the ImageNet mean, over its std: one per-channel affine map
        return keras.layers.Rescaling(
            scale=(1.0 / (255.0 * TORCH_STD)).tolist(), offset=(-TORCH_MEAN / TORCH_STD).tolist(), name="pixel_scaling"
        )
    if scaling == "none":
        return None
    raise ValueError(f"unknown pixel scaling {scaling!r}")


def constructor_of(backbone: Backbone):
    if backbone.constructor == "ResNet34":
        from flowerft.backbones.resnet34 import ResNet34

        return ResNet34
    return getattr(keras.applications, backbone.constructor)


def make_base(backbone: Backbone, image_size: int, weights: str) -> keras.Model:
    """The backbone without its top, with ImageNet, random (`none`) or file weights."""
    constructor = constructor_of(backbone)
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        if not backbone.has_imagenet_weights:
            raise ConfigError(f"weights: Keras has no ImageNet weights for {backbone.name}; train it from scratch "
                              "with --weights none, or give a weights file of this network with --weights PATH")
        return _download_imagenet_base(constructor, shape, backbone.name)
    base = constructor(include_top=False, weights=None, input_shape=shape)
    if weights == "none":
        return base
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"weights: {weights} is neither imagenet, none nor an existing weights file")
    weights_files.load(base, path, f"{backbone.constructor} weights without top",
                       f"give the '_notop' weights file of backbone {backbone.name}")
    if backbone.preprocess_module == "efficientnet":
        weights_files.fix_efficientnet_normalization(base)
    return base


def _download_imagenet_base(constructor, shape, name: str) -> keras.Model:
    # Keras downloads into ~/.keras/models once and reuses the file afterwards. urllib has no
    # timeout of its own, so a dead network would hang: bound every socket for the download.
    # Keras prints "Downloading data from https://..." on stdout first: offline, that line came
    # before our error and told the user nothing they could act on.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return constructor(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as e:
        if "fetch failure" not in str(e) and not isinstance(e, OSError):
            raise
        raise OfflineError(
            f"cannot download the ImageNet weights of {name}: the network is unreachable; "
            "work offline with --weights PATH (a '_notop' .h5 file), --weights none, or put the file "
            "in ~/.keras/models on a machine that has a network"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def build_model(config: Config, n_classes: int) -> tuple[keras.Model, keras.Model]:
    """The full classifier and its base (returned too, to freeze and unfreeze it)."""
    if is_own(config.backbone):  # a .keras file or KerasHub preset the user brings
        from flowerft.backbones import hub_presets, own_model

        scaling_name, base, name = (hub_presets.load_base(config) if hub_presets.is_preset(config.backbone)
                                    else own_model.load_base(config))
    else:
        backbone = get_backbone(config.backbone)
        scaling_name, name = backbone.scaling, backbone.name
        base = make_base(backbone, config.image_size, config.weights)
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), name="image")
    x = inputs
    scaling = pixel_scaling(scaling_name) if isinstance(scaling_name, str) else scaling_name  # a preset's own layer
    if scaling is not None:
        x = scaling(x)
    x = base(x)
    # A base that pools itself (a classifier cut at its pooled features) needs no second pooling.
    pool = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else keras.layers.Identity
    x = pool(name="avg_pool")(x)
    # float32 output keeps softmax stable if a mixed-precision policy is ever set.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"flowerft_{name}"), base


def freeze_base(base: keras.Model) -> None:
    base.trainable = False


def batchnorm_learns(config: Config) -> bool:
    """The BatchNorm rule, chosen from the weights: frozen on pretrained ones, learning from scratch.

    Pretrained statistics are worth keeping (unfreeze_base says why). Random weights have none:
    their moving mean and variance are the initial 0 and 1, and kept frozen they shrink the
    signal layer after layer (a random Xception's pooled features have a mean |x| of 6e-6), so
    nothing can learn. Trained from scratch, BatchNorm must learn its statistics like any network's.
    """
    return config.weights == "none"


def unfreeze_base(base: keras.Model, learn_batchnorm: bool = False) -> None:
    """Make the base trainable, except BatchNormalization, which must stay in inference mode
    (unless `learn_batchnorm`: a base trained from scratch, see batchnorm_learns).

    Fine-tuning batches are small and differ from ImageNet: letting BatchNormalization update
    its moving mean and variance wrecks the features the head was trained on. In Keras 3,
    calling the base with `training=False` at construction does not protect them (`fit`
    overrides it, keras-team/keras #20285); a BatchNormalization layer with trainable=False
    always runs in inference mode, so that is the switch we use.
    """
    # Set every layer: Keras's `trainable` setter skips a layer whose own flag already matches,
    # so `base.trainable = True` alone would not reach layers that a nested model set earlier.
    base.trainable = True
    for layer in all_layers(base):
        batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = learn_batchnorm or not batchnorm
        if batchnorm and learn_batchnorm:
            # Keras's 0.99 needs some 500 steps to forget the initial 0/1 statistics, and validation
            # and the saved model use them: PyTorch's 0.9 catches up within a small data set's epoch.
            layer.momentum = SCRATCH_BATCHNORM_MOMENTUM
