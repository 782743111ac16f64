"""Shared fixtures: generated image folders and one small trained run for the slower tests.

Everything runs offline on data made here, with weights=none and tiny images.
"""

from __future__ import annotations

import contextlib
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

    monkeypatch.setattr(model, "make_base", tiny_make_base())


@contextlib.contextmanager
def tiny_base_under_head(residual: bool = False):
    """tiny_backbone at any fixture scope (module and session fixtures cannot take monkeypatch)."""
    from flowerft import model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "make_base", tiny_make_base(residual))
        yield


def tiny_make_base(residual: bool = False):
    """model.make_base for the tests: tiny_base, loaded from `weights` when that is a file (a
    "pretrained" tiny base a test saved, so that BatchNorm stays frozen as with real weights)."""
    def make_base(backbone, image_size, weights):
        base = tiny_base(image_size, residual)
        if weights not in ("none", "imagenet"):
            base.load_weights(weights)
        return base
    return make_base


# The stated margin of "the weights moved": a tensor whose largest change is below it did not learn.
MOVED = 1e-3
BASE_KERNELS = ("block1_conv/kernel", "block2_conv/kernel", "block3_conv/kernel")
HEAD_KERNEL = "predictions/kernel"


def named_weights(source) -> dict:
    """{variable path: array} of a model, or of a run's checkpoint given its path."""
    import keras

    model = source if isinstance(source, keras.Model) else keras.saving.load_model(source, compile=False)
    return {v.path: np.array(v.numpy()) for v in model.weights}


def start_weights(run: Path) -> dict:
    """The run's classifier before training, rebuilt from its config with its seed (tiny base)."""
    import keras

    from flowerft.config_files import make_config
    from flowerft.model import build_model
    from flowerft.runs import layout

    config = make_config(**layout.read_yaml(run / "config.yaml"))
    keras.utils.set_random_seed(config.seed)
    with tiny_base_under_head():
        model, _ = build_model(config, len(layout.read_json(run / "class_names.json")))
    return named_weights(model)


def largest_change(before: dict, after: dict, name: str) -> float:
    (key,) = [k for k in before if k.endswith(name)]
    return float(np.abs(after[key] - before[key]).max())


def assert_trained(run: Path, margin: float = MOVED, base_kernels=BASE_KERNELS) -> None:
    """An equivalence test's first check: the run's base and head really learned.

    Every base kernel moved from its start by more than `margin` during fine-tuning, and so did the
    head's kernel in its own phase, so a comparison of final weights compares something trained.
    """
    start, head, final = (start_weights(run), named_weights(run / "checkpoints" / "head_best.keras"),
                          named_weights(run / "checkpoints" / "final.keras"))
    assert largest_change(start, head, HEAD_KERNEL) > margin, "the head did not learn in its phase"
    for name in base_kernels:
        assert largest_change(head, final, name) > margin, f"{name} did not learn in fine-tuning"


def assert_differ(a: dict, b: dict, names=(HEAD_KERNEL, *BASE_KERNELS), margin: float = MOVED) -> None:
    """Two sides of a comparison are apart before the step under test, so equal afterwards means something.

    `a` and `b` map variable paths to arrays (named_weights); each named tensor differs by more than `margin`.
    """
    for name in names:
        assert largest_change(a, b, name) > margin, f"{name} was already equal before the step under test"

CHECKOUT = Path(__file__).resolve().parent.parent
# What tests may add to a checkout: Python's and pytest's own caches, the venv, build output.
NOT_THE_CHECKOUTS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist"}


def checkout_files(root: Path = CHECKOUT) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of every file in the checkout but caches, venv and .git."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in NOT_THE_CHECKOUTS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            stat = path.lstat()
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found(tmp_path_factory):
    """The session runs in a temp folder, and fails at its end if the checkout gained or changed a file.

    Module- and session-scoped fixtures run before the per-test chdir below: without this they would
    write runs/latest (the pointer to the newest run) into the checkout.
    """
    before = checkout_files()
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session_cwd"))
    yield
    os.chdir(previous)
    after = checkout_files()
    changed = sorted(p for p in after.keys() | before.keys() if before.get(p) != after.get(p))
    assert not changed, f"the tests wrote into the checkout {CHECKOUT}: {changed[:10]}"
