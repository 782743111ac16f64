"""Keras callbacks that the training phases need beyond Keras's own."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from flowerft.training.checkpoints import save_model_atomic, save_weights_atomic
from flowerft.training.monitor import score


class DivergenceGuard(keras.callbacks.Callback):
    """Stop a phase whose loss turns NaN/inf or explodes, and go back to its best weights.

    We measured fine-tuning after an lr-0.2 head fall from ~75% to chance: once the loss
    blows up, every further step only destroys what the model knew. "Explodes" means the
    running loss exceeds `factor` times the phase's first reported loss.
    """

    def __init__(self, factor: float, monitor: str = "accuracy"):
        super().__init__()
        self.factor = factor
        self.monitor = monitor
        self.reason: str | None = None

    def on_train_begin(self, logs=None):
        self.reason = None
        self.reference: float | None = None
        self.best = -math.inf
        # The phase's starting point is the fallback if no epoch ever finishes cleanly.
        self.best_weights = self.model.get_weights()

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        if self.reference is None and math.isfinite(loss):
            self.reference = loss
        if not math.isfinite(loss):
            self.reason = f"loss became {loss}"
        elif self.reference and loss > self.factor * self.reference:
            self.reason = f"loss exploded to {loss:.4g} ({self.factor:g}x its start {self.reference:.4g})"
        if self.reason:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        value = score(logs, self.monitor)
        if self.reason is None and value is not None and value > self.best:
            self.best = value
            self.best_weights = self.model.get_weights()
        if self.reason:
            # Now, not at the end of training: the callbacks after this one (the epoch's
            # saved state) must see the restored weights, never the diverged ones.
            self.model.set_weights(self.best_weights)

    def on_train_end(self, logs=None):
        if self.reason:
            self.model.set_weights(self.best_weights)


class BestCheckpoint(keras.callbacks.Callback):
    """Save a classifier whenever the monitored validation score beats the best so far, atomically.

    Unlike keras.callbacks.ModelCheckpoint it can save a model other than the one `fit`
    trains (the full classifier while a head trains on cached features), it starts from a
    known best when a run resumes (keras-team/keras #17012), and a crash mid-save never
    leaves a truncated file. Each save goes to `staging / <stem>-e<epoch>.keras` and is
    `pending` until the caller commits the epoch and moves it into place (checkpoints.EpochState),
    so the checkpoint and the recorded best never disagree. An epoch the `guard` stopped for
    divergence is never the best: its validation ran on the diverged weights.

    With `weights_only`, each save is `<stem>-e<epoch>.weights.h5` of `model_to_save` alone (the
    head, while the base is frozen: kilobytes, not the whole network), which stays in `staging`;
    checkpoints.publish_staged_best writes the full classifier from it once, when the phase ends.
    """

    def __init__(self, model_to_save: keras.Model, staging: Path, stem: str, best: float | None = None,
                 guard: DivergenceGuard | None = None, monitor: str = "accuracy", weights_only: bool = False):
        super().__init__()
        self.model_to_save = model_to_save
        self.staging = Path(staging)
        self.stem = stem
        self.best = best  # a monitor.score: higher is better
        self.guard = guard
        self.monitor = monitor
        self.weights_only = weights_only
        self.pending: Path | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = score(logs, self.monitor)
        if self.guard is not None and self.guard.reason:
            return
        if value is not None and (self.best is None or value > self.best):
            self.best = value
            if self.weights_only:
                self.pending = self.staging / f"{self.stem}-e{epoch + 1}.weights.h5"
                save_weights_atomic(self.model_to_save, self.pending)
            else:
                self.pending = self.staging / f"{self.stem}-e{epoch + 1}.keras"
                save_model_atomic(self.model_to_save, self.pending)


class ShuffleEpoch(keras.callbacks.Callback):
    """Tell the training pipeline which epoch begins, so its order is a function of (seed, epoch).

    Keras starts each epoch's data iterator after on_epoch_begin, and `epoch` counts over
    both phases (fit's initial_epoch), so a resumed run shuffles its epochs as the
    uninterrupted run did (see pipelines.shuffle_for_epoch).
    """

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class SwapEMAWeightsEachEpoch(keras.callbacks.SwapEMAWeights):
    """Keras's SwapEMAWeights(swap_on_epoch=True), for an optimizer with use_ema=True, that can start swapped.

    Validation runs on the EMA weights, and from each epoch's end to the next one's start the model
    holds them (the raw weights wait in the optimizer's average variables): the callbacks after this
    one check, checkpoint and save them. A `resumed` phase's saved state (checkpoints.EpochState) was
    written that way round, so this starts as if it had just swapped: the next epoch swaps the raw
    weights back in by the same arithmetic as the run that never stopped.
    """

    def __init__(self, resumed: bool):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed  # Keras's own flag: it has no public way to start swapped

    def on_train_begin(self, logs=None):
        # At its end fit copies the average variables into the model. Keras's callback makes them the
        # EMA first only at the planned last epoch: a phase stopped sooner would end on its raw weights.
        optimizer = self.model.optimizer
        finalize = optimizer.finalize_variable_values

        def finalize_unless_swapped(variables):
            if not self._ema_weights_in_model:
                finalize(variables)

        optimizer.finalize_variable_values = finalize_unless_swapped
