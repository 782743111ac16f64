"""The recipe: train a new head on the frozen base, then unfreeze the base and fine-tune it.

`train_head` and `fine_tune` are the two phases; `fit_phase` is the one place a phase compiles
and fits. Both phases may train on what the frozen part computes once (flowerft/training/cached.py)
instead of on images: the same batches, shuffle and schedule, so the same weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from flowerft.config import AUTO, DEFAULTS, Config
from flowerft.data import pipelines
from flowerft.errors import FlowerftError
from flowerft.model import freeze_base
from flowerft.runs import layout
from flowerft.training import cached, checkpoints, distribute, lr_find, micro_batches, partial_finetune
from flowerft.training.callbacks import BestCheckpoint, DivergenceGuard, ShuffleEpoch, SwapEMAWeightsEachEpoch
from flowerft.training.checkpoints import Progress
from flowerft.training.monitor import EarlyStop
from flowerft.training.optimizer import compile_for_phase
from flowerft.training.summary import PhaseResult

HEAD, FINETUNE = "head", "finetune"
# Builds extra callbacks for a phase (the CLI's progress display); gets the phase name and the
# run's config (a resumed run's own, which may differ from what the command line built).
CallbackFactory = Callable[[str, Config], list[keras.callbacks.Callback]]


@dataclass(frozen=True)
class Setup:
    """What every phase of a run shares."""

    config: Config
    run_dir: Path
    callbacks: CallbackFactory
    epoch: tf.Variable | None  # the epoch the training pipelines shuffle for (set by callbacks.ShuffleEpoch)
    notify: Callable[[str], None] = lambda message: None  # a line for the person watching

    @property
    def cache_dir(self) -> Path:
        """The run's decoded images and activations on disk (cache: file); removed when it ends."""
        return self.run_dir / "cache"


@dataclass(frozen=True)
class Data:
    train: tf.data.Dataset  # shuffled for each epoch, augmented if the config says so
    valid: tf.data.Dataset
    in_order: tf.data.Dataset | None = None  # the training images unaugmented, in source order (None: augmented)
    sizes: tuple[int, int] = (0, 0)  # (train, valid) images
    class_weight: dict[int, float] | None = None  # Keras fit's class_weight (class_weights.balanced), or None


@dataclass(frozen=True)
class Schedule:
    """How long and how fast one phase trains."""

    epochs: int
    initial_epoch: int  # the epochs before it: fit counts epochs over both phases
    lr: float
    decay: float
    warmup_steps: int = 0


def train_head(model, base, data: Data, setup: Setup, resume: Progress | None = None) -> PhaseResult:
    """Phase 1: only the new head learns; the base is frozen (its BatchNorm in inference mode).

    Without augmentation, the head trains on the base's pooled features, computed once.
    """
    freeze_base(base)
    if resume and resume.phase == FINETUNE:
        return PhaseResult(**resume.head)  # it finished before the run stopped
    config = setup.config
    schedule = Schedule(config.epochs_head, initial_epoch=0, lr=config.lr_head, decay=config.decay_head)
    options = dict(resume=resume, class_weight=data.class_weight)
    if data.in_order is None or config.epochs_head == 0:
        return fit_phase(HEAD, model, data.train, data.valid, setup, schedule, **options)
    return _fit_cached(HEAD, cached.head_features(model, data, setup), model, setup, schedule, **options)


def fine_tune(
    model, base, data: Data, setup: Setup, *, head: PhaseResult, resume: Progress | None = None,
) -> PhaseResult:
    """Phase 2: the base (or its top: partial_finetune.py) learns too, at a lower rate, with a fresh optimizer.

    BatchNormalization layers stay frozen on pretrained weights (model.unfreeze_base says why)
    and learn from scratch (model.batchnorm_learns). A partial fine-tune without augmentation
    trains its top on the frozen part's activations, computed once.
    """
    config = setup.config
    parts = partial_finetune.unfreeze(base, config)
    resume = resume if resume and resume.phase == FINETUNE else None
    options = dict(resume=resume, head=asdict(head), class_weight=data.class_weight)
    # cache: none turns the activations off (the head's pooled features are small: always in memory).
    top = None
    if parts and data.in_order is not None and config.cache != "none" and config.epochs_finetune:
        top = cached.top_activations(model, parts, data, setup)
    lr = config.lr_finetune
    if lr == AUTO and config.epochs_finetune:  # a range test on what the phase trains, before it trains
        lr = _auto_rate(top.model if top else model, top.train if top else data.train, setup, data.class_weight)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch(data.train)) if config.epochs_finetune else 0
    schedule = Schedule(config.epochs_finetune, initial_epoch=config.epochs_head, lr=lr,
                        decay=config.decay_finetune, warmup_steps=warmup_steps)
    if top is not None:
        return _fit_cached(FINETUNE, top, model, setup, schedule, **options)
    return fit_phase(FINETUNE, model, data.train, data.valid, setup, schedule, **options)


