"""Promises of the README that no other test held to: each test here fails if its claim is false."""

import json
import os
import time

import h5py
import keras
import numpy as np
import pytest
from helpers import closed_port, make_image_folder, one_line_error, stop_after, tiny_base_under_head, working_directory
from typer.testing import CliRunner

from flowerft import model as model_module
from flowerft.backbones.registry import get_backbone
from flowerft.cli import app
from flowerft.config import DEFAULTS
from flowerft.errors import OfflineError
from flowerft.model import make_base

runner = CliRunner()
TRAIN = ["--weights", "none", "--backbone", "mobilenet", "--image-size", "32", "--batch-size", "4",
         "--epochs-head", "1", "--epochs-finetune", "1"]


@pytest.fixture(scope="module")
def latest(tmp_path_factory):
    """A folder whose runs/latest names one small finished run (helpers' tiny base), and that run."""
    root = tmp_path_factory.mktemp("latest")
    folder = make_image_folder(root / "flowers", per_class=10)
    with working_directory(root), tiny_base_under_head():  # runs/latest is written under the working directory
        result = runner.invoke(app, ["train", "--data-dir", str(folder), *TRAIN, "--distribute", "auto"])
    assert result.exit_code == 0, result.output
    run = root / "runs" / (root / "runs" / "latest").read_text().splitlines()[0].rsplit("/", 1)[-1]
    return root, run, result.output


def test_the_start_line_says_where_and_how_it_trains_and_auto_is_one_device_on_a_cpu(latest):
    _, _, output = latest
    text = " ".join(output.split())  # as Rich wrapped it
    line = text[text.index("training on "):][:120]
    # --distribute auto without GPUs: one device, no strategy named
    assert line.startswith(f"training on CPU ({os.cpu_count()} cores): float32, cache memory, mobilenet at 32 px, "
                           f"batch 4, recipe {DEFAULTS['recipe']}"), line


def test_runs_latest_is_followed_by_predict_export_report_and_resume(latest, monkeypatch):
    root, run, _ = latest
    monkeypatch.chdir(root)
    image = next((root / "flowers" / "roses").iterdir())
    result = runner.invoke(app, ["predict", str(image), "--json"])
    assert result.exit_code == 0 and '"label"' in result.stdout, result.output
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0 and (run / "report.html").is_file(), result.output
    result = runner.invoke(app, ["export", "--format", "tflite"])
    assert result.exit_code == 0 and (run / "export" / "model.tflite").is_file(), result.output
    result = runner.invoke(app, ["train", "--resume"])
    assert result.exit_code == 0 and f"runs/{run.name} finished training already" in " ".join(result.output.split())


def test_export_of_the_final_checkpoint_into_another_folder(latest, tmp_path):
    _, run, _ = latest
    out = tmp_path / "shipped"
    result = runner.invoke(app, ["export", "--run-dir", str(run), "--checkpoint", "final", "--format", "savedmodel",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    import tensorflow as tf

    load = lambda path: keras.saving.load_model(path, compile=False)  # noqa: E731
    final, head = load(run / "checkpoints" / "final.keras"), load(run / "checkpoints" / "head_best.keras")
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    expected = final.predict_on_batch(images.astype("float32"))
    assert np.abs(head.predict_on_batch(images.astype("float32")) - expected).max() > 1e-3  # fine-tuning moved it
    served = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(images))["probabilities"].numpy(), expected, atol=1e-5)
    assert json.loads((out / "export.json").read_text())["checkpoint"].endswith("final.keras")


def test_resume_after_the_data_folder_moved_names_the_missing_files_and_works_once_it_is_back(tmp_path):
    from flowerft.config_files import make_config
    from flowerft.errors import Interrupted
    from flowerft.training import session

    folder = make_image_folder(tmp_path / "flowers", per_class=10)
    run = tmp_path / "run"
    config = make_config(data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=4,
                         epochs_head=1, epochs_finetune=1, run_dir=str(run), tensorboard=False)
    with tiny_base_under_head(), pytest.raises(Interrupted):
        session.run(config, callbacks=lambda phase, c: [stop_after(1)])
    folder.rename(tmp_path / "elsewhere")
    message = one_line_error(runner.invoke(app, ["train", "--resume", "--run-dir", str(run)]))
    assert "files recorded in" in message and "are missing" in message and str(folder) in message
    assert "put them back" in message
    (tmp_path / "elsewhere").rename(folder)
    with tiny_base_under_head():
        result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run)])
    assert result.exit_code == 0 and (run / "metrics.json").is_file(), result.output


def test_the_legacy_keras_2_h5_weights_file_loads(tmp_path):
    """The README's example is Keras 2's `..._notop.h5` (weights by layer, not Keras 3's .weights.h5)."""
    from keras.src.legacy.saving import legacy_h5_format

    source = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet_1_0_224_tf_no_top.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    assert "layer_names" in h5py.File(path, "r").attrs  # the legacy layout, as keras.io's files have it
    keras.utils.set_random_seed(1)  # another initialisation: equal weights can only come from the file
    base = make_base(get_backbone("mobilenet"), 32, str(path))
    weights = base.get_weights()
    assert len(weights) == len(source.get_weights())
    for a, b in zip(source.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_imagenet_weights_that_cannot_download_are_an_offline_error(tmp_path, monkeypatch):
    """Keras's own download runs and fails (the weights' URL on a closed port, as offline), unfaked."""
    from keras.src.applications import mobilenet
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # no cached copy in ~/.keras/models
    monkeypatch.setattr(mobilenet, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{closed_port()}/")
    start = time.monotonic()
    with pytest.raises(OfflineError, match="--weights PATH"):
        make_base(get_backbone("mobilenet"), 128, "imagenet")
    assert time.monotonic() - start < model_module.DOWNLOAD_TIMEOUT_SECONDS


@pytest.mark.parametrize("policy", ["basic", "randaugment+mixup"])
def test_training_with_augment_runs_end_to_end(tmp_path, policy):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    run = tmp_path / "run"
    with tiny_base_under_head():
        result = runner.invoke(app, ["train", "--data-dir", str(folder), *TRAIN, "--augment", policy,
                                     "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert f"augment: {policy}" in (run / "config.yaml").read_text()
    assert [row["phase"] for row in json.loads((run / "history.json").read_text())] == ["head", "finetune"]
