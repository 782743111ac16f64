"""Exact resume: a run stopped at any epoch boundary and resumed ends with the same weights.

Equal final weights prove that the weights, the optimizer's momentum and step count (the
per-step decay), the data order of every epoch and the tracking of the best checkpoint all
came back; a test of each would pass with any one of them lost.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    BASE_KERNELS,
    HEAD_KERNEL,
    assert_differ,
    assert_same_weights,
    assert_trained,
    named_weights,
    optimizer_state,
    stop_after,
    tiny_base_under_head,
)

from flowerft.config_files import make_config
from flowerft.data import pipelines
from flowerft.errors import Interrupted
from flowerft.training import checkpoints, session

EPOCHS_HEAD, EPOCHS_FINETUNE = 2, 2


def config(folder, run, cache, **more):
    return make_config(data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=4,
                       epochs_head=EPOCHS_HEAD, epochs_finetune=EPOCHS_FINETUNE, cache=cache, run_dir=str(run),
                       shuffle_buffer=8, tensorboard=False,  # a buffer smaller than the data: order depends on it
                       **more)


@pytest.fixture(scope="module", autouse=True)
def tiny():
    """A base that learns in a few steps (helpers.tiny_base): a lost base or momentum shows in its weights."""
    with tiny_base_under_head():
        yield


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = session.run(config(folder, run, "memory"))
    return run, result.metrics


@pytest.fixture(scope="module", autouse=True)
def deterministic_ops():
    """Bit-identical results need TensorFlow's deterministic kernels, for the reference run too.

    TF has no public way back (tf.config.experimental has only enable_op_determinism), so the
    other test files get TensorFlow as they had it through its own config module.
    """
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


@pytest.mark.parametrize("cache", ["memory", "file"])
def test_a_run_stopped_in_each_phase_and_resumed_ends_with_the_same_weights(folder, uninterrupted, tmp_path, cache):
    reference, reference_metrics = uninterrupted
    assert_trained(reference)  # the base and the head learned: equal weights compare something
    end = named_weights(reference / "checkpoints" / "final.keras")
    run = tmp_path / "run"
    # Stopped after head epoch 1 (cached features: the head trains on them) and after the
    # first fine-tune epoch, resumed each time in a fresh model as a new process would.
    for stop, moving in ((1, [HEAD_KERNEL]), (EPOCHS_HEAD + 1, [HEAD_KERNEL, *BASE_KERNELS])):
        stopper = stop_after(stop)
        with pytest.raises(Interrupted):
            session.run(config(folder, run, cache), callbacks=lambda phase, c: [stopper], resume=stop > 1)
        # Where the resume starts is far from where the run ends: the epochs left must really run.
        assert_differ(stopper.weights, end, moving)
    result = session.run(config(folder, run, cache), resume=True)

    assert_same_weights(reference, run)
    rows = lambda path: json.loads((path / "history.json").read_text())  # noqa: E731
    assert rows(run) == rows(reference)  # every epoch once, with the same losses and accuracies
    assert result.metrics["best_checkpoint"] == reference_metrics["best_checkpoint"]
    assert not (run / "cache").exists() and not (run / checkpoints.STATE).exists()


def test_a_run_with_ema_stopped_in_each_phase_and_resumed_ends_with_the_same_weights(folder, tmp_path):
    """An epoch's saved state holds the moving average in the model and the raw weights in the
    optimizer (callbacks.SwapEMAWeightsEachEpoch): the resumed phase must swap them back first."""
    reference, run = tmp_path / "uninterrupted", tmp_path / "run"
    session.run(config(folder, reference, "memory", ema=True))
    end = named_weights(reference / "checkpoints" / "final.keras")
    for stop, moving in ((1, [HEAD_KERNEL]), (EPOCHS_HEAD + 1, [HEAD_KERNEL, *BASE_KERNELS])):
        stopper = stop_after(stop)
        with pytest.raises(Interrupted):
            session.run(config(folder, run, "memory", ema=True), callbacks=lambda phase, c: [stopper], resume=stop > 1)
        assert_differ(stopper.weights, end, moving)
    session.run(config(folder, run, "memory", ema=True), resume=True)

    assert_same_weights(reference, run)
    rows = lambda path: json.loads((path / "history.json").read_text())  # noqa: E731
    assert rows(run) == rows(reference)


def test_the_resumed_optimizer_has_the_step_count_and_momentum_it_stopped_with(folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    stop = stop_after(EPOCHS_HEAD + 1)
    with pytest.raises(Interrupted):
        session.run(config(folder, run, "memory"), callbacks=lambda phase, c: [stop])
    loaded = []
    load_fitted = checkpoints.load_fitted

    def spy(model, run_dir, progress):
        load_fitted(model, run_dir, progress)
        loaded.append(optimizer_state(model))

    monkeypatch.setattr(checkpoints, "load_fitted", spy)
    session.run(config(folder, run, "memory"), resume=True)
    (iterations, momentums), (saved_iterations, saved_momentums) = loaded[0], stop.optimizer
    assert iterations == saved_iterations > 0  # the decay goes on from its step, not from 0
    assert len(momentums) == len(saved_momentums) > 0 and any(np.abs(m).sum() > 0 for m in momentums)
    for a, b in zip(momentums, saved_momentums):
        np.testing.assert_array_equal(a, b)


def test_each_epoch_order_is_a_function_of_seed_and_epoch():
    ds = tf.data.Dataset.from_tensor_slices((tf.zeros((30, 2, 2, 3), tf.uint8), tf.range(30, dtype=tf.int64)))

    def order(seed, epoch_number):
        epoch = pipelines.epoch_variable()
        pipe = pipelines.make_pipeline(ds, lambda x: x, batch_size=30, shuffle_buffer=8, seed=seed, epoch=epoch)
        epoch.assign(epoch_number)
        return list(next(iter(pipe))[1].numpy())

    tf.random.set_seed(1)
    first = order(1, 3)
    tf.random.set_seed(0)  # TensorFlow's global seed plays no part (and 0 is a seed like any other)
    assert order(1, 3) == first  # built anew (a resumed process): the same order
    assert order(0, 3) != first
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)
    assert sorted(order(1, 4)) == list(range(30))


def test_the_best_checkpoint_is_tracked_across_a_resume(folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        session.run(config(folder, run, "memory"), callbacks=lambda phase, c: [stop_after(EPOCHS_HEAD + 1)])
    best = run / "checkpoints" / "finetune_best.keras"
    saved, recorded = best.read_bytes(), checkpoints.Progress.load(run).best_score

    # Every epoch after the resume validates worse than any before it.
    evaluate = keras.Model.evaluate

    def worse(self, *args, **kwargs):
        logs = evaluate(self, *args, **kwargs)
        return {**logs, "accuracy": -1.0} if kwargs.get("_use_cached_eval_dataset") else logs

    monkeypatch.setattr(keras.Model, "evaluate", worse)
    result = session.run(config(folder, run, "memory"), resume=True)
    finetune = result.metrics["phases"]["finetune"]
    history = [r for r in json.loads((run / "history.json").read_text()) if r["phase"] == "finetune"]
    assert [r["val_accuracy"] for r in history][1:] == [-1.0] * (EPOCHS_FINETUNE - 1)
    assert best.read_bytes() == saved  # never replaced by a worse epoch: a resumed best of None would
    assert (finetune["best_epoch"], finetune["best_val_accuracy"]) == (EPOCHS_HEAD + 1, recorded)
