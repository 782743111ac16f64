"""A training run as a unit of state: its run dir, lock and strategy, new, resumed or finished.

`run(config)` trains both phases of the recipe (flowerft/training/recipe.py) and leaves
everything in the run directory (see flowerft/runs/layout.py for its layout); `run(config,
resume=True)` continues a run that was killed or interrupted from its last finished epoch (see
flowerft/training/checkpoints.py). Only the chief of a multi-worker run writes the run dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf

from flowerft import machine, precision
from flowerft.config import AUTO, DEFAULTS, Config, to_dict
from flowerft.config_files import absolute_paths, make_config
from flowerft.data import pipelines, sources, splitting
from flowerft.errors import FlowerftError, Interrupted, WorkerLost, first_line
from flowerft.model import build_model
from flowerft.runs import layout, lock
from flowerft.training import checkpoints, class_weights, distribute, lr_find, partial_finetune, recipe, start, tracking
from flowerft.training.checkpoints import Progress
from flowerft.training.recipe import CallbackFactory
from flowerft.training.summary import PhaseResult, summarize


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    finished_before: bool = False  # `--resume` found the run finished: nothing was trained


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


def _train(
    run_dir: Path, config: Config, *, callbacks: CallbackFactory, notify: Callable[[str], None],
    strategy: tf.distribute.Strategy, resume: bool, progress: Progress | None = None, overwrite: bool = False,
) -> RunResult:
    """Train `run_dir` (its lock held): a fresh run, or a resumed one from `progress` (None: its start).

    Top to bottom, as flax's train_and_evaluate: checks, data, model, the run dir (started or
    reopened), the two phases (flowerft/training/recipe.py), the final writes.
    """
    config = _checked(run_dir, config, strategy, new=not resume, overwrite=overwrite)
    splits = sources.load_recorded(run_dir, config, ("train", "valid")) if resume else sources.load(config)
    model, base = _model(run_dir, config, strategy, len(splits.class_names), resume=resume)
    for line in start.data_lines(splits):
        notify(line)
    if resume:
        start.reopen_run_dir(run_dir, model, progress, notify)
    else:
        start.start_run_dir(run_dir, config, splits, model, overwrite, notify)
    tracker = _tracker(run_dir, config, strategy, notify, resume=resume)
    setup = recipe.Setup(config, run_dir, _tracked(callbacks, tracker), pipelines.epoch_variable(), notify=notify)
    cache = _cache(config, strategy, splits, notify)
    with _errors_translated(run_dir, strategy, tracker):
        data = _data(splits, setup, cache, notify)
        head = recipe.train_head(model, base, data, setup, resume=progress)
        finetune = recipe.fine_tune(model, base, data, setup, head=head, resume=progress)
    return _final_writes(setup, splits, cache, model, head, finetune, tracker)


def _checked(run_dir: Path, config: Config, strategy, *, new: bool, overwrite: bool) -> Config:
    """Fail before any data is read; a new run's config with absolute paths."""
    if new:
        layout.check_new(run_dir, overwrite)
        layout.check_latest(config.runs_root)  # before anything is written
        config = Config(**absolute_paths(to_dict(config)))  # the run must work from any folder
        start.check_inputs(config, run_dir)  # a resumed run's weights file is checked as its model is built
    distribute.check_batch(config, strategy)
    tracking.check(config)  # --track mlflow without MLflow fails before anything is written
    return config


def _model(run_dir: Path, config: Config, strategy, n_classes: int, *, resume: bool) -> tuple[keras.Model, keras.Model]:
    """The untrained classifier and its base, built before the run dir is touched.

    A weights problem then leaves nothing behind. A resumed run rebuilds it as it started
    (checkpoints.load_initial checks it), unless its state holds the initial weights themselves
    (runs started by earlier versions).
    """
    keras.utils.set_random_seed(config.seed)
    # The model, and so its optimizer and metrics, belong to the strategy.
    with precision.building_in(precision.policy(config)), strategy.scope():
        stored = resume and checkpoints.has_initial_weights(run_dir)
        build_config = dataclasses.replace(config, weights="none") if stored else config
        if resume:
            start.check_base_weights(run_dir, build_config)
        model, base = build_model(build_config, n_classes)
        if partial_finetune.is_partial(config):
            partial_finetune.split_base(base, config)  # a cut that cannot be made fails before the run dir is touched
    return model, base


