"""The backbones flowerft can put a new head on.

Each entry knows the `keras.applications` constructor, the pixel scaling its
ImageNet weights were trained with, and the smallest input it accepts. Only names
live here, so config validation can use the registry without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerft.errors import ConfigError


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications
    # How raw [0, 255] RGB pixels become what the weights expect:
    #   "tf"    -> [-1, 1]                     (Xception, MobileNet)
    #   "caffe" -> BGR minus the ImageNet mean  (ResNet50)
    #   "none"  -> the network rescales itself (EfficientNet)
    scaling: str
    min_size: int
    preprocess_module: str  # keras.applications.<module>.preprocess_input is the reference


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("xception", "Xception", "tf", 71, "xception"),
        Backbone("mobilenet", "MobileNet", "tf", 32, "mobilenet"),
        Backbone("mobilenetv2", "MobileNetV2", "tf", 32, "mobilenet_v2"),
        Backbone("efficientnetb0", "EfficientNetB0", "none", 32, "efficientnet"),
        Backbone("resnet50", "ResNet50", "caffe", 32, "resnet50"),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ConfigError(f"backbone: unknown backbone {name!r}; choose one of {known}") from None
