"""A backbone the user brings: a Keras `.keras` file (a whole classifier or a base) or a KerasHub preset.

flowerft takes the feature map, or pooled features, below the model's top (its trailing Dense,
Dropout, Flatten and activation layers), or the output of `backbone_layer`, and puts its own
head on it; everything after that (the BatchNorm rule, cached head features, partial
fine-tuning, export, report) is the same as for a built-in backbone. A model that scales its
pixels itself (a Rescaling or Normalization layer before its first weights) keeps its
scaling; one that does not must say what its weights expect with `pixel_scaling`.

The file is loaded in Keras's safe mode: it runs no code that came with it.
"""

from __future__ import annotations

from pathlib import Path

import keras

from flowerft.backbones import weights_files
from flowerft.config import Config
from flowerft.errors import ConfigError, first_line

# What a classifier's top is made of: flowerft cuts below these (walking back from the output).
TOP_LAYERS = (keras.layers.Dense, keras.layers.Dropout, keras.layers.Flatten, keras.layers.Activation,
              keras.layers.Softmax)
SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def load_base(config: Config) -> tuple[str, keras.Model, str]:
    """(the pixel scaling to put before it, the base, a name for the classifier)."""
    path = Path(config.backbone).expanduser()
    model = load_file(path)
    base = cut_below_top(model, config.backbone_layer, str(path))
    check_image_size(base, config.image_size, str(path))
    if config.weights not in ("imagenet", "none"):  # a weights file for this same base
        weights_files.load(base, Path(config.weights), f"weights of {path.name}'s base",
                           "give a weights file saved from this base (model.save_weights)")
    return scaling_for(model, config.pixel_scaling, str(path)), base, keras_name(path.stem)


def keras_name(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text) or "own"


def load_file(path: Path) -> keras.Model:
    if not path.is_file():
        raise ConfigError(f"backbone: {path} does not exist; give a .keras model file, a KerasHub preset "
                          "(a folder, hf://... or kaggle://...) or a built-in name (flowerft backbones lists them)")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        reason = first_line(e)
        raise ConfigError(f"backbone: {path} is not a Keras model file that loads in safe mode ({reason}); "
                          "give a model saved with model.save('....keras')") from None
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ConfigError(f"backbone: {path} holds a {type(model).__name__}, not a functional Keras model; "
                          "save a model built with keras.Input (functional or Sequential)")
    shapes = [tuple(i.shape) for i in model.inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][-1] != 3:
        raise ConfigError(f"backbone: {path} is not an image model: it takes inputs of shape "
                          f"{', '.join(map(str, shapes))}, not (batch, height, width, 3) RGB images")
    return model


def feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer below the model's top: the last one, walking back, that is not Dense/Dropout/..."""
    for layer in reversed(model.layers):
        if not isinstance(layer, TOP_LAYERS) and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ConfigError(f"backbone: {model.name} has no layer below its top; give its features' layer with --backbone-layer")


def cut_below_top(model: keras.Model, layer_name: str | None, where: str) -> keras.Model:
    """The model up to its features: a feature map (batch, h, w, c) or pooled (batch, c)."""
    if layer_name:
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise ConfigError(f"backbone_layer: {where} has no layer named {layer_name!r}; "
                              f"its last layers are {', '.join(l.name for l in model.layers[-4:])}") from None
    else:
        layer = feature_layer(model)
    output = layer.output
    if isinstance(output, (list, tuple)) or len(output.shape) not in (2, 4):
        shape = [tuple(o.shape) for o in output] if isinstance(output, (list, tuple)) else tuple(output.shape)
        raise ConfigError(f"backbone_layer: layer {layer.name} of {where} outputs {shape}, not a feature map "
                          "(batch, height, width, channels) or pooled features (batch, channels); name another")
    return keras.Model(model.input, output, name=keras_name(f"{model.name}_base"))


def check_image_size(base: keras.Model, image_size: int, where: str) -> None:
    height, width = tuple(base.input.shape)[1:3]
    if (height, width) != (None, None) and (height, width) != (image_size, image_size):
        raise ConfigError(f"image_size: {where} takes {height}x{width} images; train it with "
                          f"--image-size {height}" + ("" if height == width else " (or save it with any input size)"))


def own_scaling_layer(model: keras.Model) -> str | None:
    """The name of the model's pixel scaling layer, if one comes before its first weights."""
    from flowerft.layer_tree import all_layers

    for layer in all_layers(model):
        if isinstance(layer, SCALING_LAYERS) or layer.name == "pixel_scaling":
            return layer.name
        if layer is not model and not isinstance(layer, keras.Model) and layer.trainable_weights:
            return None
    return None


def scaling_for(model: keras.Model, pixel_scaling: str | None, where: str) -> str:
    """The scaling flowerft adds in front: none when the model has its own, else what the user named."""
    own = own_scaling_layer(model)
    if own and pixel_scaling not in (None, "none"):
        raise ConfigError(f"pixel_scaling: {where} scales pixels itself (layer {own}); leave out --pixel-scaling")
    if own or pixel_scaling:
        return "none" if own else pixel_scaling
    raise ConfigError(f"pixel_scaling: {where} has no pixel scaling layer at its input; say what its weights expect "
                      "with --pixel-scaling tf ([-1, 1]), caffe (BGR minus mean), torch (mean/std) or none (raw 0-255)")