def _fit_cached(phase: str, frozen: cached.Cached, model, setup: Setup, schedule: Schedule, **options) -> PhaseResult:
    result = fit_phase(phase, frozen.model, frozen.train, frozen.valid, setup, schedule, save=model, **options)
    result.wall_time_s = round(result.wall_time_s + frozen.seconds, 3)
    return result


def fit_phase(
    phase: str, model, train_ds, valid_ds, setup: Setup, schedule: Schedule,
    *, save=None, resume: Progress | None = None, head: dict | None = None, class_weight: dict | None = None,
) -> PhaseResult:
    """Fit `model` for a phase (or what is left of it); checkpoints hold `save` (default `model`)."""
    config, run_dir = setup.config, setup.run_dir
    result = PhaseResult(phase=phase, epochs_planned=schedule.epochs, monitor=config.monitor)
    if schedule.epochs == 0:
        return result
    steps = schedule.epochs * steps_per_epoch(train_ds) if config.schedule == "cosine" else None
    train_ds, valid_ds = compile_phase(phase, model, train_ds, valid_ds, config, schedule, steps=steps)
    progress = resume or Progress(phase, head=head)
    checkpoint = Path(layout.CHECKPOINTS) / f"{phase}_best.keras"
    if resume:
        checkpoints.finish_commit(run_dir, progress, run_dir / checkpoint)
    if progress.weights:
        with model.distribute_strategy.scope():
            checkpoints.load_fitted(model, run_dir, progress)  # weights, momentum and step count
    guard = DivergenceGuard(config.divergence_factor, config.monitor)
    # A head fitted on features stages only its own weights each better epoch (the frozen base is
    # the run's initial one); the full classifier is written once, when the phase ends.
    staged = keras.Model(model.inputs, model.outputs) if phase == HEAD and save is not None else None
    to_save = staged if staged is not None else save if save is not None else model
    best = BestCheckpoint(to_save, run_dir / checkpoints.STATE, f"{phase}_best", best=progress.best_score,
                          guard=guard, monitor=config.monitor, weights_only=staged is not None)
    early = EarlyStop(config.monitor, config.patience, config.min_delta, progress.history) if config.patience else None
    epoch_state = checkpoints.EpochState(run_dir, progress, best, guard, published=run_dir / checkpoint, early_stop=early)
    callbacks = [ShuffleEpoch(setup.epoch), guard, best, *([early] if early else []), epoch_state,  # see EpochState
                 *setup.callbacks(phase, config)]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False))
    if config.ema:  # before the guard and the checkpoints: they then see (and save) the EMA weights
        callbacks.insert(1, SwapEMAWeightsEachEpoch(resumed=progress.weights is not None))
    # A diverged phase, or one that early stopping ended, stays over.
    if progress.epochs_done < schedule.epochs and not progress.stopped and not progress.ended_early:
        with distribute.keras_fit(model, train_ds):
            model.fit(
                train_ds,
                validation_data=valid_ds,
                initial_epoch=schedule.initial_epoch + progress.epochs_done,  # no finished epoch runs twice
                epochs=schedule.initial_epoch + schedule.epochs,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles; Keras cannot shuffle a Dataset
                class_weight=class_weight,
                verbose=0,
            )
    if staged is not None:
        checkpoints.publish_staged_best(run_dir, progress, staged, save, run_dir / checkpoint)
    if progress.ended_early:  # early stopping keeps the best weights: the next phase (and final.keras) go on from them
        checkpoints.load_best(to_save, run_dir, progress, run_dir / checkpoint)
    result.ended_early = progress.ended_early
    result.stopped_because = guard.reason or progress.stopped
    result.add_history(progress.history, diverged=result.stopped_because is not None)
    result.wall_time_s = progress.wall_time_s
    if (run_dir / checkpoint).exists():
        result.checkpoint = checkpoint.as_posix()
    return result


