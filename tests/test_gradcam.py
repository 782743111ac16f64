"""Grad-CAM finds the evidence: images whose class is decided only by a small bright patch at a
class-specific place (the rest noise); after training, each map's peak lies on the patch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import tiny_base
from PIL import Image

from flowerft import model as model_module
from flowerft.backbones.registry import BACKBONES
from flowerft.config_files import make_config
from flowerft.errors import FlowerftError
from flowerft.model import build_model, unfreeze_base
from flowerft.reporting import gradcam
from flowerft.runs.loader import load_model

SIZE = 32
PATCH = 8
# Each class's patch: its colour channel and the centre of the region it is drawn in (row, column).
PLACES = {"top_left": (0, (8, 8)), "top_right": (1, (8, 24)), "bottom": (2, (24, 16))}
CLASSES = sorted(PLACES)  # label order, as a folder of class folders gives it
JITTER = 3  # the patch moves this far around its place, so the map has to follow the image
MARGIN = 2  # pixels around the patch that still count as on it (a feature cell is 4 pixels wide)


def patch_image(rng: np.random.Generator, name: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Uniform noise with one bright PATCH x PATCH square; its box (top, left, bottom, right)."""
    channel, (row, column) = PLACES[name]
    image = rng.uniform(0, 60, (SIZE, SIZE, 3))
    top, left = (int(c + rng.integers(-JITTER, JITTER + 1) - PATCH // 2) for c in (row, column))
    image[top:top + PATCH, left:left + PATCH] = 0
    image[top:top + PATCH, left:left + PATCH, channel] = 255
    return image.astype("uint8"), (top, left, top + PATCH, left + PATCH)


def patch_folder(root, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name in PLACES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(patch_image(rng, name)[0]).save(root / name / f"{i:03d}.png")  # lossless
    return root


def base_without_batchnorm(image_size: int):
    x = inputs = keras.Input((image_size, image_size, 3))
    for block, filters in ((1, 8), (2, 8), (3, 12)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="tanh", name=f"block{block}_conv")(x)
        x = keras.layers.AveragePooling2D(2, name=f"block{block}_pool")(x) if block < 3 else x
    return keras.Model(inputs, x, name="tiny_no_bn")


def on_patch(point, box) -> bool:
    (row, column), (top, left, bottom, right) = point, box
    return top - MARGIN <= row < bottom + MARGIN and left - MARGIN <= column < right + MARGIN


def trained_on_patches(tmp_path, monkeypatch, make_base) -> keras.Model:
    """A flowerft classifier (pixel scaling, base, pooling, Dense) that learned the patches, saved and loaded back.

    Fitted with Adam, base unfrozen (BatchNorm in inference mode, as flowerft fine-tunes): SGD on a
    random tiny base needs many epochs to pick up a signal that pooling dilutes to 6%.
    """
    monkeypatch.setattr(model_module, "make_base", lambda backbone, image_size, weights: make_base(image_size))
    keras.utils.set_random_seed(0)  # the base's initial weights too
    model, base = build_model(make_config(weights="none", backbone="mobilenet", image_size=SIZE), len(PLACES))
    unfreeze_base(base)
    rng = np.random.default_rng(0)
    names = [name for name in CLASSES for _ in range(40)]
    images = np.stack([patch_image(rng, name)[0] for name in names]).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(images, np.array([CLASSES.index(n) for n in names]), batch_size=8, epochs=20, verbose=0)
    model.save(tmp_path / "patches.keras")
    return load_model(tmp_path / "patches.keras")


@pytest.mark.parametrize("make_base", [tiny_base, base_without_batchnorm], ids=["batchnorm", "no-batchnorm"])
def test_gradcam_peak_lies_on_the_patch_that_decides_the_class(tmp_path, monkeypatch, make_base):
    model = trained_on_patches(tmp_path, monkeypatch, make_base)
    explainer = gradcam.GradCam(model)
    assert explainer.feature.layer.name == model.layers[2].name  # the base, behind the pixel scaling

    rng = np.random.default_rng(1)  # new images: the map must follow each patch, not recall the training set
    names = [name for name in CLASSES for _ in range(10)]
    images, boxes = zip(*(patch_image(rng, name) for name in names))
    maps, probabilities = explainer(np.stack(images))
    assert maps.shape == (len(names), SIZE, SIZE) and maps.max() <= 1.0
    correct = np.mean(probabilities.argmax(1) == [CLASSES.index(n) for n in names])
    assert correct >= 0.9, f"the model did not learn the patches ({correct:.0%} right)"
    hits = [on_patch(gradcam.peak(m), box) for m, box in zip(maps, boxes)]
    assert np.mean(hits) >= 0.8, f"peak on the patch for {np.mean(hits):.0%} of the images"


# One backbone of each family in the default run (the other sizes of a family have its structure);
# `pytest -m large` explains every registry backbone.
EACH_FAMILY = {"xception", "mobilenet", "mobilenetv2", "mobilenetv3small", "efficientnetb0", "efficientnetv2b0",
               "convnext_tiny", "resnet50", "resnet50v2", "densenet121", "inceptionv3", "vgg16", "resnet34"}


@pytest.mark.parametrize("name", [n if n in EACH_FAMILY else pytest.param(n, marks=pytest.mark.large)
                                  for n in sorted(BACKBONES)])
def test_every_backbone_is_explained_at_its_base_output(name):
    # Inception's smallest input (75 px) ends in a 1x1 map, which Grad-CAM refuses (it has no place to point at).
    size = 139 if BACKBONES[name].min_size == 75 else max(BACKBONES[name].min_size, 64)
    model, base = build_model(make_config(weights="none", backbone=name, image_size=size), 3)
    explainer = gradcam.GradCam(model)
    assert explainer.feature.layer is base and explainer.feature.nested
    maps, probabilities = explainer(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)))
    assert maps.shape == (2, size, size) and probabilities.shape == (2, 3)


def test_a_flat_classifier_is_explained_at_its_last_convolution():
    x = inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(x))
    explainer = gradcam.GradCam(keras.Model(inputs, outputs))
    assert explainer.feature.layer.name == "last_conv" and not explainer.feature.nested
    maps, _ = explainer(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)))
    assert maps.shape == (2, SIZE, SIZE)
    logits = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))  # no softmax: shown as probabilities
    maps, probabilities = gradcam.GradCam(logits)(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)))
    assert maps.shape == (2, SIZE, SIZE) and np.allclose(probabilities.sum(1), 1)


def test_a_one_by_one_feature_map_is_refused_with_the_reason():
    model, _ = build_model(make_config(weights="none", backbone="mobilenetv2", image_size=32), 3)
    with pytest.raises(FlowerftError, match="1 x 1 at this image size"):
        gradcam.GradCam(model)
