"""The model: pixel scaling inside it, the BatchNorm rule while fine-tuning, safe loading."""

import math

import keras
import numpy as np
import pytest

from flowerft.backbones.registry import get_backbone
from flowerft.config_files import make_config
from flowerft.errors import ConfigError, OfflineError
from flowerft.layer_tree import all_layers
from flowerft.model import build_model, freeze_base, make_base, unfreeze_base
from flowerft.training.callbacks import DivergenceGuard
from flowerft.training.optimizer import compile_for_phase, learning_rate_schedule

PIXELS = np.random.default_rng(0).integers(0, 256, (2, 71, 71, 3)).astype("float32")
PIXELS[0, 0, :3, :] = [[0, 0, 0], [255, 255, 255], [127, 128, 1]]


def scaling_output(model):
    return keras.Model(model.input, model.get_layer("pixel_scaling").output)(PIXELS)


@pytest.mark.parametrize("backbone", ["xception", "mobilenet", "mobilenetv2", "resnet50"])
def test_model_scales_raw_pixels_as_preprocess_input_does(backbone):
    model, _ = build_model(make_config(backbone=backbone, weights="none", image_size=71), 3)
    module = getattr(keras.applications, get_backbone(backbone).preprocess_module)
    expected = module.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(scaling_output(model), expected, rtol=0, atol=1e-5)


def test_efficientnet_scales_itself_so_no_layer_is_added():
    model, _ = build_model(make_config(backbone="efficientnetb0", weights="none", image_size=32), 3)
    assert "pixel_scaling" not in [layer.name for layer in model.layers]
    np.testing.assert_array_equal(keras.applications.efficientnet.preprocess_input(PIXELS), PIXELS)


def batchnorm_state(base):
    return [v.numpy().copy() for layer in all_layers(base) if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def conv_kernels(base):
    return [w.numpy().copy() for layer in all_layers(base)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)) for w in layer.weights]


def fit_once(model, base, phase):
    (freeze_base if phase == "head" else unfreeze_base)(base)
    compile_for_phase(model, lr=0.05, decay=0.0, momentum=0.9, clipnorm=None)
    images = np.random.default_rng(1).uniform(0, 255, (8, 71, 71, 3)).astype("float32")
    model.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)


@pytest.fixture(scope="module")
def xception():
    keras.utils.set_random_seed(0)
    return build_model(make_config(weights="none", image_size=71), 3)


def test_head_phase_changes_only_the_head(xception):
    model, base = xception
    before_base = [w.copy() for w in base.get_weights()]
    before_head = model.get_layer("predictions").get_weights()[0].copy()
    fit_once(model, base, "head")
    assert all(np.array_equal(a, b) for a, b in zip(before_base, base.get_weights()))
    assert not np.array_equal(before_head, model.get_layer("predictions").get_weights()[0])


def test_fine_tuning_moves_kernels_but_not_batchnorm_statistics(xception):
    model, base = xception
    stats, kernels = batchnorm_state(base), conv_kernels(base)
    assert len(stats) > 50 and len(kernels) > 30
    fit_once(model, base, "finetune")
    assert all(np.array_equal(a, b) for a, b in zip(stats, batchnorm_state(base)))
    assert sum(not np.array_equal(a, b) for a, b in zip(kernels, conv_kernels(base))) > len(kernels) // 2


def test_the_batchnorm_check_would_catch_a_plain_unfreeze(xception):
    # The trap the rule avoids: with every layer trainable, fit updates the moving statistics.
    model, base = xception
    stats = batchnorm_state(base)
    for layer in all_layers(base):
        layer.trainable = True
    compile_for_phase(model, lr=0.001, decay=0.0, momentum=0.9, clipnorm=None)
    images = np.random.default_rng(2).uniform(0, 255, (4, 71, 71, 3)).astype("float32")
    model.fit(images, np.arange(4) % 3, batch_size=4, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(stats, batchnorm_state(base)))


