"""Every family of the registry: its scaling equals its preprocess_input, and it builds, trains a step,
splits into blocks, saves and loads in safe mode and reads its weights from Keras 3 and legacy files.

One tiny build per family runs by default (weights none, the smallest input); the other members
of each family (larger variants of the same code) are marked `large`: `pytest -m large`.
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import keras
import numpy as np
import pytest

from flowerft.backbones.registry import BACKBONES, block_starts, get_backbone
from flowerft.config_files import make_config
from flowerft.errors import ConfigError
from flowerft.layer_tree import all_layers
from flowerft.model import build_model, make_base, pixel_scaling, unfreeze_base
from flowerft.training import partial_finetune
from flowerft.training.optimizer import compile_for_phase

PIXELS = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype("float32")
PIXELS[0, 0, :3, :] = [[0, 0, 0], [255, 255, 255], [127, 128, 1]]
# Random MobileNet v1/v2 at 32 px with BatchNorm frozen (moving statistics 0 and 1): one step moved
# no weight of their base (seen in the large run; their ReLU6 activations are the likely cause,
# not confirmed), while the head still learns. Issue 26 gives random-init BatchNorm its statistics.
SATURATED = {"mobilenet", "mobilenetv2"}
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# One tiny build per family by default; the rest of each family only with -m large.
# (each code path once: self-scaling with and without a weights-file Normalization, LayerNorm and
# LayerScale, torch scaling, blocks by end layers, no normalization, flowerft's own network)
SMALL = ("mobilenetv3small", "efficientnetb0", "efficientnetv2b0", "convnext_tiny", "densenet121", "inceptionv3",
         "vgg16", "resnet34")


def reference(name: str) -> np.ndarray:
    backbone = get_backbone(name)
    if not backbone.preprocess_module:  # ResNet-34 is documented as "tf" scaling
        return keras.applications.imagenet_utils.preprocess_input(PIXELS.copy(), mode="tf")
    return np.asarray(getattr(keras.applications, backbone.preprocess_module).preprocess_input(PIXELS.copy()))


@pytest.mark.parametrize("name", [n for n, b in BACKBONES.items() if b.scaling != "none"])
def test_the_scaling_layer_equals_the_familys_preprocess_input(name):
    layer = pixel_scaling(get_backbone(name).scaling)
    np.testing.assert_allclose(layer(PIXELS), reference(name), rtol=0, atol=2e-4)
    assert layer.__class__.__module__.startswith("keras.")  # built-in: loads in safe mode


def own_scaling(base) -> np.ndarray:
    """The pixels through the base's own scaling layers (those before its first weights)."""
    x = PIXELS
    for layer in base.layers[1:]:
        if not isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            break
        x = layer(x)
    return np.asarray(x)


# What Keras documents for the networks that scale themselves (their preprocess_input is the identity).
OWN_SCALING = {
    "efficientnetb0": PIXELS / 255,  # then Normalization from the weights file (see the EfficientNet test)
    "efficientnetv2b0": (PIXELS / 255 - IMAGENET_MEAN) / IMAGENET_STD,
    "efficientnetv2s": PIXELS / 128 - 1,
    "convnext_tiny": (PIXELS / 255 - IMAGENET_MEAN) / IMAGENET_STD,
    "mobilenetv3small": PIXELS / 127.5 - 1,
}


@pytest.mark.parametrize("name", OWN_SCALING)
def test_a_network_that_scales_itself_does_what_its_weights_expect(name):
    backbone = get_backbone(name)
    assert backbone.scaling == "none"
    np.testing.assert_array_equal(reference(name), PIXELS)  # preprocess_input does nothing for it
    base = make_base(backbone, 32, "none")
    np.testing.assert_allclose(own_scaling(base), OWN_SCALING[name], rtol=0, atol=2e-4)


def test_every_self_scaling_family_is_checked():
    modules = {b.preprocess_module for b in BACKBONES.values() if b.scaling == "none"}
    assert modules == {get_backbone(n).preprocess_module for n in OWN_SCALING}