def _tracker(run_dir: Path, config: Config, strategy, notify, *, resume: bool) -> tracking.Tracker:
    """Only the chief tracks; a resumed run continues its MLflow run, first logging the saved epochs it lacks."""
    tracker = tracking.Tracker(config, enabled=distribute.is_chief(strategy), notify=notify)
    tracker.start(run_dir, tracking.committed_history(run_dir) if resume else [])
    return tracker


def _tracked(callbacks: CallbackFactory, tracker: tracking.Tracker) -> CallbackFactory:
    if not tracker.enabled:
        return callbacks
    return lambda phase, config: [*callbacks(phase, config), tracker.callback()]


def _cache(config: Config, strategy, splits: splitting.Splits, notify) -> str:
    """Where decoded images are kept (memory, file or none), told with the rest of how the run trains."""
    cache = pipelines.cache_mode(config, splits.sizes["train"] + splits.sizes["valid"])
    notify(start.start_line(config, machine.devices(distribute.describe(strategy)), cache))
    if slow := precision.slow_warning(config):
        notify(slow)
    return cache


def _data(splits: splitting.Splits, setup: recipe.Setup, cache: str, notify) -> recipe.Data:
    # A file cache that a killed run left half-written is locked; it would fail the pipeline.
    shutil.rmtree(setup.cache_dir, ignore_errors=True)
    # Each epoch's order is a function of (seed, epoch): a resumed run sees what the uninterrupted one would.
    pipe = dict(config=setup.config, cache=cache, cache_dir=setup.cache_dir, epoch=setup.epoch)
    if cache == "memory":
        notify("decoding and resizing every image once (kept in memory)")
    train_ds = pipelines.pipeline(splits, "train", training=True, **pipe)
    valid_ds = pipelines.pipeline(splits, "valid", **pipe)
    # Cached head features (and a partial fine-tune's activations) need the unaugmented images in source order.
    in_order = None if setup.config.augment != "none" else pipelines.pipeline(splits, "train", **pipe)
    counts = splitting.class_counts(splits)
    if line := class_weights.imbalance_line(splits.class_names, counts, setup.config):
        notify(line)
    return recipe.Data(train_ds, valid_ds, in_order, sizes=(splits.sizes["train"], splits.sizes["valid"]),
                       class_weight=class_weights.for_run(setup.config, counts))


@contextlib.contextmanager
def _errors_translated(run_dir: Path, strategy, tracker: tracking.Tracker):
    """Ctrl-C and a lost worker as errors that say how to go on: every finished epoch is saved."""
    try:
        yield
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


def _final_writes(setup: recipe.Setup, splits: splitting.Splits, cache: str, model: keras.Model,
                  head: PhaseResult, finetune: PhaseResult, tracker: tracking.Tracker) -> RunResult:
    """final.keras, metrics.json and history.json; the caches and the state to resume from go."""
    run_dir, config = setup.run_dir, setup.config
    shutil.rmtree(setup.cache_dir, ignore_errors=True)  # a file cache is as large as the data set
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
    # The fine-tuning rate it trained at: the config's, or the one lr_finetune: auto found.
    metrics["lr_finetune"] = lr_find.recorded_rate(run_dir) if config.lr_finetune == AUTO else config.lr_finetune
    metrics["split_sizes"] = splits.sizes
    metrics["environment"] = machine.describe()
    layout.write_json(run_dir / layout.HISTORY, head.history + finetune.history)
    layout.write_json(run_dir / layout.METRICS, metrics)
    shutil.rmtree(run_dir / checkpoints.STATE, ignore_errors=True)  # finished: nothing left to resume
    # No curves.png here: drawing it (matplotlib's import alone) took 2-3 s, a tenth of a small
    # run; `flowerft report` draws it (flowerft/reporting/curves.py) from the files just written.
    tracker.finish(run_dir)
    return RunResult(run_dir, metrics)


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
