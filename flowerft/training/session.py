"""The recipe: train a new head on the frozen base, then unfreeze and fine-tune.

`run(config)` does the whole job and leaves everything in the run directory
(see flowerft/runs/layout.py for its layout); `run(config, resume=True)` continues a run that
was killed or interrupted from its last finished epoch (see flowerft/training/checkpoints.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf

from flowerft import machine, precision
from flowerft.backbones.registry import is_own
from flowerft.config import DEFAULTS, Config, to_dict
from flowerft.config_files import absolute_paths, make_config
from flowerft.data import pipelines, sources, splitting
from flowerft.errors import ConfigError, FlowerftError, Interrupted, WorkerLost, first_line
from flowerft.model import batchnorm_learns, build_model, compile_for_phase, freeze_base
from flowerft.runs import layout, lock, source_record
from flowerft.training import checkpoints, distribute, micro_batches, partial_finetune, tracking
from flowerft.training.callbacks import BestCheckpoint, DivergenceGuard, ShuffleEpoch
from flowerft.training.checkpoints import Progress
from flowerft.training.summary import PhaseResult, summarize

HEAD, FINETUNE = "head", "finetune"
# Builds extra callbacks for a phase (the CLI's progress display); gets the phase name and the
# run's config (a resumed run's own, which may differ from what the command line built).
CallbackFactory = Callable[[str, Config], list[keras.callbacks.Callback]]


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    finished_before: bool = False  # `--resume` found the run finished: nothing was trained


def train_head(
    model, base, train_ds, valid_ds, config: Config, run_dir: Path, extra: CallbackFactory,
    *, shuffle_epoch: tf.Variable, unshuffled_train_ds=None, resume: Progress | None = None,
) -> PhaseResult:
    """Phase 1: only the new head learns; the base is frozen (its BatchNorm in inference mode).

    Given `unshuffled_train_ds` (the training images in source order, not augmented), the
    head trains on features computed once (see fit_head_on_features); otherwise on images.
    """
    freeze_base(base)
    options = dict(epochs=config.epochs_head, initial_epoch=0, lr=config.lr_head, decay=config.decay_head,
                   shuffle_epoch=shuffle_epoch, resume=resume)
    if unshuffled_train_ds is None or config.epochs_head == 0:
        return _fit_phase(HEAD, model, train_ds, valid_ds, config, run_dir, extra, **options)
    return fit_head_on_features(model, unshuffled_train_ds, valid_ds, config, run_dir, extra, **options)


def fit_head_on_features(model, unshuffled_train_ds, valid_ds, config, run_dir, extra, **options) -> PhaseResult:
    """The head phase without running the frozen base every epoch.

    A frozen base (BatchNorm in inference mode, no augmentation) maps each image to the same
    pooled features every epoch, so compute them once and fit the Dense head on them with the
    same optimizer, schedule, batches and per-epoch shuffle as the plain loop: the indices are
    shuffled exactly as the image pipeline shuffles its items, so each step sees the same images.
    """
    start = time.perf_counter()
    with model.distribute_strategy.scope():  # the head trains under the model's strategy
        extractor = keras.Model(model.input, model.get_layer("avg_pool").output)
        extract = distribute.local_inference(extractor)  # traced once, for both splits
        train_features, train_labels = _features(extract, unshuffled_train_ds)
        valid_features, valid_labels = _features(extract, valid_ds)
        features = keras.Input(shape=(int(train_features.shape[1]),), name="features")
        head = keras.Model(features, model.get_layer("predictions")(features), name="head")  # shares its weights
    train_ds = pipelines.indexed_pipeline(
        train_features, train_labels, batch_size=config.batch_size, shuffle_buffer=config.shuffle_buffer,
        seed=config.seed, epoch=options["shuffle_epoch"],
    )
    valid_ds = pipelines.indexed_pipeline(valid_features, valid_labels, batch_size=config.batch_size)
    feature_seconds = time.perf_counter() - start
    result = _fit_phase(HEAD, head, train_ds, valid_ds, config, run_dir, extra, save=model, **options)
    result.wall_time_s = round(result.wall_time_s + feature_seconds, 3)
    return result


def _features(extract: Callable[[tf.Tensor], tf.Tensor], ds) -> tuple[tf.Tensor, tf.Tensor]:
    features, labels = [], []
    for images, y in ds:
        features.append(tf.cast(extract(images), tf.float32))
        labels.append(y)
    return tf.concat(features, 0), tf.concat(labels, 0)


def fine_tune(
    model, base, train_ds, valid_ds, config: Config, run_dir: Path, extra: CallbackFactory,
    *, shuffle_epoch: tf.Variable, head: PhaseResult, resume: Progress | None = None,
    unshuffled_train_ds=None, sizes: tuple[int, int] | None = None,
) -> PhaseResult:
    """Phase 2: the base (or its top, see flowerft/training/partial_finetune.py) learns too, at a lower rate, with a fresh optimizer.

    BatchNormalization layers stay frozen on pretrained weights (model.unfreeze_base says why)
    and learn from scratch (model.batchnorm_learns). Given
    `unshuffled_train_ds` and the (train, valid) `sizes`, a partial fine-tune trains its top
    on the frozen part's activations, computed once.
    """
    parts = partial_finetune.unfreeze(base, config)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch(train_ds)) if config.epochs_finetune else 0
    options = dict(
        epochs=config.epochs_finetune, initial_epoch=config.epochs_head,
        lr=config.lr_finetune, decay=config.decay_finetune, warmup_steps=warmup_steps, shuffle_epoch=shuffle_epoch,
        resume=resume, head=asdict(head),
    )
    if parts and unshuffled_train_ds is not None and config.epochs_finetune:
        fit = lambda top, t, v, **more: _fit_phase(FINETUNE, top, t, v, config, run_dir, extra, **more)  # noqa: E731
        return partial_finetune.fine_tune_on_activations(model, parts, unshuffled_train_ds, valid_ds, config, run_dir, fit,
                                                sizes=sizes, **options)
    return _fit_phase(FINETUNE, model, train_ds, valid_ds, config, run_dir, extra, **options)


def _fit_phase(
    phase, model, train_ds, valid_ds, config, run_dir, extra,
    *, epochs, initial_epoch, lr, decay, shuffle_epoch, warmup_steps=0, save=None, resume=None, head=None,
) -> PhaseResult:
    """Fit `model` for a phase (or what is left of it); checkpoints hold `save` (default `model`)."""
    result = PhaseResult(phase=phase, epochs_planned=epochs)
    if epochs == 0:
        return result
    steps = epochs * steps_per_epoch(train_ds) if config.schedule == "cosine" else None
    accumulate = micro_batches.accumulation_steps(config.batch_size, config.micro_batch) if phase == FINETUNE else 1
    # Recompile after changing `trainable`, with a new optimizer: the old one's momentum
    # belongs to other variables and another learning rate.
    with model.distribute_strategy.scope():  # the optimizer's variables are the strategy's
        compile_for_phase(
            model, lr=lr, decay=decay, momentum=config.momentum, clipnorm=config.clipnorm,
            schedule=config.schedule, steps=steps, warmup_steps=warmup_steps,
            label_smoothing=config.label_smoothing, jit_compile=config.jit_compile, micro_batches=accumulate,
        )
    if config.label_smoothing:  # the smoothed loss takes one-hot labels
        train_ds, valid_ds = (one_hot_labels(ds, model.output_shape[-1]) for ds in (train_ds, valid_ds))
    if accumulate > 1:  # memory-bounded fine-tuning: same updates (see flowerft/training/micro_batches.py)
        train_ds = micro_batches.split_batches(train_ds, config.batch_size, config.micro_batch)
    progress = resume or Progress(phase, head=head)
    checkpoint = Path(layout.CHECKPOINTS) / f"{phase}_best.keras"
    if resume:
        checkpoints.finish_commit(run_dir, progress, run_dir / checkpoint)
    if progress.weights:
        with model.distribute_strategy.scope():
            checkpoints.load_fitted(model, run_dir, progress)  # weights, momentum and step count
    guard = DivergenceGuard(config.divergence_factor)
    # A head fitted on features stages only its own weights each better epoch (the frozen base is
    # the run's initial one); the full classifier is written once, when the phase ends.
    staged = keras.Model(model.inputs, model.outputs) if phase == HEAD and save is not None else None
    to_save = staged if staged is not None else save if save is not None else model
    best = BestCheckpoint(to_save, run_dir / checkpoints.STATE, f"{phase}_best",
                          best=progress.best_val_accuracy, guard=guard, weights_only=staged is not None)
    epoch_state = checkpoints.EpochState(run_dir, progress, best, guard, published=run_dir / checkpoint)
    callbacks = [ShuffleEpoch(shuffle_epoch), guard, best, epoch_state, *extra(phase, config)]  # see EpochState
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False))
    if progress.epochs_done < epochs and not progress.stopped:  # a diverged phase stays over
        with distribute.keras_fit(model, train_ds):
            model.fit(
                train_ds,
                validation_data=valid_ds,
                initial_epoch=initial_epoch + progress.epochs_done,  # no finished epoch runs twice
                epochs=initial_epoch + epochs,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles; Keras cannot shuffle a Dataset
                verbose=0,
            )
    if staged is not None:
        checkpoints.publish_staged_best(run_dir, progress, staged, save, run_dir / checkpoint)
    result.stopped_because = guard.reason or progress.stopped
    result.add_history(progress.history, diverged=result.stopped_because is not None)
    result.wall_time_s = progress.wall_time_s
    if (run_dir / checkpoint).exists():
        result.checkpoint = checkpoint.as_posix()
    return result


def steps_per_epoch(ds: tf.data.Dataset) -> int:
    steps = int(ds.cardinality())
    if steps < 1:  # our pipelines come from finite, counted sources; anything else is a bug
        raise FlowerftError(f"the training data has no known number of batches ({steps})")
    return steps


def one_hot_labels(ds: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    return ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)


def check_inputs(config: Config, run_dir: Path) -> None:
    """What can be checked before any data is read or model built."""
    layout.check_writable(run_dir)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise ConfigError(f"weights: {config.weights} is neither imagenet, none nor an existing weights file")
    if is_own(config.backbone):  # before any data is read: a missing file, an unreachable preset
        from flowerft.backbones import hub_presets

        hub_presets.check_reachable(config.backbone)
        if not hub_presets.is_preset(config.backbone) and not Path(config.backbone).expanduser().is_file():
            raise ConfigError(f"backbone: {config.backbone} does not exist; give a .keras model file, a KerasHub "
                              "preset (a folder, hf://... or kaggle://...) or a built-in name (flowerft backbones)")


def resumed_config(run_dir: Path, requested: Config, given: dict[str, Any] | None = None) -> Config:
    """The run's own config; options given now must agree with it.

    `given` holds the options the user actually gave (flags and config file); without it,
    any option that differs from its default counts as given.
    """
    recorded = layout.read_yaml(run_dir / layout.CONFIG)
    saved = make_config(**recorded)
    if given is None:
        given = {k: v for k, v in to_dict(requested).items() if v != DEFAULTS[k]}
    given = absolute_paths(given)  # as the run recorded them
    # Normalised as a Config would hold them (1 is 1.0, clipnorm 0 is None), to compare like with like.
    wanted = to_dict(Config(**(to_dict(saved) | given)))
    for key, value in given.items():
        if key in ("run_dir", "runs_root", "distribute", "track") or (key == "recipe" and "recipe" not in recorded):
            continue  # where a run lives and runs is not how it trains; runs before recipes recorded values only
        if wanted[key] != getattr(saved, key):
            raise FlowerftError(
                f"{run_dir} was trained with {key}={getattr(saved, key)!r}, not {value!r}; resume with the "
                "run's own options (or none), or start a new run with another --run-dir"
            )
    # A run may resume on other hardware (a multi-GPU run on one GPU): the strategy is today's.
    # Tracking may be turned on (or off) when a run resumes: it records the run, it does not train it.
    track = {"track": given["track"]} if "track" in given else {}
    return dataclasses.replace(saved, distribute=requested.distribute, **track)


def run(
    config: Config,
    callbacks: CallbackFactory = lambda phase, config: [],
    notify: Callable[[str], None] = lambda message: None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    given: dict[str, Any] | None = None,
) -> RunResult:
    """Load the data, build the model, train both phases and write the run directory.

    With `resume`, continue the run in config.run_dir (default: the one runs/latest names)
    from its last finished epoch, start it if there is nothing to resume yet, and return a
    finished run as it is: re-issuing the same command is always safe. `given` is what the
    user asked for explicitly (see resumed_config). One process at a time trains a run dir.
    """
    distribute.check(config)
    strategy = distribute.make_strategy(config.distribute)  # first: see make_strategy
    if not distribute.is_chief(strategy):
        # Another worker of a multi-worker run: it trains in step with the chief, and what it
        # writes goes to a temporary folder (only the chief writes the run dir).
        chief_dir = Path(config.run_dir)
        with distribute.worker_folder(chief_dir, strategy) as folder:
            local = distribute.worker_copy(chief_dir, folder) if resume else folder / chief_dir.name
            config = dataclasses.replace(config, run_dir=str(local), runs_root=str(folder))
            result = _run_in(local, config, strategy, callbacks, notify, resume=resume, overwrite=False, given=given)
        return RunResult(chief_dir, result.metrics, result.finished_before)
    if resume and not config.run_dir:
        run_dir = layout.find_run(None, config.runs_root)
    else:
        run_dir = Path(config.run_dir) if config.run_dir else layout.new_run_dir(config.runs_root)
    return _run_in(run_dir, config, strategy, callbacks, notify, resume=resume, overwrite=overwrite, given=given)


def _run_in(run_dir, config, strategy, callbacks, notify, *, resume, overwrite, given) -> RunResult:
    """`run` once the run dir and the strategy are known: one process at a time in `run_dir`."""
    if resume and (run_dir / layout.METRICS).is_file() and not os.access(run_dir, os.W_OK):
        return _finished(run_dir, config, given, notify)  # read-only and finished: nothing to write, nor to lock
    layout.check_writable(run_dir)
    with lock.hold(run_dir):
        if resume and (run_dir / layout.METRICS).is_file():
            return _finished(run_dir, config, given, notify)
        train_run = dict(callbacks=callbacks, notify=notify, strategy=strategy)
        if resume and checkpoints.has_initial(run_dir):
            config = resumed_config(run_dir, config, given)
            return _train(run_dir, config, **train_run, resume=True, progress=Progress.load(run_dir))
        if resume:
            overwrite = _nothing_trained_yet(run_dir, notify)
        return _train(run_dir, config, **train_run, resume=False, overwrite=overwrite)


def _finished(run_dir: Path, config: Config, given, notify: Callable[[str], None]) -> RunResult:
    resumed_config(run_dir, config, given)  # the same command, not another run's
    notify(f"{run_dir} finished training already; nothing to resume")
    return RunResult(run_dir, layout.read_json(run_dir / layout.METRICS), finished_before=True)


def _nothing_trained_yet(run_dir: Path, notify: Callable[[str], None]) -> bool:
    """`--resume` where no epoch was saved: start the run; True if an unstarted run is replaced."""
    if not layout.is_run(run_dir):
        layout.check_new(run_dir, overwrite=False)  # refuses a folder that is not empty
        notify(f"nothing to resume in {run_dir} yet: starting a new run")
        return False
    # Killed while its run dir was being started (state/ not made yet) or before its first epoch:
    # with no initial state and no checkpoint, nothing was trained.
    if not any((run_dir / layout.CHECKPOINTS).glob("*.keras")):
        notify(f"{run_dir} was stopped before its training began: starting it again")
        return True
    raise FlowerftError(f"{run_dir} holds no saved training state to resume; start it again with --overwrite")


def _train(
    run_dir: Path, config: Config, *, callbacks: CallbackFactory, notify: Callable[[str], None],
    strategy: tf.distribute.Strategy, resume: bool, progress: Progress | None = None, overwrite: bool = False,
) -> RunResult:
    """Train `run_dir` (its lock held): a fresh run, or a resumed one from `progress` (None: its start)."""
    if not resume:
        layout.check_new(run_dir, overwrite)
        layout.check_latest(config.runs_root)  # before anything is written
        config = Config(**absolute_paths(to_dict(config)))  # the run must work from any folder
        check_inputs(config, run_dir)  # a resumed run's weights file is checked below
    distribute.check_batch(config, strategy)
    tracking.check(config)  # --track mlflow without MLflow fails before anything is written
    splits = sources.load_recorded(run_dir, config, ("train", "valid")) if resume else sources.load(config)
    # Build the model before touching the run dir: a weights problem leaves nothing behind.
    # A resumed run rebuilds it as it started (checkpoints.load_initial checks it), unless its state
    # holds the initial weights themselves (runs started by earlier versions).
    keras.utils.set_random_seed(config.seed)
    # The model, and so its optimizer and metrics, belong to the strategy.
    with precision.building_in(precision.policy(config)), strategy.scope():
        stored = resume and checkpoints.has_initial_weights(run_dir)
        build_config = dataclasses.replace(config, weights="none") if stored else config
        if resume:
            _check_base_weights(run_dir, build_config)
        model, base = build_model(build_config, len(splits.class_names))
        if partial_finetune.is_partial(config):
            partial_finetune.split_base(base, config)  # a cut that cannot be made fails before the run dir is touched

    notify(
        f"{len(splits.class_names)} classes ({', '.join(splits.class_names)}); "
        + ", ".join(f"{splits.sizes[s]} {s}" for s in splitting.SPLIT_NAMES) + " images"
    )
    for note in splits.notes:
        notify(note)
    if splits.skipped:
        shown = ", ".join(splits.skipped[:3]) + (f" and {len(splits.skipped) - 3} more" if len(splits.skipped) > 3 else "")
        many = len(splits.skipped) > 1
        notify(f"skipped {len(splits.skipped)} file{'s' if many else ''} that {'are' if many else 'is'} not "
               f"{'readable images' if many else 'a readable image'}: {shown}")

    if resume:
        for folder in (run_dir, run_dir / checkpoints.STATE):  # a kill inside a write left these (we hold the lock)
            layout.remove_partial_writes(folder)
        checkpoints.load_initial(model, run_dir)
        where = f"{progress.phase} epoch {progress.epochs_done + 1}" if progress else "the start"
        notify(f"resuming {run_dir} from {where}")
    else:
        if removed := start_run_dir(run_dir, config, splits, model, overwrite):
            shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
            notify(f"--overwrite: removed the earlier run in {run_dir} ({shown})")
        notify(f"run dir: {run_dir}")
    # Only the chief tracks; a resumed run continues its MLflow run, first logging the saved epochs it lacks.
    tracker = tracking.Tracker(config, enabled=distribute.is_chief(strategy), notify=notify)
    tracker.start(run_dir, tracking.committed_history(run_dir) if resume else [])
    if tracker.enabled:
        callbacks = (lambda extra: lambda phase, c: [*extra(phase, c), tracker.callback()])(callbacks)

    cache = pipelines.cache_mode(config, splits.sizes["train"] + splits.sizes["valid"])
    notify(start_line(config, machine.devices(distribute.describe(strategy)), cache))
    if slow := precision.slow_warning(config):
        notify(slow)
    cache_dir = run_dir / "cache"
    # A file cache that a killed run left half-written is locked; it would fail the pipeline.
    shutil.rmtree(cache_dir, ignore_errors=True)
    # Each epoch's order is a function of (seed, epoch): a resumed run sees what the uninterrupted one would.
    shuffle_epoch = pipelines.epoch_variable()
    pipe = dict(config=config, cache=cache, cache_dir=cache_dir, epoch=shuffle_epoch)
    try:
        if cache == "memory":
            notify("decoding and resizing every image once (kept in memory)")
        train_ds = pipelines.pipeline(splits, "train", training=True, **pipe)
        valid_ds = pipelines.pipeline(splits, "valid", **pipe)
        # Cached head features (and a partial fine-tune's activations) need the unaugmented images in source order.
        unshuffled = None if config.augment else pipelines.pipeline(splits, "train", **pipe)
        cached_activations = dict(unshuffled_train_ds=None if cache == "none" else unshuffled,
                                  sizes=(splits.sizes["train"], splits.sizes["valid"]))

        if progress and progress.phase == FINETUNE:
            head = PhaseResult(**progress.head)
            freeze_base(base)
        else:
            head = train_head(model, base, train_ds, valid_ds, config, run_dir, callbacks, shuffle_epoch=shuffle_epoch,
                              unshuffled_train_ds=unshuffled, resume=progress)
        ft_progress = progress if progress and progress.phase == FINETUNE else None
        finetune = fine_tune(model, base, train_ds, valid_ds, config, run_dir, callbacks, shuffle_epoch=shuffle_epoch,
                             head=head, resume=ft_progress, **cached_activations)
    except KeyboardInterrupt:
        tracker.finish(run_dir, status="KILLED")  # `--resume` reopens it
        raise Interrupted(
            f"interrupted; every finished epoch is saved in {run_dir}: continue with "
            f"`flowerft train --resume --run-dir {run_dir}`"
        ) from None
    except distribute.LOST_WORKER_ERRORS as e:
        if not distribute.is_multi_worker(strategy):
            raise
        raise WorkerLost(
            f"lost another worker ({type(e).__name__}: {first_line(e, 120)}); every finished epoch is "
            "saved in the chief's run dir: restart every worker with the same command and --resume"
        ) from None
    shutil.rmtree(cache_dir, ignore_errors=True)  # a file cache is as large as the data set

    final = (Path(layout.CHECKPOINTS) / "final.keras").as_posix()
    last = finetune if finetune.epochs_run else head
    if last.checkpoint and not last.stopped_because and last.history and last.best_epoch == last.history[-1]["epoch"]:
        checkpoints.copy_atomic(run_dir / last.checkpoint, run_dir / final)  # the last epoch was the best: same model
    else:
        checkpoints.save_model_atomic(model, run_dir / final)
    metrics = summarize(head, finetune, final, config)
    metrics["class_names"] = splits.class_names
    metrics["precision_policy"] = precision.policy(config)
    metrics["cache"] = cache
    metrics["recipe"] = config.recipe
    metrics["split_sizes"] = splits.sizes
    metrics["environment"] = machine.describe()
    layout.write_json(run_dir / layout.HISTORY, head.history + finetune.history)
    layout.write_json(run_dir / layout.METRICS, metrics)
    shutil.rmtree(run_dir / checkpoints.STATE, ignore_errors=True)  # finished: nothing left to resume
    # No curves.png here: drawing it (matplotlib's import alone) took 2-3 s, a tenth of a small
    # run; `flowerft report` draws it (flowerft/reporting/curves.py) from the files just written.
    tracker.finish(run_dir)
    return RunResult(run_dir, metrics)


def _check_base_weights(run_dir: Path, config: Config) -> None:
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise FlowerftError(f"cannot resume {run_dir}: it started from the weights file {config.weights}, which is "
                            "gone; put it back there, or start the run again with --overwrite")


def start_line(config: Config, where: str, cache: str) -> str:
    """What this run trains on and how, in one line: every choice that changes its result or speed."""
    batch = f"batch {config.batch_size}" + (f" in micro-batches of {config.micro_batch}" if config.micro_batch else "")
    more = [f"recipe {config.recipe}"] + (["augmented"] if config.augment else [])
    if partial_finetune.is_partial(config):
        more.append(f"fine-tuning the last {config.finetune_blocks} blocks" if config.finetune_blocks
                    else f"fine-tuning from layer {config.finetune_from}")
    if not batchnorm_learns(config):
        rule = f"weights {Path(config.weights).name}: BatchNorm frozen (pretrained statistics)"
    elif config.epochs_head:
        rule = "weights none: BatchNorm learns while fine-tuning (a head on random frozen features learns little)"
    else:
        rule = "weights none: from scratch, the whole network and its BatchNorm learn from the first epoch"
    return (f"training on {where}: {precision.policy(config)}, cache {cache}, {config.backbone} at "
            f"{config.image_size} px, {batch}, {', '.join(more)}; {rule}")


def start_run_dir(run_dir: Path, config: Config, splits: splitting.Splits, model: keras.Model, overwrite: bool) -> list[str]:
    """A new run dir with everything `evaluate`, `predict` and `--resume` need; returns what --overwrite removed."""
    removed = []
    if overwrite and run_dir.exists():
        removed = layout.clear_run(run_dir, keep=lock.LOCK)  # check_new made sure it is a flowerft run
    layout.make_run_dir(run_dir)
    layout.write_yaml(run_dir / layout.CONFIG, to_dict(config) | {"run_dir": str(run_dir)})  # marks a run: layout.is_run
    layout.write_json(run_dir / layout.CLASS_NAMES, splits.class_names)
    if splits.files is not None:
        layout.write_json(run_dir / layout.SPLITS, splits.files)
    if splits.record:  # where the images are, so that evaluate, report and --resume find them again
        layout.write_json(run_dir / source_record.SOURCE, splits.record)
    if splits.skipped:
        layout.write_json(run_dir / layout.SKIPPED, splits.skipped)
    checkpoints.save_initial(model, run_dir, config.weights)
    layout.set_latest(run_dir, config.runs_root)  # now, so that `--resume` finds a run that dies
    return removed
