"""The fast paths give the same results as the plain ones: cached head features, cached images."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import HEAD_KERNEL, MOVED, assert_differ, named_weights

from flowerft.config_files import make_config
from flowerft.data import pipelines, sources
from flowerft.model import build_model
from flowerft.runs import layout
from flowerft.training import recipe, session


@pytest.fixture(scope="module")
def folder(image_folders):
    return image_folders(per_class=10)


def config_for(folder, **overrides):
    values = dict(data_dir=str(folder), backbone="mobilenet", weights="none", image_size=32,
                  batch_size=4, shuffle_buffer=8, epochs_head=3, tensorboard=False)
    return make_config(**(values | overrides))


def epochs_of(ds, n=2):
    return [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(n)]


def test_memory_cache_gives_the_same_shuffled_batches_as_decoding_every_epoch(folder):
    config = config_for(folder)
    splits = sources.load(config)
    tf.random.set_seed(0)
    plain = epochs_of(pipelines.pipeline(splits, "train", config, training=True, cache="none"))
    tf.random.set_seed(0)
    cached = epochs_of(pipelines.pipeline(splits, "train", config, training=True, cache="memory"))
    for epoch_plain, epoch_cached in zip(plain, cached):
        for (xp, yp), (xc, yc) in zip(epoch_plain, epoch_cached):
            np.testing.assert_array_equal(xp, xc)
            np.testing.assert_array_equal(yp, yc)
    order = lambda epoch: np.concatenate([y for _, y in epoch])
    assert not np.array_equal(order(plain[0]), order(plain[1])), "each epoch is shuffled anew"


def test_file_cache_holds_the_same_images(folder, tmp_path):
    config = config_for(folder)
    splits = sources.load(config)
    cached = pipelines.pipeline(splits, "valid", config, cache="file", cache_dir=tmp_path)
    plain = pipelines.pipeline(splits, "valid", config)
    for _ in range(2):  # the second pass reads the cache
        for (xc, yc), (xp, yp) in zip(cached, plain):
            np.testing.assert_array_equal(xc, xp)
    assert any(p.name.startswith("valid") for p in tmp_path.iterdir())


@pytest.mark.parametrize("cache, augment", [("none", "none"), ("memory", "none"), ("file", "basic"), ("memory", "mixup")])
def test_every_pipeline_runs_without_the_autotuner(folder, tmp_path, cache, augment):
    """Its per-iterator thread stalls each iterator's deletion (flowerft/data/dataset_options.py)."""
    config = config_for(folder, augment=augment)
    splits = sources.load(config)
    for split, training in (("train", True), ("valid", False), ("test", False)):
        ds = pipelines.pipeline(splits, split, config, training=training, cache=cache, cache_dir=tmp_path / split)
        assert ds.options().autotune.enabled is False, (split, cache, augment)
        assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
        next(iter(ds))  # and it still gives batches


def test_cache_auto_uses_memory_when_it_fits():
    assert pipelines.cache_mode(make_config(), 3670) == "memory"  # tf_flowers at 224 px: 550 MB
    assert pipelines.cache_mode(make_config(), 10**7) == "file"
    assert pipelines.cache_mode(make_config(cache="none"), 10) == "none"


def test_augmentation_changes_training_images_only(folder):
    config = config_for(folder, augment="basic")
    splits = sources.load(config)
    tf.random.set_seed(0)
    augmented = next(iter(pipelines.pipeline(splits, "train", config, training=True, cache="memory")))[0]
    tf.random.set_seed(0)
    plain = next(iter(pipelines.pipeline(splits, "train", config_for(folder), training=True, cache="memory")))[0]
    assert augmented.shape == plain.shape and not np.allclose(augmented, plain)
    valid = next(iter(pipelines.pipeline(splits, "valid", config)))[0]
    np.testing.assert_array_equal(valid, next(iter(pipelines.pipeline(splits, "valid", config_for(folder))))[0])


def head_after_phase(folder, tmp_path, cached: bool):
    config = config_for(folder)
    splits = sources.load(config)
    keras.utils.set_random_seed(0)
    model, base = build_model(config, 3)
    start = named_weights(model)
    run_dir = layout.make_run_dir(tmp_path / ("cached" if cached else "plain"))
    # The plain loop decodes every epoch; the cached path reads decoded images from memory.
    epoch = pipelines.epoch_variable()
    train_ds = pipelines.pipeline(splits, "train", config, training=True, cache="none", epoch=epoch)
    valid_ds = pipelines.pipeline(splits, "valid", config, cache="none")
    unshuffled = pipelines.pipeline(splits, "train", config, cache="memory") if cached else None
    result = recipe.train_head(model, base, recipe.Data(train_ds, valid_ds, in_order=unshuffled),
                               recipe.Setup(config, run_dir, lambda phase, config: [], epoch))
    return model, result, run_dir, start


def test_head_on_cached_features_matches_the_plain_loop(folder, tmp_path, tiny_backbone):
    plain_model, plain, _, start = head_after_phase(folder, tmp_path, cached=False)
    cached_model, cached, run_dir, cached_start = head_after_phase(folder, tmp_path, cached=True)
    # The tiny base's features differ from image to image (a random MobileNet's are about 1e-21), so the
    # head learns from which features go with which label, and it moved well away from its start.
    assert_differ(start, named_weights(plain_model), [HEAD_KERNEL], margin=MOVED)
    assert_differ(cached_start, named_weights(cached_model), [HEAD_KERNEL], margin=MOVED)
    for a, b in zip(plain_model.get_layer("predictions").get_weights(), cached_model.get_layer("predictions").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert cached.epochs_run == plain.epochs_run == 3
    for p, c in zip(plain.history, cached.history):
        assert c["loss"] == pytest.approx(p["loss"], rel=1e-4)
        assert c["val_accuracy"] == pytest.approx(p["val_accuracy"])
    # The checkpoint holds the full classifier, not the head-only model that was fitted.
    saved = keras.saving.load_model(run_dir / cached.checkpoint, safe_mode=True)
    assert saved.input_shape == (None, 32, 32, 3) and saved.output_shape == (None, 3)
    assert saved.get_layer("tiny") is not None


def test_mixed_precision_run_keeps_a_float32_output(folder, tmp_path):
    config = config_for(folder, epochs_head=1, epochs_finetune=1, mixed_precision=True, run_dir=str(tmp_path / "run"))
    result = session.run(config)
    assert result.metrics["precision_policy"] == "mixed_bfloat16"  # no GPU here
    model = keras.saving.load_model(tmp_path / "run" / result.metrics["final_checkpoint"], safe_mode=True)
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    assert model.get_layer("mobilenet_1.00_32").get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).dtype == np.float32
    assert keras.mixed_precision.global_policy().name == "float32"  # left as found


def test_jit_compile_is_off_unless_asked():
    from flowerft.training.optimizer import compile_for_phase

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    compile_for_phase(model, lr=0.1, decay=0.0, momentum=0.9, clipnorm=None)
    assert model.jit_compile is False
    compile_for_phase(model, lr=0.1, decay=0.0, momentum=0.9, clipnorm=None, jit_compile=True)
    assert model.jit_compile is True
