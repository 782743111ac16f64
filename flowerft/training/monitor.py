"""The validation score a run watches: which epoch is a phase's best, and when a phase stops early.

`monitor` (config) names it: accuracy, balanced_accuracy or loss. Everything that compares epochs
(the best checkpoint, the divergence guard's fallback, early stopping, each phase's summary and
which phase wins) compares `score`s: the monitored value, turned so that higher is better.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from flowerft.config import MONITORS


def key(monitor: str) -> str:
    """The Keras log key of a monitor: val_accuracy, val_balanced_accuracy, val_loss."""
    return MONITORS[monitor][0]


def score(row: dict[str, Any] | None, monitor: str) -> float | None:
    """An epoch's (logs or history row) monitored value as a higher-is-better number; None if missing or not finite."""
    name, higher_is_better = MONITORS[monitor]
    value = (row or {}).get(name)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value) if higher_is_better else -float(value)


class BalancedAccuracy(keras.metrics.Metric):
    """The mean over classes of each class's recall: sklearn's balanced_accuracy_score, as a Keras metric.

    Accuracy on a set whose largest class is 16x its smallest can be high for a model that never
    predicts the small classes; this cannot. Classes absent from the labels seen are left out of
    the mean, as sklearn leaves them out. Sample weights (class weights in training) are ignored:
    the score is balanced by construction. Labels may be class indices or one-hot/soft rows.
    """

    def __init__(self, n_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = n_classes
        self.seen = self.add_variable(shape=(n_classes,), initializer="zeros", name="seen")
        self.right = self.add_variable(shape=(n_classes,), initializer="zeros", name="right")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.n_classes:
            y_true = ops.argmax(y_true, axis=-1)  # one-hot or mixed (MixUp) rows: the dominant class
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        truth = ops.one_hot(y_true, self.n_classes, dtype="float32")
        self.seen.assign_add(ops.sum(truth, axis=0))
        self.right.assign_add(ops.sum(truth * ops.cast(ops.expand_dims(predicted == y_true, -1), "float32"), axis=0))

    def result(self):
        present = ops.cast(self.seen > 0, "float32")
        recalls = ops.divide_no_nan(self.right, self.seen)
        return ops.divide_no_nan(ops.sum(recalls * present), ops.sum(present))

    def reset_state(self):
        self.seen.assign(ops.zeros_like(self.seen))
        self.right.assign(ops.zeros_like(self.right))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


class EarlyStop(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping, resumable: it starts from the epochs of the phase already done.

    Keras's own forgets its count when the process ends; a resumed run replays the phase's saved
    history rows through the same rule, so it stops where the uninterrupted run would. It keeps
    no weights: the phase's best checkpoint is on disk (recipe.fit_phase goes back to it).
    """

    def __init__(self, monitor: str, patience: int, min_delta: float, history: list[dict[str, Any]]):
        super().__init__(monitor=key(monitor), patience=patience, min_delta=min_delta,
                         mode="max" if MONITORS[monitor][1] else "min")
        self.history = history
        self.reason: str | None = None
        self.monitor_name = monitor

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:  # set once: it also turns min_delta's sign for "min"
            self._set_monitor_op()
        for row in self.history:
            value = row.get(self.monitor)
            if value is None:
                continue
            if bool(self._is_improvement(value, self.best)):
                self.best, self.wait = value, 0
            else:
                self.wait += 1

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.model.stop_training and self.stopped_epoch == epoch:
            epochs = f"{self.wait} epoch{'s' if self.wait != 1 else ''}"
            self.reason = f"no better validation {self.monitor_name.replace('_', ' ')} for {epochs} (patience {self.patience})"
