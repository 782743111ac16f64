"""The backbones flowerft can put a new head on: data only, no TensorFlow.

Each entry knows its constructor (an attribute of `keras.applications`, or flowerft's own
ResNet-34), the pixel scaling its ImageNet weights were trained with, its smallest and its
own (ImageNet) input size, how its layer names show its blocks (for `finetune_blocks`), its
normalization layers (which decide what fine-tuning freezes), and what Keras documents about
it. Only names and numbers live here, so config validation and `flowerft backbones` use the
registry without importing TensorFlow. tests/test_backbones.py checks every number against
the built network.

A `backbone` that is not a name here is a model the user brings: a `.keras` file or a
KerasHub preset (see `is_own` and flowerft/backbones/own_model.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flowerft.errors import ConfigError

# How raw [0, 255] RGB pixels become what the weights expect (model.pixel_scaling builds each):
#   "tf"    -> [-1, 1]                                   (Xception, MobileNet, Inception, ResNet V2)
#   "caffe" -> BGR minus the ImageNet mean                (ResNet, VGG)
#   "torch" -> /255, minus the ImageNet mean, over its std (DenseNet)
#   "none"  -> the network rescales itself               (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3)
SCALINGS = ("tf", "caffe", "torch", "none")

# A layer's block from its name: Xception's block13_..., EfficientNet's block6a_..., MobileNetV2's
# block_12_..., ResNet/DenseNet's conv4_block3_..., VGG's block5_..., KerasHub ResNet's stack2_block1_...
PREFIX_BLOCKS = r"^((?:conv\d+_|stack\d+_)?block_?\d+[a-z]?)_"

# What fine-tuning does with a family's normalization layers (model.unfreeze_base):
#   "batchnorm": BatchNormalization stays frozen in inference mode (its moving statistics would
#                drift on small fine-tuning batches, keras-team/keras #20285)
#   "layernorm": LayerNormalization has no running statistics: it trains with the rest
#   "none":      no normalization layers (VGG): everything trains
NORMALIZATIONS = ("batchnorm", "layernorm", "none")


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications ("ResNet34": flowerft/backbones/resnet34.py)
    scaling: str  # one of SCALINGS
    min_size: int
    default_size: int  # the input size its ImageNet weights were trained at
    preprocess_module: str  # keras.applications.<module>.preprocess_input is the reference
    params: int  # without top, as count_params() of the built base
    top1: float | None  # ImageNet top-1 accuracy (%) as keras.io documents it
    n_blocks: int  # what blocks(...) finds in the built base: the largest finetune_blocks
    weights_file: str | None  # the '_notop' file Keras keeps in ~/.keras/models ("*": any size)
    normalization: str = "batchnorm"
    # Blocks: a regex whose group 1 is the block of a layer (its first layer starts it), or, for
    # networks whose layers are not named by block (Inception), `block_ends`: a regex of the
    # layers that end a block; the next block starts at the layer after each.
    block_names: str = PREFIX_BLOCKS
    block_ends: str | None = None

    @property
    def has_imagenet_weights(self) -> bool:
        return self.weights_file is not None


def _families() -> tuple[Backbone, ...]:
    B = Backbone
    efficientnet = [  # B0-B7: Rescaling and Normalization layers inside; preprocess_input is the identity
        B(f"efficientnetb{i}", f"EfficientNetB{i}", "none", 32, size, "efficientnet", params, top1, blocks,
          f"efficientnetb{i}_notop.h5")
        for i, size, params, top1, blocks in (
            (0, 224, 4049571, 77.1, 16), (1, 240, 6575239, 79.1, 23), (2, 260, 7768569, 80.1, 23),
            (3, 300, 10783535, 81.6, 26), (4, 380, 17673823, 82.9, 32), (5, 456, 28513527, 83.6, 39),
            (6, 528, 40960143, 84.0, 45), (7, 600, 64097687, 84.3, 55),
        )
    ]
    efficientnetv2 = [
        B(f"efficientnetv2{v}", f"EfficientNetV2{v.upper()}", "none", 32, size, "efficientnet_v2", params, top1,
          blocks, f"efficientnetv2-{v}_notop.h5")
        for v, size, params, top1, blocks in (
            ("b0", 224, 5919312, 78.7, 21), ("b1", 240, 6931124, 79.8, 27), ("b2", 260, 8769374, 80.5, 28),
            ("b3", 300, 12930622, 82.0, 32), ("s", 384, 20331360, 83.9, 40), ("m", 480, 53150388, 85.3, 57),
            ("l", 480, 117746848, 85.7, 79),
        )
    ]
    convnext = [  # LayerNormalization throughout; the ImageNet-1k mean/std Normalization inside
        B(f"convnext_{v}", f"ConvNeXt{v.title().replace('Xl', 'XL')}", "none", 32, 224, "convnext", params, top1,
          blocks, f"convnext_{v}_notop.h5", normalization="layernorm",
          block_names=rf"^(convnext_{v}_stage_\d+_block_\d+)_")
        for v, params, top1, blocks in (
            ("tiny", 27820128, 81.3, 18), ("small", 49454688, 82.3, 36), ("base", 87566464, 85.3, 36),
            ("large", 196230336, 86.3, 36), ("xlarge", 348147968, 86.7, 36),
        )
    ]
    resnet = [
        B(f"resnet{d}", f"ResNet{d}", "caffe", 32, 224, "resnet", params, top1, blocks,
          f"resnet{d}_weights_tf_dim_ordering_tf_kernels_notop.h5")
        for d, params, top1, blocks in ((50, 23587712, 74.9, 16), (101, 42658176, 76.4, 33), (152, 58370944, 76.6, 50))
    ]
    resnet_v2 = [
        B(f"resnet{d}v2", f"ResNet{d}V2", "tf", 32, 224, "resnet_v2", params, top1, blocks,
          f"resnet{d}v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
        for d, params, top1, blocks in ((50, 23564800, 76.0, 16), (101, 42626560, 77.2, 33), (152, 58331648, 78.0, 50))
    ]
    densenet = [
        B(f"densenet{d}", f"DenseNet{d}", "torch", 32, 224, "densenet", params, top1, blocks,
          f"densenet{d}_weights_tf_dim_ordering_tf_kernels_notop.h5")
        for d, params, top1, blocks in ((121, 7037504, 75.0, 58), (169, 12642880, 76.2, 82), (201, 18321984, 77.3, 98))
    ]
    return (
        B("xception", "Xception", "tf", 71, 299, "xception", 20861480, 79.0, 14,
          "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        B("mobilenet", "MobileNet", "tf", 32, 224, "mobilenet", 3228864, 70.4, 13, "mobilenet_1_0_*_tf_no_top.h5",
          block_names=r"^conv_(?:dw|pw)_(\d+)(?:_|$)"),
        B("mobilenetv2", "MobileNetV2", "tf", 32, 224, "mobilenet_v2", 2257984, 71.3, 16,
          "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_*_no_top.h5"),
        B("mobilenetv3small", "MobileNetV3Small", "none", 32, 224, "mobilenet_v3", 939120, 68.1, 11,
          "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", block_names=r"^(expanded_conv(?:_\d+)?)_"),
        B("mobilenetv3large", "MobileNetV3Large", "none", 32, 224, "mobilenet_v3", 2996352, 75.6, 15,
          "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", block_names=r"^(expanded_conv(?:_\d+)?)_"),
        *efficientnet,
        *efficientnetv2,
        *convnext,
        *resnet,
        *resnet_v2,
        *densenet,
        B("inceptionv3", "InceptionV3", "tf", 75, 299, "inception_v3", 21802784, 77.9, 10,
          "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", block_ends=r"^mixed\d+$"),
        B("inceptionresnetv2", "InceptionResNetV2", "tf", 75, 299, "inception_resnet_v2", 54336736, 80.3, 42,
          "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
          block_ends=r"^(?:mixed_\w+|block\d+_\d+_ac)$"),
        B("vgg16", "VGG16", "caffe", 32, 224, "vgg16", 14714688, 71.3, 5, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
          normalization="none"),
        B("vgg19", "VGG19", "caffe", 32, 224, "vgg19", 20024384, 71.3, 5, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
          normalization="none"),
        # Géron's ResNet-34 (Hands-On ML, section 14.5), built from Keras layers: no ImageNet weights
        # ship with Keras, so it trains from scratch (weights none) or from a file the user brings.
        B("resnet34", "ResNet34", "tf", 32, 224, "", 21301696, None, 16, None),
    )


BACKBONES: dict[str, Backbone] = {b.name: b for b in _families()}


def spelling(name: str) -> str:
    """One spelling for every way of typing a name: ConvNeXt-Tiny, convnext_tiny, convnexttiny."""
    return re.sub(r"[-_ ]", "", name.lower())


_BY_SPELLING = {spelling(b.name): b for b in BACKBONES.values()}


def is_own(name: str) -> bool:
    """A model the user brings (a file, a folder or a KerasHub preset) rather than a registry name."""
    return spelling(name) not in _BY_SPELLING and (
        "://" in name or name.endswith(".keras") or "/" in name or Path(name).expanduser().exists()
    )


def get_backbone(name: str) -> Backbone:
    try:
        return _BY_SPELLING[spelling(name)]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ConfigError(
            f"backbone: unknown backbone {name!r}; choose one of {known}, or give a .keras file or KerasHub preset"
        ) from None


def block_starts(layer_names: list[str], backbone: Backbone | None) -> list[str]:
    """The first layer of each of the base's blocks, bottom to top (None: a model the user brought)."""
    ends = backbone.block_ends if backbone else None
    if ends:
        pattern = re.compile(ends)
        return [layer_names[i + 1] for i, name in enumerate(layer_names[:-1]) if pattern.match(name)]
    pattern = re.compile(backbone.block_names if backbone else PREFIX_BLOCKS)
    first: dict[str, str] = {}
    for name in layer_names:
        if m := pattern.match(name):
            first.setdefault(m.group(1), name)
    return list(first.values())


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, by default ~/.keras/models."""
    return Path(__import__("os").environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def weights_on_disk(backbone: Backbone, models_dir: Path | None = None) -> bool:
    """Whether `weights=imagenet` would find its file already downloaded (no network needed)."""
    if backbone.weights_file is None:
        return False
    return any((models_dir or keras_models_dir()).glob(backbone.weights_file))


def table_rows(models_dir: Path | None = None) -> list[dict]:
    """One row per backbone for `flowerft backbones` (and its --json)."""
    return [
        {
            "name": b.name, "keras": b.constructor, "parameters": b.params, "default_size": b.default_size,
            "min_size": b.min_size, "scaling": b.scaling, "normalization": NORMALIZATION_RULE[b.normalization],
            "blocks": b.n_blocks, "imagenet_top1": b.top1, "imagenet_weights": b.has_imagenet_weights,
            "weights_on_disk": weights_on_disk(b, models_dir),
        }
        for b in BACKBONES.values()
    ]


NORMALIZATION_RULE = {"batchnorm": "BN frozen", "layernorm": "LN trains", "none": "none"}
