"""Partial fine-tuning: only the base's top learns, on the frozen part's activations computed once."""

import json

import keras
import numpy as np
import pytest
from helpers import assert_trained, checkpoint_weights, stop_after, tiny_base, tiny_base_under_head

from flowerft.config_files import make_config
from flowerft.errors import ConfigError, Interrupted
from flowerft.training import partial_finetune, session
from flowerft.training.cached import activations


def config(folder, run, **values):
    return make_config(**(dict(
        data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=4, epochs_head=1,
        epochs_finetune=2, lr_finetune=0.05, finetune_blocks=2, run_dir=str(run), shuffle_buffer=8, tensorboard=False,
    ) | values))


def train_tiny(config, **options):
    """session.run with the tiny base under the head (module-scoped fixtures cannot use monkeypatch)."""
    with tiny_base_under_head():
        return session.run(config, **options)


@pytest.fixture(scope="module")
def plain(folder, tmp_path_factory):
    """The plain loop: images through the whole model every step (cache none turns the activations off)."""
    run = tmp_path_factory.mktemp("plain") / "run"
    train_tiny(config(folder, run, cache="none"))
    return run


@pytest.fixture(scope="module")
def cached(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("cached") / "run"
    train_tiny(config(folder, run, cache="memory"))
    return run


def assert_same_training(run, reference, tolerance):
    a, b = checkpoint_weights(reference), checkpoint_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=tolerance, atol=tolerance / 10, err_msg=name)
    history = lambda run: [row["val_loss"] for row in json.loads((run / "history.json").read_text())]  # noqa: E731
    assert history(run) == pytest.approx(history(reference), rel=tolerance)


def test_cached_activations_give_the_weights_of_the_plain_loop(plain, cached):
    # First, that there is something to compare: the head and the blocks above the cut learned;
    # block 1 (below the cut) and every BatchNorm did not.
    assert_trained(plain, base_kernels=("block2_conv/kernel", "block3_conv/kernel"))
    reference, head = checkpoint_weights(plain), checkpoint_weights(plain, "head_best")
    moved = {name for name in reference if np.abs(reference[name] - head[name]).max() > 1e-4}
    assert {"block2_conv/kernel", "block3_conv/kernel", "predictions/kernel"} <= moved
    assert not any(name.startswith("block1_") or "_bn/" in name for name in moved)
    assert not (cached / "cache").exists()
    assert_same_training(cached, plain, 1e-5)


def test_activations_too_large_for_memory_go_to_a_file_cache(folder, tmp_path, cached, monkeypatch):
    stored = []
    monkeypatch.setattr("flowerft.training.cached.activations",
                        lambda *a, _f=activations: stored.append(a[3]) or _f(*a))
    monkeypatch.setattr("flowerft.data.pipelines.ram_bytes", lambda: 1000)  # nothing fits
    train_tiny(config(folder, tmp_path / "run"))
    assert [file.name for file in stored] == ["train.npy", "valid.npy"]
    assert not (tmp_path / "run" / "cache").exists()  # removed with the run's other caches
    assert_same_training(tmp_path / "run", cached, 1e-6)


def test_a_cached_partial_run_stopped_mid_fine_tune_resumes_to_the_same_weights(folder, tmp_path, cached):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):  # after fine-tune epoch 1 of 2
        train_tiny(config(folder, run), callbacks=lambda phase, c: [stop_after(2)])
    train_tiny(config(folder, run), resume=True)
    assert_same_training(run, cached, 1e-6)


def test_the_cut_splits_xception_into_two_models_that_compose_to_it():
    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    assert len(partial_finetune.blocks(base)) == 14
    assert partial_finetune.cut_layer(base, make_config(finetune_blocks=2)) == "block13_sepconv1_act"
    lower, upper = partial_finetune.split_base(base, make_config(finetune_blocks=2))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 71, 71, 3)).astype("float32")
    np.testing.assert_allclose(upper(lower(images)), base(images), atol=1e-5)
    partial_finetune.unfreeze_top(base, upper)
    learning = {layer.name for layer in base.layers if layer.trainable_weights}
    assert "block13_sepconv1" in learning and "block14_sepconv2" in learning
    assert "block12_sepconv3" not in learning and not any(name.endswith("_bn") for name in learning)


@pytest.mark.parametrize("values, message", [
    (dict(finetune_blocks=4), "finetune_blocks: mobilenet has 3 blocks, got 4; give 1 to 3"),
    (dict(finetune_from="nope"), "finetune_from: tiny has no layer named 'nope'"),
    (dict(finetune_from="block2_bn"), "a residual connection of tiny goes around block2_bn"),
    (dict(finetune_from="block2_add"), "block2_add takes 2 inputs"),
])
def test_a_cut_that_cannot_be_made_is_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        partial_finetune.split_base(tiny_base(residual=True), make_config(backbone="mobilenet", **values))


def test_finetune_blocks_and_finetune_from_exclude_each_other():
    with pytest.raises(ConfigError, match="finetune_from: cannot be given with finetune_blocks"):
        make_config(finetune_blocks=2, finetune_from="block13_sepconv1_act")