def write_legacy_h5(base, path, extra_layers: dict | None = None):
    """A Keras 2 weights file (the layout of the '_notop.h5' downloads), written with h5py alone."""
    with h5py.File(path, "w") as f:
        layers = [(layer.name, [(w.path.split("/")[-1], w.numpy()) for w in layer.weights])
                  for layer in base.layers if layer.weights]
        layers += list((extra_layers or {}).items())
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.15.0"
        for name, weights in layers:
            group = f.create_group(name)
            names = [f"{name}/{w}:0" for w, _ in weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, (_, value) in zip(names, weights):
                group.create_dataset(n, data=value)


def moved(base, seed: int = 0) -> list[np.ndarray]:
    """Give every weight of `base` new values (so a load that did nothing cannot pass)."""
    rng = np.random.default_rng(seed)
    values = [rng.normal(0.5, 0.1, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
              for w in base.get_weights()]
    base.set_weights(values)
    return values


def check_family(name: str, tmp_path) -> None:
    backbone = get_backbone(name)
    size = backbone.min_size
    keras.utils.set_random_seed(0)
    config = make_config(backbone=name, weights="none", image_size=size)
    model, base = build_model(config, 3)
    assert base.count_params() == backbone.params
    starts = block_starts([layer.name for layer in base.layers], backbone)
    assert len(starts) == backbone.n_blocks

    # The last two blocks cut off cleanly: the top of the split computes what the base does.
    lower, upper = partial_finetune.split_base(base, dataclasses.replace(config, finetune_blocks=2))
    images = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(upper(lower(images)), base(images), rtol=1e-4, atol=1e-4)

    # The normalization rule: BatchNormalization frozen, LayerNormalization trains.
    unfreeze_base(base)
    norms = [layer for layer in all_layers(base) if isinstance(layer, (keras.layers.BatchNormalization,
                                                                       keras.layers.LayerNormalization))]
    kinds = {type(layer) for layer in norms}
    expected = {"layernorm": {keras.layers.LayerNormalization}, "batchnorm": {keras.layers.BatchNormalization}}
    assert kinds == expected.get(backbone.normalization, set())
    assert all(layer.trainable == isinstance(layer, keras.layers.LayerNormalization) for layer in norms)

    compile_for_phase(model, lr=0.01, decay=0.0, momentum=0.9, clipnorm=1.0)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images, np.array([0, 1]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights)]
    assert changed[-1] or changed[-2]  # the head learned
    if name not in SATURATED:
        assert any(changed[:-2])  # and so did the base

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)

    # A legacy Keras 2 '_notop.h5' (written with h5py alone) loads into a fresh base.
    legacy = tmp_path / f"{name}_notop.h5"
    wanted = moved(base)
    write_legacy_h5(base, legacy)
    fresh = make_base(backbone, size, str(legacy))
    assert all(np.array_equal(a, b) for a, b in zip(wanted, fresh.get_weights()))


@pytest.mark.parametrize("name", SMALL)
def test_each_family_builds_trains_splits_saves_and_loads_its_weights(name, tmp_path):
    check_family(name, tmp_path)


@pytest.mark.large
@pytest.mark.parametrize("name", [n for n in BACKBONES if n not in SMALL])
def test_every_other_backbone_too(name, tmp_path):
    check_family(name, tmp_path)


def test_a_legacy_file_with_its_top_loads_by_name_and_a_keras3_file_loads_too(tmp_path):
    base = make_base(get_backbone("vgg16"), 32, "none")
    wanted = moved(base, seed=3)
    path, keras3 = tmp_path / "vgg16_with_top.h5", tmp_path / "vgg16_notop.weights.h5"
    top = {"fc1": [("kernel", np.zeros((4, 2), "float32")), ("bias", np.zeros(2, "float32"))]}
    write_legacy_h5(base, path, extra_layers=top)
    base.save_weights(keras3)
    for file in (path, keras3):
        fresh = make_base(get_backbone("vgg16"), 32, str(file))
        assert all(np.array_equal(a, b) for a, b in zip(wanted, fresh.get_weights())), file.name


