"""Bring your own backbone: a .keras file (classifier or base) or a KerasHub preset folder trains,
evaluates, exports, reports and is explained like a built-in one; what is not an image model gets one line."""

from __future__ import annotations

import contextlib
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_image_folder, one_line_error
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.errors import ConfigError, OfflineError
from flowerft.layer_tree import all_layers
from flowerft.model import build_model, unfreeze_base
from flowerft.reporting import gradcam

SIZE = 32


def tiny_classifier(scaling: bool = True, top: bool = True) -> keras.Model:
    """An ImageNet-style classifier in miniature: [Rescaling] -> block convs with BN -> avg_pool -> Dropout -> Dense."""
    x = inputs = keras.Input((None, None, 3), name="input")
    if scaling:
        x = keras.layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name="own_rescale")(x)
    for block, filters in ((0, 8), (1, 8), (2, 12)):
        x = keras.layers.Conv2D(filters, 3, strides=2 if block else 1, padding="same", name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
    if top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(0.2, name="dropout")(x)
        x = keras.layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, x, name="tiny_classifier")


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("own") / "tiny classifier.keras"
    tiny_classifier().save(path)
    return path


def test_a_classifier_file_is_cut_at_its_pooled_features_and_keeps_its_scaling(classifier_file):
    model, base = build_model(make_config(backbone=str(classifier_file), image_size=SIZE), 3)
    assert base.output.shape[1:] == (12,)  # avg_pool's output: the Dense top and Dropout are gone
    assert "pixel_scaling" not in [layer.name for layer in model.layers]  # its own Rescaling does it
    source = keras.saving.load_model(classifier_file)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    features = keras.Model(source.input, source.get_layer("avg_pool").output)(x)
    np.testing.assert_allclose(base(x), features, atol=1e-6)  # the file's own weights
    unfreeze_base(base)  # the same BatchNorm rule as a built-in backbone
    bns = [layer for layer in all_layers(base) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 3 and not any(layer.trainable for layer in bns)


def test_a_base_without_scaling_must_say_what_its_weights_expect(tmp_path):
    path = tmp_path / "base.keras"
    tiny_classifier(scaling=False, top=False).save(path)
    with pytest.raises(ConfigError, match="has no pixel scaling layer.*--pixel-scaling tf"):
        build_model(make_config(backbone=str(path), image_size=SIZE), 3)
    model, base = build_model(make_config(backbone=str(path), image_size=SIZE, pixel_scaling="caffe"), 3)
    assert model.get_layer("pixel_scaling") and len(base.output.shape) == 4  # a feature map: flowerft pools it
    with pytest.raises(ConfigError, match="backbone_layer: .* has no layer named 'nope'"):
        build_model(make_config(backbone=str(path), image_size=SIZE, pixel_scaling="tf", backbone_layer="nope"), 3)
    model, base = build_model(make_config(backbone=str(path), image_size=SIZE, pixel_scaling="tf",
                                          backbone_layer="block1_relu"), 3)
    assert base.output.shape[-1] == 8


def test_pixel_scaling_and_backbone_layer_are_only_for_your_own_backbone():
    with pytest.raises(ConfigError, match="pixel_scaling: is for a backbone you bring; xception has its own"):
        make_config(pixel_scaling="tf")
    with pytest.raises(ConfigError, match="backbone_layer: is for a backbone you bring"):
        make_config(backbone="resnet50", backbone_layer="conv5_block3_out")


def not_images(path):
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)


@pytest.mark.parametrize("make, wrong", [
    (not_images, "is not an image model: it takes inputs of shape (None, 10)"),
    (lambda p: p.write_text("not a zip"), "is not a Keras model file that loads in safe mode"),
    (None, "does not exist"),
])
def test_a_file_that_is_not_an_image_model_is_one_line(tmp_path, image_folder, make, wrong):
    path = tmp_path / "thing.keras"
    if make:
        make(path)
    result = CliRunner().invoke(app, ["train", "--data-dir", str(image_folder), "--backbone", str(path),
                                      "--image-size", str(SIZE), "--run-dir", str(tmp_path / "run")])
    assert wrong in one_line_error(result)
    assert not (tmp_path / "run").exists()


