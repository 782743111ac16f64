"""What the tests share, as plain functions: generated images, the tiny backbone, weight
comparisons, a Ctrl-C at an epoch's end, CLI error lines. Fixtures live in conftest.py.

Keras and flowerft are imported inside the functions that need them, so a test file that only
parses or runs the CLI's --help does not pay for TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

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


@contextlib.contextmanager
def working_directory(path: Path):
    """cwd is `path` inside the block (contextlib.chdir is Python 3.11+)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def one_line_error(result, code: int = 1) -> str:
    """The single `Error: ...` line of a failed CLI call (no traceback, nothing else)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def error_of(args: list[str]) -> str:
    """The one error line of `flowerft <args>`, run through Typer's CliRunner."""
    from typer.testing import CliRunner

    from flowerft.cli import app

    return one_line_error(CliRunner().invoke(app, args))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeTime:
    """A clock for code that takes `now`: it reads `t`, which the test moves."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


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


def tiny_make_base(residual: bool = False):
    """model.make_base for the tests: tiny_base, loaded from `weights` when that is a file (a
    "pretrained" tiny base a test saved, so that BatchNorm stays frozen as with real weights)."""
    def make_base(backbone, image_size, weights):
        base = tiny_base(image_size, residual)
        if weights not in ("none", "imagenet"):
            base.load_weights(weights)
        return base
    return make_base


@contextlib.contextmanager
def tiny_base_under_head(residual: bool = False):
    """build_model puts tiny_base under the head, whatever backbone the config names, inside the
    block: usable at any fixture scope and in a subprocess (pytest's monkeypatch is per test)."""
    from flowerft import model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "make_base", tiny_make_base(residual))
        yield


def save_tiny_pretrained(path: Path, image_size: int = 32) -> Path:
    """A "pretrained" tiny base's weights file (seed 7), for --weights: BatchNorm then stays frozen."""
    import keras

    keras.utils.set_random_seed(7)
    tiny_base(image_size).save_weights(path)
    return path


# The stated margin of "the weights moved": a tensor whose largest change is below it did not learn.
MOVED = 1e-3
BASE_KERNELS = ("block1_conv/kernel", "block2_conv/kernel", "block3_conv/kernel")
HEAD_KERNEL = "predictions/kernel"


def named_weights(source) -> dict:
    """{variable path: array} of a model, or of a run's checkpoint given its path."""
    import keras

    model = source if isinstance(source, keras.Model) else keras.saving.load_model(source, compile=False)
    return {v.path: np.array(v.numpy()) for v in model.weights}


def checkpoint_weights(run: Path, name: str = "final") -> dict:
    """named_weights of the run's checkpoints/<name>.keras."""
    return named_weights(run / "checkpoints" / f"{name}.keras")


def assert_same_weights(run: Path, reference: Path, rtol: float = 0.0, atol: float = 0.0) -> None:
    """The two runs end with the same weights, tensor by tensor: exactly, unless given a tolerance."""
    for a, b in zip(checkpoint_weights(run).values(), checkpoint_weights(reference).values(), strict=True):
        if rtol or atol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(a, b)


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
    start, head, final = start_weights(run), checkpoint_weights(run, "head_best"), checkpoint_weights(run)
    assert largest_change(start, head, HEAD_KERNEL) > margin, "the head did not learn in its phase"
    for name in base_kernels:
        assert largest_change(head, final, name) > margin, f"{name} did not learn in fine-tuning"


def assert_differ(a: dict, b: dict, names=(HEAD_KERNEL, *BASE_KERNELS), margin: float = MOVED) -> None:
    """Two sides of a comparison are apart before the step under test, so equal afterwards means something.

    `a` and `b` map variable paths to arrays (named_weights); each named tensor differs by more than `margin`.
    """
    for name in names:
        assert largest_change(a, b, name) > margin, f"{name} was already equal before the step under test"


def optimizer_state(model) -> tuple[int, list]:
    """(the optimizer's step count, its momentum arrays)."""
    momentums = [v.numpy() for v in model.optimizer.variables if "momentum" in v.path]
    return int(model.optimizer.iterations.numpy()), momentums


def stop_after(epoch: int):
    """A Keras callback: Ctrl-C at the end of global epoch `epoch` (1-based), after that epoch's state
    is saved. It keeps what the resumed run starts from: `.optimizer` (optimizer_state) and `.weights`."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index + 1 == epoch:
                self.optimizer = optimizer_state(self.model)
                self.weights = named_weights(self.model)
                raise KeyboardInterrupt

    return StopAfter()
