"""The tf.data option every flowerft pipeline runs with: autotuning off.

TensorFlow's autotuner (on by default) runs a thread per iterator that re-tunes at an interval
doubling up to a minute; destroying the iterator waits for that thread, which was seen to sleep
out its interval. Keras destroys one at the start of every epoch and after every validation
pass, and the head's features, the memory cache and the source check each end a long pass.
Measured on this project's 2-core CPU (TensorFlow 2.21, `python benchmarks/autotune_stall.py`):
after a 43.8 s Xception inference pass over 2,750 images, deleting the iterator blocked for 38.2 s
with no CPU in use, and 4 epochs of Keras `fit` took 297.3 s against 254.9 s without autotuning.

Without it, a `num_parallel_calls=AUTOTUNE` map runs on as many threads as there are
schedulable cores (at most 16) and `prefetch(AUTOTUNE)` still grows its own buffer; batches,
their order and every value are unchanged.
"""

from __future__ import annotations

import tensorflow as tf


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