def train_evaluate_export_report(tmp_path, backbone: str, *extra: str):
    folder = make_image_folder(tmp_path / "flowers", per_class=6)
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data-dir", str(folder), "--backbone", backbone, "--image-size", str(SIZE),
                                 "--batch-size", "4", "--epochs-head", "1", "--epochs-finetune", "1",
                                 "--finetune-blocks", "1", "--run-dir", str(run), *extra])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases"]["finetune"]["epochs_run"] == 1
    for command in (["evaluate", "--run-dir", str(run)], ["export", "--run-dir", str(run), "--format", "tflite"],
                    ["report", "--run-dir", str(run)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    assert (run / "export" / "model.tflite").is_file() and (run / "report.html").is_file()
    return run


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, classifier_file):
    root = tmp_path_factory.mktemp("own_run")
    with contextlib.chdir(root):  # runs/latest is written under the working directory, not in the checkout
        return train_evaluate_export_report(root, str(classifier_file))


def test_a_classifier_file_trains_evaluates_exports_and_reports(classifier_run):
    card = (classifier_run / "export" / "README.md").read_text()
    assert "tiny classifier.keras: by the backbone's own layers" in card


def test_a_classifier_file_run_is_explained_at_its_base_last_feature_map(classifier_run, tmp_path):
    """The base is the classifier cut at its pooling (rank 2): the map is inside it, before its avg_pool."""
    from flowerft.runs.loader import checkpoint_path, load_model

    image = json.loads((classifier_run / "splits.json").read_text())["test"][0][0]
    result = CliRunner().invoke(app, ["explain", image, "--run-dir", str(classifier_run), "--output", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert Image.open(json.loads(result.stdout)[0]["png"]).format == "PNG"
    html = (classifier_run / "report.html").read_text()
    assert "without heatmaps" not in html, re.search(r"the mistakes are shown without heatmaps[^<]*", html)[0]
    assert 'alt="Grad-CAM heatmap for' in html

    model = load_model(checkpoint_path(classifier_run, "best"))
    explainer = gradcam.GradCam(model)
    # Inside the base, before its avg_pool: not its input nor its own_rescale, rank 4 too.
    assert [layer.name for layer in explainer.feature.path] == ["tiny_classifier_base", "block2_relu"]
    # Grad-CAM of a map that is pooled and fed to one Dense is CAM (Zhou et al. 2016): the map weighted
    # by the class's column of the Dense kernel. An independent check of the gradients through the base.
    base = explainer.feature.path[0]
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    maps, probabilities = explainer(images, [0, 2])
    feature_map = keras.Model(base.input, base.get_layer("block2_relu").output)(images).numpy()
    kernel = model.get_layer("predictions").kernel.numpy()
    cam = np.maximum(np.einsum("nhwk,kn->nhw", feature_map, kernel[:, [0, 2]]), 0)
    cam = tf.image.resize((cam / cam.max(axis=(1, 2), keepdims=True))[..., None], (SIZE, SIZE))[..., 0]
    np.testing.assert_allclose(maps, cam, atol=1e-4)
    np.testing.assert_allclose(probabilities, model(images), atol=1e-5)


def test_a_pooled_base_behind_pixel_scaling_is_explained_inside_it_not_at_the_scaling(tmp_path):
    path = tmp_path / "no scaling.keras"
    tiny_classifier(scaling=False).save(path)
    model, _ = build_model(make_config(backbone=str(path), image_size=SIZE, pixel_scaling="tf"), 3)
    explainer = gradcam.GradCam(model)
    assert explainer.feature.layer.name == "block2_relu"  # not pixel_scaling, the rank-4 layer at the top level
    maps, _ = explainer(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)))
    assert maps.shape == (2, SIZE, SIZE)


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory):
    """A KerasHub preset saved locally from a tiny, randomly initialised ResNet backbone and its converter."""
    keras_hub = pytest.importorskip("keras_hub")  # the `hub` extra (in `test` too)
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("preset") / "tiny_resnet"
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
    )
    backbone.save_to_preset(folder)
    keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE), scale=(1 / (255 * np.array([0.229, 0.224, 0.225]))).tolist(),
        offset=(-np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])).tolist(),
    ).save_to_preset(folder)
    return folder


def test_a_preset_scales_pixels_as_its_own_image_converter_does(preset_folder):
    model, base = build_model(make_config(backbone=str(preset_folder), image_size=SIZE), 3)
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(str(preset_folder))
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    scaled = keras.Model(model.input, model.get_layer("pixel_scaling").output)(x)
    np.testing.assert_allclose(scaled, converter(x), atol=1e-4)
    assert type(model.get_layer("pixel_scaling")) is keras.layers.Rescaling  # built-in: loads in safe mode
    assert type(base).__module__.startswith("keras.")  # a plain functional copy, not KerasHub's class


def test_a_keras_hub_preset_folder_trains_evaluates_exports_and_reports(tmp_path, preset_folder):
    run = train_evaluate_export_report(tmp_path, str(preset_folder))
    assert "without heatmaps" not in (run / "report.html").read_text()  # its base outputs a map Grad-CAM finds


def test_a_preset_to_download_fails_at_once_offline(tmp_path, image_folder, monkeypatch):
    from flowerft.backbones import hub_presets

    monkeypatch.setattr(hub_presets, "_reachable", lambda host: False)
    for preset in ("hf://timm/resnet18.a1_in1k", "kaggle://keras/resnetv2/keras/resnet_18_imagenet"):
        with pytest.raises(OfflineError, match="is unreachable; offline, give a preset folder"):
            build_model(make_config(backbone=preset, image_size=SIZE), 3)
        result = CliRunner().invoke(app, ["train", "--data-dir", str(image_folder), "--backbone", preset,
                                          "--run-dir", str(tmp_path / "run")])
        assert "cannot download KerasHub preset" in one_line_error(result)
