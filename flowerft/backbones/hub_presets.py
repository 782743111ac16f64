"""A KerasHub preset as the backbone: `hf://<user>/<name>`, `kaggle://<handle>` or a local preset folder.

`keras_hub.models.Backbone.from_preset` builds the network with the preset's weights; the
preset's own image preprocessing (its `ImageConverter`: resize, then `x * scale + offset`) is
rebuilt as a built-in Rescaling layer, so the saved classifier needs no KerasHub layer for its
scaling (flowerft's data pipeline already resizes). KerasHub is the optional `hub` extra.

Offline, a preset that would be downloaded fails at once in one line (the download libraries
retry for half a minute first); a preset folder saved on a machine with a network works anywhere:
    keras_hub.models.Backbone.from_preset(NAME).save_to_preset(FOLDER)
    keras_hub.layers.ImageConverter.from_preset(NAME).save_to_preset(FOLDER)
"""

from __future__ import annotations

import socket
from pathlib import Path

import keras
import numpy as np

from flowerft.config import Config
from flowerft.errors import ConfigError, OfflineError, first_line

REMOTE = {"hf://": "huggingface.co", "kaggle://": "www.kaggle.com"}
# A preset folder holds the backbone's config.json (KerasHub's layout).
PRESET_CONFIG = "config.json"
REACH_TIMEOUT_SECONDS = 5.0


def is_preset(backbone: str) -> bool:
    return backbone.startswith(tuple(REMOTE)) or (Path(backbone).expanduser() / PRESET_CONFIG).is_file()


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ConfigError("backbone: KerasHub presets need the keras-hub package; pip install 'flowerft[hub]'") from None
    return keras_hub


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=REACH_TIMEOUT_SECONDS).close()
        return True
    except OSError:
        return False


def check_reachable(preset: str) -> None:
    for scheme, host in REMOTE.items():
        if preset.startswith(scheme) and not _reachable(host):
            raise OfflineError(
                f"cannot download KerasHub preset {preset}: {host} is unreachable; offline, give a preset folder "
                "saved on a machine with a network (Backbone.from_preset(...).save_to_preset(FOLDER), and the "
                "same for its ImageConverter) with --backbone FOLDER"
            )


def load_base(config: Config) -> tuple[str, keras.Model, str]:
    """(the pixel scaling to put in front: the preset's own as a layer, or a name; the base; a name)."""
    preset = config.backbone if "://" in config.backbone else str(Path(config.backbone).expanduser())
    hub = _keras_hub()
    check_reachable(preset)
    try:
        backbone = hub.models.Backbone.from_preset(preset)
    except Exception as e:
        reason = first_line(e)
        raise ConfigError(f"backbone: {preset} is not a KerasHub backbone preset that loads ({reason})") from None
    image_input = backbone.inputs[0] if len(backbone.inputs) == 1 else None
    if image_input is None or len(image_input.shape) != 4 or image_input.shape[-1] != 3:
        shapes = ", ".join(str(tuple(i.shape)) for i in backbone.inputs)
        raise ConfigError(f"backbone: {preset} is not an image backbone: it takes {shapes}, not (batch, h, w, 3) images")
    if config.backbone_layer:
        from flowerft.backbones.own_model import cut_below_top

        backbone = cut_below_top(backbone, config.backbone_layer, preset)
    if len(backbone.output.shape) not in (2, 4):
        raise ConfigError(f"backbone: {preset} outputs {tuple(backbone.output.shape)}, not a feature map; "
                          "name the layer of its features with --backbone-layer")
    scale, offset = preset_scaling(hub, preset)
    if scale is None and config.pixel_scaling is None:
        raise ConfigError(f"pixel_scaling: {preset} has no image converter saying how it scales pixels; "
                          "give --pixel-scaling tf, caffe, torch or none")
    if scale is not None and config.pixel_scaling not in (None, "none"):
        raise ConfigError(f"pixel_scaling: {preset} scales pixels itself (its image converter); leave out --pixel-scaling")
    name = "".join(c if c.isalnum() else "_" for c in preset.rstrip("/").split("/")[-1])
    # A plain functional copy of its graph: the saved classifier then holds Keras layers, not
    # KerasHub's Backbone class, and partial fine-tuning sees its blocks (stack0_block0_...).
    base = keras.Model(backbone.inputs, backbone.output, name=f"{name}_base")
    if scale is None:
        return config.pixel_scaling, base, name
    # The preset's own `x * scale + offset`, as a built-in layer in front of the base.
    return keras.layers.Rescaling(scale=scale, offset=offset, name="pixel_scaling"), base, name


def preset_scaling(hub, preset: str) -> tuple[list | float | None, list | float]:
    """The preset's ImageConverter's (scale, offset), or (None, 0) when it has none."""
    try:
        converter = hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # a preset saved without an image converter
        return None, 0.0
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    as_list = lambda v: np.asarray(v, dtype="float64").reshape(-1).tolist() if np.ndim(v) else float(v)  # noqa: E731
    return as_list(scale), as_list(offset)
