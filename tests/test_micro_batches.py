"""Micro-batches with accumulated gradients make the same updates as whole batches, in less memory."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_weights, assert_trained, save_tiny_pretrained

from flowerft.config_files import make_config
from flowerft.errors import ConfigError
from flowerft.training import session
from flowerft.training.micro_batches import PerBatchSchedule, split_batches
from flowerft.training.optimizer import learning_rate_schedule


def config(folder, run, **values):
    # A fast per-step decay and a tight clipnorm: a schedule counting micro-batches, or clipping
    # each micro-batch instead of the batch's average, would change the weights. 18 training
    # images in batches of 4 end each epoch with a short batch of 2. A weights file stands for
    # pretrained weights (BatchNorm frozen, which micro-batches need; tiny_backbone builds the base
    # and loads it).
    pretrained = folder.parent / "pretrained.weights.h5"
    if not pretrained.exists():
        save_tiny_pretrained(pretrained)
    return make_config(data_dir=str(folder), weights=str(pretrained), backbone="mobilenet", image_size=32, batch_size=4,
                       epochs_head=1, epochs_finetune=2, lr_finetune=0.05, decay_finetune=0.3, clipnorm=0.05,
                       run_dir=str(run), shuffle_buffer=8, tensorboard=False, **values)


def test_micro_batches_end_with_the_weights_of_whole_batches(folder, tmp_path, tiny_backbone):
    whole = session.run(config(folder, tmp_path / "whole"))
    session.run(config(folder, tmp_path / "micro", micro_batch=2))
    assert whole.metrics["split_sizes"]["train"] % 4 != 0  # the short last batch is exercised
    assert_trained(tmp_path / "whole")  # the base and the head learned: equal weights mean something
    assert_same_weights(tmp_path / "whole", tmp_path / "micro", rtol=1e-4, atol=1e-5)
    val_loss = lambda run: [row["val_loss"] for row in json.loads((run / "history.json").read_text())]  # noqa: E731
    assert val_loss(tmp_path / "micro") == pytest.approx(val_loss(tmp_path / "whole"), rel=1e-4)


def test_the_schedule_sees_whole_batches_when_keras_counts_micro_batches():
    base = learning_rate_schedule("inverse_time", 0.1, decay=0.5)
    per_batch = PerBatchSchedule(base, 4)
    # Keras updates at micro-batch counts 3, 7, 11, ...: batches 0, 1, 2.
    assert [float(per_batch(4 * n + 3)) for n in range(3)] == pytest.approx([float(base(n)) for n in range(3)])
    restored = PerBatchSchedule.from_config(per_batch.get_config())
    assert float(restored(7)) == pytest.approx(float(base(1)))


def test_a_short_batch_is_padded_with_weightless_images():
    images = tf.reshape(tf.range(10 * 2, dtype=tf.float32), (10, 2))
    ds = tf.data.Dataset.from_tensor_slices((images, tf.range(10))).batch(4)  # 4, 4, 2
    micro = list(split_batches(ds, batch_size=4, micro_batch=2))
    assert int(split_batches(ds, 4, 2).cardinality()) == len(micro) == 6
    assert [list(w.numpy()) for _, _, w in micro] == [[1, 1]] * 4 + [[2, 2], [0, 0]]
    np.testing.assert_array_equal(micro[4][0], images[8:10])
    assert list(micro[5][1].numpy()) == [0, 0]  # padding: any label, weight 0


def test_a_micro_batch_must_divide_the_batch():
    with pytest.raises(ConfigError, match="micro_batch: must divide batch_size"):
        make_config(batch_size=32, micro_batch=12)
    with pytest.raises(ConfigError, match="micro_batch: must be 1 or more"):
        make_config(micro_batch=0)