def test_a_legacy_file_that_lacks_a_layer_is_an_error_not_a_half_random_base(tmp_path):
    base = make_base(get_backbone("vgg16"), 32, "none")
    path = tmp_path / "vgg16_short.h5"
    write_legacy_h5(keras.Model(base.input, base.get_layer("block4_pool").output), path,
                    extra_layers={"fc1": [("kernel", np.zeros((4, 2), "float32"))]})
    with pytest.raises(ConfigError, match="lacks 'block5_conv1' and 2 more"):
        make_base(get_backbone("vgg16"), 32, str(path))


def test_an_efficientnet_imagenet_file_gets_the_scaling_keras_gives_imagenet_weights(tmp_path):
    # Keras's EfficientNet files hold the std where Normalization reads a variance; Keras fixes it
    # only for weights="imagenet". Loaded from a file, the input must still become (x/255 - mean) / std.
    backbone = get_backbone("efficientnetb0")
    source = make_base(backbone, 32, "none")
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    normalization.set_weights([IMAGENET_MEAN.reshape(normalization.adapt_mean.shape).astype("float32"),
                               IMAGENET_STD.reshape(normalization.adapt_variance.shape).astype("float32"),
                               np.array(0, dtype=normalization.count.dtype)])
    path = tmp_path / "efficientnetb0_notop.h5"
    write_legacy_h5(source, path)
    loaded = make_base(backbone, 32, str(path))
    np.testing.assert_allclose(own_scaling(loaded), (PIXELS / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=2e-4)


def test_resnet34_is_the_books_network():
    base = make_base(get_backbone("resnet34"), 64, "none")
    units = [layer for layer in base.layers if layer.name.endswith("_add")]
    assert len(units) == 16  # 3 + 4 + 6 + 3 residual units
    filters = [base.get_layer(u.name.replace("_add", "_2_conv")).filters for u in units]
    assert filters == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert sum(1 for layer in base.layers if layer.name.endswith("_skip_conv")) == 3  # where the size halves
    assert base.output.shape[1:] == (2, 2, 512)
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet34"):
        make_base(get_backbone("resnet34"), 64, "imagenet")


@pytest.mark.parametrize("spelled", ["convnext_tiny", "ConvNeXtTiny", "convnext-tiny", "convnexttiny"])
def test_names_are_accepted_as_users_type_them(spelled):
    assert get_backbone(spelled).name == "convnext_tiny"
    assert make_config(backbone=spelled, weights="none").backbone == spelled


def test_an_image_size_below_the_familys_smallest_is_refused():
    with pytest.raises(ConfigError, match="image_size: must be at least 75 for backbone inceptionv3"):
        make_config(backbone="inceptionv3", image_size=71)


def test_the_backbones_command_lists_every_family_and_which_weights_are_here(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flowerft.cli import app

    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    (models / "convnext_tiny_notop.h5").write_bytes(b"")
    (models / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5").write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    result = CliRunner().invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(BACKBONES)
    asked = {f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")} | {
        f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")} | {
        f"resnet{d}v2" for d in (50, 101, 152)} | {"resnet101", "resnet152", "densenet121", "densenet169", "densenet201",
        "inceptionv3", "inceptionresnetv2", "vgg16", "vgg19", "mobilenetv3small", "mobilenetv3large", "resnet34"} | {
        f"efficientnetb{i}" for i in range(8)}
    assert asked <= set(rows)
    here = {name for name, r in rows.items() if r["weights_on_disk"]}
    assert here == {"convnext_tiny", "mobilenetv2"}
    assert rows["convnext_tiny"]["normalization"] == "LN trains" and rows["densenet121"]["scaling"] == "torch"
    assert rows["resnet34"]["imagenet_weights"] is False and rows["efficientnetv2s"]["default_size"] == 384
    table = CliRunner().invoke(app, ["backbones"], terminal_width=200)
    assert table.exit_code == 0 and "efficientnetv2l" in table.output and "LN trains" in table.output
