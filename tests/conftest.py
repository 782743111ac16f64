"""Shared fixtures: generated image folders and one small trained run for the slower tests.

Everything runs offline on data made here, with weights=none and tiny images.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
from PIL import Image

CLASSES = ("daisy", "dandelion", "roses")
# Xception's minimum input, so the end-to-end run exercises the default backbone.
TINY = 71


def make_image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """A noisy picture whose dominant colour depends on the class, so a model can learn it."""
    h, w = size
    image = rng.normal(60, 25, (h, w, 3))
    image[..., label % 3] += 120
    return Image.fromarray(np.clip(image, 0, 255).astype("uint8"))


def make_image_folder(
    root: Path, classes=CLASSES, per_class: int = 10, seed: int = 0, sizes=(60, 120), ext: str = ".jpg"
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(sizes[0], sizes[1], 2)
            make_image(rng, label, (h, w)).save(folder / f"{name}_{i:03d}{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "flowers")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real `flowerft train` through the CLI: Xception, weights none, 71 px, 1+1 epochs."""
    from typer.testing import CliRunner

    from flowerft.cli import app

    root = tmp_path_factory.mktemp("e2e")
    folder = make_image_folder(root / "flowers", per_class=12)
    runs = root / "runs"
    previous = os.getcwd()
    os.chdir(root)  # runs/latest, the pointer to the newest run, is written under the working directory
    try:
        result = CliRunner().invoke(app, [
            "train", "--data-dir", str(folder), "--weights", "none", "--image-size", str(TINY),
            "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1",
            "--run-dir", str(runs / "first"),
        ])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return runs / "first"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder: runs/latest and any relative path land there, not in the repo."""
    monkeypatch.chdir(tmp_path)


def one_line_error(result, code: int = 1) -> str:
    """The single `Error: ...` line of a failed CLI call (no traceback, nothing else)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def tiny_base(image_size: int = 32, residual: bool = False):
    """A small base named like Xception's blocks, whose every layer gets real gradients.

    Random ImageNet-sized backbones at test sizes pass almost no signal through their frozen
    BatchNorm, so their weights barely move in a few steps: a comparison of weights after
    fine-tuning would pass whatever the training did. This one trains visibly.
    """
    import keras

    x = inputs = keras.Input((image_size, image_size, 3))
    for block, filters in ((1, 8), (2, 8), (3, 12)):
        y = keras.layers.Conv2D(filters, 3, padding="same", activation="tanh", name=f"block{block}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{block}_bn")(y)
        x = keras.layers.Add(name=f"block{block}_add")([x, y]) if residual and block == 2 else y
        x = keras.layers.AveragePooling2D(2, name=f"block{block}_pool")(x) if block < 3 else x
    return keras.Model(inputs, x, name="tiny")


@pytest.fixture
def tiny_backbone(monkeypatch):
    """build_model puts tiny_base under the head (whatever backbone the config names)."""
    from flowerft import model

    monkeypatch.setattr(model, "make_base", lambda backbone, image_size, weights: tiny_base(image_size))