def compile_phase(phase: str, model, train_ds, valid_ds, config: Config, schedule: Schedule | None, *, steps=None, rate=None):
    """Compile `model` for a phase (at `schedule`, or at the learning-rate schedule `rate`); its batches to fit."""
    accumulate = _accumulation(phase, config)
    # Recompile after changing `trainable`, with a new optimizer: the old one's momentum
    # belongs to other variables and another learning rate.
    with model.distribute_strategy.scope():  # the optimizer's variables are the strategy's
        compile_for_phase(
            model, lr=schedule.lr if schedule else 0.0, decay=schedule.decay if schedule else 0.0, rate=rate,
            momentum=config.momentum, clipnorm=config.clipnorm, schedule=config.schedule, steps=steps,
            warmup_steps=schedule.warmup_steps if schedule else 0, label_smoothing=config.label_smoothing,
            jit_compile=config.jit_compile, micro_batches=accumulate, n_classes=model.output_shape[-1],
            one_hot=soft_labels(config),
            # A sweep (rate given) measures the raw weights' loss: no average to keep.
            ema_momentum=config.ema_momentum if config.ema and rate is None else None,
        )
    if soft_labels(config):  # the loss takes one-hot labels: validation's too, so its loss is the same
        train_ds, valid_ds = (one_hot_labels(ds, model.output_shape[-1]) for ds in (train_ds, valid_ds))
    if accumulate > 1:  # memory-bounded fine-tuning: same updates (see flowerft/training/micro_batches.py)
        train_ds = micro_batches.split_batches(train_ds, config.batch_size, config.micro_batch)
    return train_ds, valid_ds


def sweep_rates(phase: str, model, train_ds, config: Config, class_weight: dict | None = None) -> lr_find.Sweep:
    """The learning-rate range test (lr_find.py) on `model` compiled as `phase` would compile it."""
    rate = lr_find.exponential_rate(config.lr_find_steps)
    train_ds, _ = compile_phase(phase, model, train_ds, train_ds, config, None, rate=rate)
    accumulate = _accumulation(phase, config)
    return lr_find.sweep(model, train_ds, config.lr_find_steps, class_weight=class_weight, updates_per_step=accumulate)


def _auto_rate(model, train_ds, setup: Setup, class_weight: dict | None) -> float:
    """lr_finetune: auto: the rate this run found before (a resume), else a sweep's, recorded in the run dir."""
    found = lr_find.recorded_rate(setup.run_dir)
    if found is None:
        setup.notify(f"finding the fine-tuning rate: a {setup.config.lr_find_steps}-step learning-rate sweep "
                     "(every weight is put back after it)")
        try:
            result = sweep_rates(FINETUNE, model, train_ds, setup.config, class_weight)
        except FlowerftError as e:  # too few clean steps to read a rate from: the run goes on at the default
            found = DEFAULTS["lr_finetune"]
            setup.notify(f"{e}; fine-tuning at the default rate {found:g} instead")
        else:
            lr_find.write(result, setup.run_dir, "Fine-tuning learning-rate sweep")
            setup.notify(result.line())
            found = result.suggested
        lr_find.record_rate(setup.run_dir, found)  # before training: a resume trains at the same rate
    return found


def _accumulation(phase: str, config: Config) -> int:
    """Micro-batches per update: fine-tuning's (micro_batches.py); the head phase's batches are whole."""
    return micro_batches.accumulation_steps(config.batch_size, config.micro_batch) if phase == FINETUNE else 1


def steps_per_epoch(ds: tf.data.Dataset) -> int:
    steps = int(ds.cardinality())
    if steps < 1:  # our pipelines come from finite, counted sources; anything else is a bug
        raise FlowerftError(f"the training data has no known number of batches ({steps})")
    return steps


def soft_labels(config: Config) -> bool:
    """Whether a phase's loss takes one-hot labels: smoothed, or mixed by the augmentation."""
    return bool(config.label_smoothing) or pipelines.mixes_labels(config.augment)


def one_hot_labels(ds: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    """`ds` with one-hot labels; those the augmentation already mixed (one-hot) stay as they are."""
    if len(ds.element_spec[1].shape) > 1:
        return ds
    return ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)