def test_saved_model_loads_in_safe_mode_and_predicts_the_same(tmp_path):
    model, base = build_model(make_config(backbone="resnet50", weights="none", image_size=32), 4)
    unfreeze_base(base)
    compile_for_phase(model, lr=0.01, decay=0.001, momentum=0.9, clipnorm=1.0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = PIXELS[:, :32, :32]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    batchnorms = [l for l in all_layers(loaded) if isinstance(l, keras.layers.BatchNormalization)]
    assert batchnorms and not any(l.trainable for l in batchnorms)


def test_optimizer_decays_per_step_like_the_books_decay():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    compile_for_phase(model, lr=0.2, decay=0.01, momentum=0.9, clipnorm=None)
    schedule = model.optimizer.learning_rate if callable(model.optimizer.learning_rate) else model.optimizer._learning_rate
    assert float(schedule(100)) == pytest.approx(0.2 / (1 + 0.01 * 100))
    assert model.optimizer.momentum == 0.9 and not model.optimizer.weight_decay


def test_cosine_schedule_warms_up_from_zero_then_falls_to_zero():
    schedule = learning_rate_schedule("cosine", 0.001, steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.0005) and rates[10] == pytest.approx(0.001)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:11]))  # climbs during the warm-up
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))  # then only falls
    assert rates[55] == pytest.approx(0.0005, rel=1e-3) and rates[100] == pytest.approx(0.0, abs=1e-9)
    plain = learning_rate_schedule("cosine", 0.02, steps=50)
    assert float(plain(0)) == pytest.approx(0.02) and float(plain(50)) == pytest.approx(0.0, abs=1e-9)


def test_label_smoothing_trains_on_one_hot_targets_and_reports_accuracy():
    import tensorflow as tf

    from flowerft.training.recipe import one_hot_labels

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    compile_for_phase(model, lr=0.1, decay=0.0, momentum=0.9, clipnorm=1.0, schedule="cosine", steps=40,
                      warmup_steps=4, label_smoothing=0.3)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = np.argmax(x[:, :3], axis=1)
    ds = one_hot_labels(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), 3)
    history = model.fit(ds, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    # Smoothed targets hold the confidence near 1 - 0.3 + 0.1: hard targets would push it to 1.
    assert model.predict(x, verbose=0).max(axis=1).mean() < 0.85


def test_a_weights_file_for_another_architecture_is_a_clear_error(tmp_path):
    other = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet_notop.weights.h5"
    other.save_weights(path)
    with pytest.raises(ConfigError, match="does not hold Xception weights"):
        make_base(get_backbone("xception"), 71, str(path))


def test_a_weights_file_that_is_not_weights(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(ConfigError, match="does not hold MobileNet weights"):
        make_base(get_backbone("mobilenet"), 32, str(path))


def test_matching_weights_file_is_loaded(tmp_path):
    source = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet_notop.weights.h5"
    source.save_weights(path)
    base = make_base(get_backbone("mobilenet"), 32, str(path))
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), base.get_weights()))


def test_imagenet_download_failure_is_an_offline_error(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNet", offline)
    with pytest.raises(OfflineError, match="--weights PATH"):
        make_base(get_backbone("mobilenet"), 32, "imagenet")


def test_divergence_guard_stops_and_restores_the_best_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(1e9), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32") * 100
    y = np.arange(64) % 3
    guard = DivergenceGuard(factor=100)
    history = model.fit(x, y, batch_size=8, epochs=20, validation_data=(x, y), callbacks=[guard], verbose=0)
    assert guard.reason is not None
    assert len(history.epoch) < 20
    weights = model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    if math.isinf(guard.best):  # no clean epoch: back to where the phase started
        assert all(np.array_equal(a, b) for a, b in zip(start, weights))


def test_clipping_moved_after_the_replica_sum_is_keras_clipping_on_one_device():
    """compile_for_phase clips each variable's summed gradient (see clip_after_summing_replicas): on one
    device that must be exactly Keras's own clipnorm, which the distribute tests compare against."""
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32") * 10
    y = np.arange(12) % 3

    def trained(compile_it):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        compile_it(model)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    def keras_sgd(clipnorm):
        return lambda model: model.compile(keras.optimizers.SGD(0.5, momentum=0.9, clipnorm=clipnorm),
                                           loss="sparse_categorical_crossentropy")

    ours = trained(lambda model: compile_for_phase(model, lr=0.5, decay=0.0, momentum=0.9, clipnorm=0.01))
    clipped, unclipped = trained(keras_sgd(0.01)), trained(keras_sgd(None))
    assert max(np.abs(a - b).max() for a, b in zip(clipped, unclipped)) > 1e-2  # the clip was at work
    for a, b in zip(ours, clipped, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
