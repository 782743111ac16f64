"""The recipe: train a new head on the frozen base, then unfreeze and fine-tune.

`run(config)` does the whole job and leaves everything in the run directory
(see flowerft/rundir.py for its layout).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf

from flowerft import data, rundir, sources
from flowerft.callbacks import DivergenceGuard
from flowerft.config import Config, to_dict
from flowerft.errors import ConfigError
from flowerft.model import build_model, compile_for_phase, freeze_base, unfreeze_base

HEAD, FINETUNE = "head", "finetune"
# Builds extra callbacks for a phase (the CLI's progress bars); gets the phase name.
CallbackFactory = Callable[[str], list[keras.callbacks.Callback]]


@dataclass
class PhaseResult:
    phase: str
    epochs_planned: int
    epochs_run: int = 0
    best_epoch: int | None = None  # 1-based, counted over both phases like TensorBoard's x axis
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    last_val_accuracy: float | None = None
    last_val_loss: float | None = None
    wall_time_s: float = 0.0
    stopped_because: str | None = None
    checkpoint: str | None = None  # relative to the run dir
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def train_head(
    model, base, train_ds, valid_ds, config: Config, run_dir: Path, extra: CallbackFactory,
    *, unshuffled_train_ds=None,
) -> PhaseResult:
    """Phase 1: only the new head learns; the base is frozen (its BatchNorm in inference mode).

    Given `unshuffled_train_ds` (the training images in source order, not augmented), the
    head trains on features computed once (see fit_head_on_features); otherwise on images.
    """
    freeze_base(base)
    options = dict(epochs=config.epochs_head, initial_epoch=0, lr=config.lr_head, decay=config.decay_head)
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
    extractor = keras.Model(model.input, model.get_layer("avg_pool").output)
    train_features, train_labels = _features(extractor, unshuffled_train_ds)
    valid_features, valid_labels = _features(extractor, valid_ds)
    features = keras.Input(shape=(int(train_features.shape[1]),), name="features")
    head = keras.Model(features, model.get_layer("predictions")(features), name="head")  # shares its weights
    train_ds = data.indexed_pipeline(
        train_features, train_labels, batch_size=config.batch_size, shuffle_buffer=config.shuffle_buffer, seed=config.seed
    )
    valid_ds = data.indexed_pipeline(valid_features, valid_labels, batch_size=config.batch_size)
    result = _fit_phase(HEAD, head, train_ds, valid_ds, config, run_dir, extra, save_best_of=model, **options)
    result.wall_time_s = round(time.perf_counter() - start, 3)
    return result


def _features(extractor: keras.Model, ds) -> tuple[tf.Tensor, tf.Tensor]:
    features, labels = [], []
    for images, y in ds:
        features.append(tf.cast(extractor.predict_on_batch(images), tf.float32))
        labels.append(y)
    return tf.concat(features, 0), tf.concat(labels, 0)


def fine_tune(model, base, train_ds, valid_ds, config: Config, run_dir: Path, extra: CallbackFactory) -> PhaseResult:
    """Phase 2: the whole base learns too, at a lower rate, with a fresh optimizer.

    BatchNormalization layers stay frozen (see model.unfreeze_base for why).
    """
    unfreeze_base(base)
    return _fit_phase(
        FINETUNE, model, train_ds, valid_ds, config, run_dir, extra,
        epochs=config.epochs_finetune, initial_epoch=config.epochs_head,
        lr=config.lr_finetune, decay=config.decay_finetune,
    )


def _fit_phase(
    phase, model, train_ds, valid_ds, config, run_dir, extra, *, epochs, initial_epoch, lr, decay, save_best_of=None
) -> PhaseResult:
    """Fit `model` for one phase and save the best epoch's classifier.

    Normally a checkpoint is written whenever validation accuracy improves. With
    `save_best_of` (the full classifier, when `model` is a head trained on cached features)
    the best head weights are kept in memory and the classifier is saved once at the end:
    its frozen base never changes, and an 80 MB save per epoch would cost more than the epoch.
    """
    result = PhaseResult(phase=phase, epochs_planned=epochs)
    if epochs == 0:
        return result
    # Recompile after changing `trainable`, with a new optimizer: the old one's momentum
    # belongs to other variables and another learning rate.
    with tf.distribute.get_strategy().scope():
        compile_for_phase(
            model, lr=lr, decay=decay, momentum=config.momentum, clipnorm=config.clipnorm, jit_compile=config.jit_compile
        )
    checkpoint = Path(rundir.CHECKPOINTS) / f"{phase}_best.keras"
    guard = DivergenceGuard(config.divergence_factor)
    callbacks = [
        *([] if save_best_of else [keras.callbacks.ModelCheckpoint(
            run_dir / checkpoint, monitor="val_accuracy", mode="max", save_best_only=True)]),
        keras.callbacks.CSVLogger(run_dir / f"history_{phase}.csv"),
        guard,
        *extra(phase),
    ]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False))
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=valid_ds,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles; Keras cannot shuffle a Dataset
        verbose=0,
    )
    result.wall_time_s = round(time.perf_counter() - start, 3)
    result.stopped_because = guard.reason
    if save_best_of is not None and guard.best_epoch_weights is not None:
        last = model.get_weights()
        model.set_weights(guard.best_epoch_weights)
        save_best_of.save(run_dir / checkpoint)
        model.set_weights(last)
    rows = _history_rows(phase, history)
    result.history = rows
    result.epochs_run = len(rows)
    if rows:
        best = max(rows, key=lambda r: _number(r.get("val_accuracy")))
        result.best_epoch = best["epoch"]
        result.best_val_accuracy = best.get("val_accuracy")
        result.best_val_loss = min(_number(r.get("val_loss"), math.inf) for r in rows)
        result.last_val_accuracy = rows[-1].get("val_accuracy")
        result.last_val_loss = rows[-1].get("val_loss")
    if (run_dir / checkpoint).exists():
        result.checkpoint = checkpoint.as_posix()
    return result


def _number(value, default=-math.inf) -> float:
    return default if value is None or not math.isfinite(value) else float(value)


def _history_rows(phase: str, history: keras.callbacks.History) -> list[dict[str, Any]]:
    rows = []
    for i, epoch in enumerate(history.epoch):
        row = {"phase": phase, "epoch": epoch + 1}
        row.update({k: float(v[i]) for k, v in history.history.items()})
        rows.append(row)
    return rows


def summarize(head: PhaseResult, finetune: PhaseResult, final_checkpoint: str) -> dict[str, Any]:
    """metrics.json: per phase, which checkpoint is best over both, and any warnings."""
    candidates = [p for p in (head, finetune) if p.checkpoint and p.best_val_accuracy is not None]
    # Fine-tuning must beat the head to replace it: on a tie the simpler model wins.
    best = max(candidates, key=lambda p: (p.best_val_accuracy, p is head), default=None)
    warnings = []
    for p in (head, finetune):
        if p.stopped_because:
            warnings.append(f"{p.phase} phase stopped early: {p.stopped_because}; its best weights were restored")
    if head.best_val_accuracy is not None and finetune.last_val_accuracy is not None \
            and finetune.last_val_accuracy < head.best_val_accuracy:
        warnings.append(
            f"fine-tuning ended at {finetune.last_val_accuracy:.1%} validation accuracy, below the head "
            f"phase's best {head.best_val_accuracy:.1%}; evaluate and predict use the best checkpoint "
            f"({best.checkpoint}). Remedies: --clipnorm 1, a lower --lr-head or a lower --lr-finetune"
        )
    return {
        "phases": {p.phase: {k: v for k, v in asdict(p).items() if k != "history"} for p in (head, finetune)},
        "best_phase": best.phase if best else None,
        "best_val_accuracy": best.best_val_accuracy if best else None,
        "best_checkpoint": best.checkpoint if best else final_checkpoint,
        "final_checkpoint": final_checkpoint,
        "warnings": warnings,
    }


def precision_policy(config: Config) -> str:
    """float32, or mixed precision: float16 where a GPU has it fast, bfloat16 on CPUs and TPUs."""
    if not config.mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def check_inputs(config: Config, run_dir: Path) -> None:
    """What can be checked before any data is read or model built."""
    rundir.check_writable(run_dir)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise ConfigError(f"weights: {config.weights} is neither imagenet, none nor an existing weights file")


def run(
    config: Config,
    callbacks: CallbackFactory = lambda phase: [],
    notify: Callable[[str], None] = lambda message: None,
) -> RunResult:
    """Load the data, build the model, train both phases and write the run directory."""
    run_dir = Path(config.run_dir) if config.run_dir else rundir.new_run_dir(config.runs_root)
    check_inputs(config, run_dir)
    splits = sources.load(config)
    notify(
        f"{len(splits.class_names)} classes ({', '.join(splits.class_names)}); "
        + ", ".join(f"{splits.sizes[s]} {s}" for s in sources.SPLIT_NAMES) + " images"
    )
    # Build the model before creating the run dir: a weights problem leaves nothing behind.
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(precision_policy(config))
    try:
        with tf.distribute.get_strategy().scope():
            model, base = build_model(config, len(splits.class_names))
    finally:
        keras.mixed_precision.set_global_policy("float32")  # global state: leave it as found

    rundir.make_run_dir(run_dir)
    rundir.write_yaml(run_dir / "config.yaml", to_dict(config) | {"run_dir": str(run_dir)})
    rundir.write_json(run_dir / "class_names.json", splits.class_names)
    if splits.files is not None:
        rundir.write_json(run_dir / "splits.json", splits.files)
    notify(f"run dir: {run_dir}")

    cache = data.cache_mode(config, splits.sizes["train"] + splits.sizes["valid"])
    cache_dir = run_dir / "cache"
    pipe = dict(config=config, cache=cache, cache_dir=cache_dir)
    if cache == "memory":
        notify("decoding and resizing every image once (kept in memory)")
    train_ds = data.pipeline(splits, "train", training=True, **pipe)
    valid_ds = data.pipeline(splits, "valid", **pipe)
    # Cached head features need the unaugmented images in source order.
    unshuffled = None if config.augment else data.pipeline(splits, "train", **pipe)

    head = train_head(model, base, train_ds, valid_ds, config, run_dir, callbacks, unshuffled_train_ds=unshuffled)
    finetune = fine_tune(model, base, train_ds, valid_ds, config, run_dir, callbacks)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a file cache is as large as the data set

    final = (Path(rundir.CHECKPOINTS) / "final.keras").as_posix()
    model.save(run_dir / final)
    metrics = summarize(head, finetune, final)
    metrics["class_names"] = splits.class_names
    metrics["precision_policy"] = precision_policy(config)
    metrics["cache"] = cache
    rundir.write_json(run_dir / "history.json", head.history + finetune.history)
    rundir.write_json(run_dir / "metrics.json", metrics)
    rundir.set_latest(run_dir)
    return RunResult(run_dir, metrics)
