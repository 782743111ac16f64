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
        from flowerft.backbones import own_model

        scaling_name, base, name = own_model.load_base(config)
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


def all_layers(layer: keras.layers.Layer):
    """`layer` and every layer nested in it."""
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from all_layers(sub)


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


def learning_rate_schedule(
    schedule: str, lr: float, *, decay: float = 0.0, steps: int | None = None, warmup_steps: int = 0
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The per-step learning rate of one phase of `steps` optimizer steps.

    "inverse_time" is the book's `SGD(lr=..., decay=...)`, lr / (1 + decay * step), which Keras 3
    spells InverseTimeDecay(lr, decay_steps=1, decay_rate=decay). "cosine" climbs linearly from 0
    to lr over `warmup_steps`, then falls along a half cosine to 0 at step `steps`.
    """
    if schedule == "inverse_time":
        return keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if not steps:
        raise ValueError("a cosine schedule needs the phase's number of steps")
    warmup_steps = min(warmup_steps, steps - 1)
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    # Keras's warm-up goes from initial_learning_rate to warmup_target, then decays over decay_steps.
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup_steps, warmup_target=lr, warmup_steps=warmup_steps
    )


def clip_after_summing_replicas(optimizer: keras.optimizers.Optimizer) -> None:
    """Clip each variable's gradient once the replicas' gradients are summed, as one device would.

    Keras clips in `optimizer.apply`, before the tf.distribute all-reduce: 2 replicas would clip
    their half-batch gradients each, and reach other weights than 1 device clipping the whole
    batch's (tests/test_distribute.py caught it). `update_step` gets each variable's summed
    gradient, so the same per-tensor clip (`clipnorm`) moves there; with one device nothing changes.
    The optimizer stays a plain SGD, so saved models load anywhere.
    """
    update_step = optimizer.update_step
    optimizer._clip_gradients = lambda grads: grads
    optimizer.update_step = lambda gradient, variable, learning_rate: update_step(
        optimizer._clip_by_norm(gradient), variable, learning_rate)


def compile_for_phase(
    model: keras.Model,
    *,
    lr: float,
    decay: float,
    momentum: float,
    clipnorm: float | None,
    schedule: str = "inverse_time",
    steps: int | None = None,
    warmup_steps: int = 0,
    label_smoothing: float = 0.0,
    jit_compile: bool = False,
    micro_batches: int = 1,
) -> None:
    """A fresh SGD for this phase: after `trainable` changes, Keras needs a recompile.

    With `label_smoothing` the loss takes one-hot labels (Keras's sparse cross-entropy has no
    smoothing): the phase's datasets must then yield them (see one_hot_labels). With
    `micro_batches` > 1 each update accumulates that many micro-batches (micro_batches.py).
    """
    rate = learning_rate_schedule(schedule, lr, decay=decay, steps=steps, warmup_steps=warmup_steps)
    accumulate = {}
    if micro_batches > 1:
        from flowerft.training.micro_batches import PerBatchSchedule

        rate = PerBatchSchedule(rate, micro_batches)
        accumulate = dict(gradient_accumulation_steps=micro_batches)
    optimizer = keras.optimizers.SGD(learning_rate=rate, momentum=momentum, clipnorm=clipnorm or None, **accumulate)
    if optimizer.clipnorm:
        clip_after_summing_replicas(optimizer)
    if label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=["accuracy"],  # Keras picks sparse or one-hot accuracy from the labels' shape
        jit_compile=jit_compile,  # Keras's "auto" would turn XLA on for GPUs; we keep it a choice
    )
