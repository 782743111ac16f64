"""Micro-batches: the update of a --batch-size batch, computed a few images at a time.

With BatchNorm frozen (model.unfreeze_base) no layer looks across a batch, so the mean
gradient of a batch is the mean of its micro-batches' mean gradients when they are of equal
size. Keras's `gradient_accumulation_steps = k` sums k micro-batch gradients, divides by k,
then clips (clipnorm applies to that average, not to each micro-batch) and makes one SGD
step (momentum once per batch). Two things would still differ, and are handled here:

* Keras counts `iterations` per micro-batch internally and calls the learning-rate schedule
  with that count; PerBatchSchedule gives the schedule the number of whole batches instead,
  so the per-step decay (or cosine) sees the steps it would see without micro-batches.
* An epoch's last batch is usually short (r < batch_size images): split as it is, it would
  give fewer or smaller micro-batches and a wrong average. It is padded to batch_size with
  images of weight 0, and its r real images weigh batch_size / r: Keras's loss divides the
  weighted sum by the micro-batch size, so the k micro-batches average to the mean over
  the r images, exactly the short batch's gradient. Weighted accuracy ignores the padding.

Only the training data is split; validation runs on whole batches (no gradients there).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def accumulation_steps(batch_size: int, micro_batch: int | None) -> int:
    """Micro-batches per batch: 1 means no accumulation (config checks that micro_batch divides batch_size)."""
    return batch_size // micro_batch if micro_batch else 1


@keras.saving.register_keras_serializable(package="flowerft")
class PerBatchSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` called with whole batches done, when Keras counts micro-batches (steps per batch each).

    The optimizer updates at micro-batch counts k*n + k - 1 (n = 0, 1, ...), where this
    gives schedule(n): batch n's rate, as without accumulation.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, steps: int):
        self.schedule = schedule
        self.steps = steps

    def __call__(self, step):
        return self.schedule(step // self.steps)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["steps"])


def split_batches(ds: tf.data.Dataset, batch_size: int, micro_batch: int) -> tf.data.Dataset:
    """Batches of (x, y) -> micro-batches of (x, y, weight), `batch_size // micro_batch` per batch."""
    steps = accumulation_steps(batch_size, micro_batch)

    def pad_and_split(x, y):
        real = tf.shape(x)[0]
        missing = batch_size - real

        def padded(t):
            tail = t.shape[1:]  # static (image size, classes): the model wants to see it
            pad = tf.zeros(tf.concat([[missing], tf.shape(t)[1:]], 0), t.dtype)
            t = tf.reshape(tf.concat([t, pad], 0), tf.concat([[steps, micro_batch], tf.shape(t)[1:]], 0))
            return tf.ensure_shape(t, [steps, micro_batch, *tail])

        weight = tf.where(tf.range(batch_size) < real, tf.cast(batch_size / real, tf.float32), 0.0)
        return tf.data.Dataset.from_tensor_slices((padded(x), padded(y), tf.reshape(weight, [steps, micro_batch])))

    n = ds.cardinality()
    ds = ds.flat_map(pad_and_split)
    if n >= 0:  # flat_map forgets the count; fit, the schedule and the progress display need it
        ds = ds.apply(tf.data.experimental.assert_cardinality(n * steps))
    return ds.prefetch(tf.data.AUTOTUNE)
