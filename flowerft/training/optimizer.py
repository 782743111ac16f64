"""The optimizer a phase compiles with: SGD with momentum on a per-step schedule, clipping after
the replicas' gradients are summed, and gradient accumulation for micro-batches.

Each phase compiles afresh (`compile_for_phase`): after `trainable` changes Keras needs a
recompile, and the old optimizer's momentum belongs to other variables and another rate.
"""

from __future__ import annotations

import keras

from flowerft.training.micro_batches import PerBatchSchedule
from flowerft.training.monitor import BalancedAccuracy


def learning_rate_schedule(
    schedule: str, lr: float, *, decay: float = 0.0, steps: int | None = None, warmup_steps: int = 0
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The per-step learning rate of one phase of `steps` optimizer steps.

    "inverse_time" is the book's `SGD(lr=..., decay=...)`, lr / (1 + decay * step), which Keras 3
    spells InverseTimeDecay(lr, decay_steps=1, decay_rate=decay). "cosine" climbs linearly from 0
    to lr over `warmup_steps`, then falls along a half cosine to 0 at step `steps`.
    """
    if schedule == "inverse_time":
        return keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if not steps:
        raise ValueError("a cosine schedule needs the phase's number of steps")
    warmup_steps = min(warmup_steps, steps - 1)
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    # Keras's warm-up goes from initial_learning_rate to warmup_target, then decays over decay_steps.
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup_steps, warmup_target=lr, warmup_steps=warmup_steps
    )


def clip_after_summing_replicas(optimizer: keras.optimizers.Optimizer) -> None:
    """Clip each variable's gradient once the replicas' gradients are summed, as one device would.

    Keras clips in `optimizer.apply`, before the tf.distribute all-reduce: 2 replicas would clip
    their half-batch gradients each, and reach other weights than 1 device clipping the whole
    batch's (tests/test_distribute.py caught it). `update_step` gets each variable's summed
    gradient, so the same per-tensor clip (`clipnorm`) moves there; with one device nothing changes.
    The optimizer stays a plain SGD, so saved models load anywhere.
    """
    update_step = optimizer.update_step
    optimizer._clip_gradients = lambda grads: grads
    optimizer.update_step = lambda gradient, variable, learning_rate: update_step(
        optimizer._clip_by_norm(gradient), variable, learning_rate)


def compile_for_phase(
    model: keras.Model,
    *,
    lr: float,
    decay: float,
    momentum: float,
    clipnorm: float | None,
    schedule: str = "inverse_time",
    steps: int | None = None,
    warmup_steps: int = 0,
    label_smoothing: float = 0.0,
    one_hot: bool = False,
    ema_momentum: float | None = None,
    jit_compile: bool = False,
    micro_batches: int = 1,
    n_classes: int | None = None,
    rate: keras.optimizers.schedules.LearningRateSchedule | None = None,
) -> None:
    """A fresh SGD for this phase: after `trainable` changes, Keras needs a recompile.

    With `label_smoothing`, or `one_hot` (soft labels: mixup, cutmix), the loss takes one-hot labels
    (Keras's sparse cross-entropy has neither): the phase's datasets must then yield them (see
    one_hot_labels). With `micro_batches` > 1 each update accumulates that many micro-batches
    (micro_batches.py). With `ema_momentum` the optimizer keeps a moving average of the weights,
    which fit leaves in the model at its end (callbacks.SwapEMAWeightsEachEpoch shows it to validation).
    `rate` replaces the schedule (the learning-rate sweep's). Given `n_classes`, balanced accuracy is
    measured beside accuracy (what --monitor balanced_accuracy watches).
    """
    rate = rate or learning_rate_schedule(schedule, lr, decay=decay, steps=steps, warmup_steps=warmup_steps)
    accumulate = {}
    if micro_batches > 1:
        rate = PerBatchSchedule(rate, micro_batches)
        accumulate = dict(gradient_accumulation_steps=micro_batches)
    ema = {} if ema_momentum is None else dict(use_ema=True, ema_momentum=ema_momentum)
    optimizer = keras.optimizers.SGD(learning_rate=rate, momentum=momentum, clipnorm=clipnorm or None,
                                     **accumulate, **ema)
    if optimizer.clipnorm:
        clip_after_summing_replicas(optimizer)
    if label_smoothing or one_hot:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(
        optimizer=optimizer,
        loss=loss,
        # Keras picks sparse or one-hot accuracy from the labels' shape.
        metrics=["accuracy", *([BalancedAccuracy(n_classes)] if n_classes else [])],
        jit_compile=jit_compile,  # Keras's "auto" would turn XLA on for GPUs; we keep it a choice
    )
