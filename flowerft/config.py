"""Every default in one place, each with its reason, and the checks every Config passes.

A Config is checked as it is made, before any data is read or any model is built. Where its values
come from (the recipe, a YAML file, flags, a run's config.yaml) is flowerft/config_files.py.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from flowerft.backbones.registry import SCALINGS, get_backbone, is_own
from flowerft.errors import ConfigError

CACHE_MODES = ("auto", "memory", "file", "none")
DISTRIBUTE_MODES = ("auto", "none", "mirrored", "multiworker", "tpu")
SCHEDULES = ("cosine", "inverse_time")
# "mixed" is what the older `mixed_precision: true` meant; runs that recorded it still read (config_files.py).
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "mixed")
TRACKERS = ("none", "mlflow")
# The validation score that picks each phase's best checkpoint (and that --patience watches):
# Keras's log key, and whether higher is better (training/monitor.py).
MONITORS = {"accuracy": ("val_accuracy", True), "balanced_accuracy": ("val_balanced_accuracy", True),
            "loss": ("val_loss", False)}
CLASS_WEIGHTS = ("none", "balanced")
# The value of lr_finetune that means "found by a learning-rate sweep between the phases" (training/lr_find.py).
AUTO = "auto"
# The key of a run's config.yaml that holds the rate it found (read back on resume, never a Config field).
FOUND_RATE = "lr_finetune_found"
# `augment`'s parts, applied in this order (pipelines.make_augmenter); mixup and cutmix mix labels too.
AUGMENTATIONS, MIXING = ("basic", "randaugment", "mixup", "cutmix"), ("mixup", "cutmix")

# Named recipes: the values each one sets, between the dataclass defaults and a config file.
# "flowerft" is the dataclass itself (see the comments there for why each value).
RECIPES: dict[str, dict[str, Any]] = {
    "flowerft": {},
    # Géron, Hands-On ML ch. 14: SGD(lr=0.2, momentum=0.9, decay=0.01) for the head, then
    # SGD(lr=0.01, momentum=0.9, decay=0.001), hard targets, no clipping, no warm-up. Spelled
    # out in full, so that the book stays the book whatever the defaults become.
    "book": dict(
        lr_head=0.2, decay_head=0.01, lr_finetune=0.01, decay_finetune=0.001, momentum=0.9,
        schedule="inverse_time", warmup_epochs=0.0, label_smoothing=0.0, clipnorm=None,
    ),
}

# Training from scratch (weights: none) changes the plan: a head on random frozen features learns
# nothing, so the whole network trains from the first epoch (BatchNorm learning, see
# model.batchnorm_learns), at the head's rate (nothing pretrained to protect). Between the recipe's
# values and a config file: what the user gives still wins.
FROM_SCRATCH: dict[str, Any] = dict(epochs_head=0, lr_finetune=0.02)


@dataclass(frozen=True)
class Config:
    # --- data ---
    # An image folder with one subfolder per class; None means TFDS tf_flowers.
    data_dir: str | None = None
    # Pinned so that the splits (and so the test set) never move under a saved run.
    tfds_name: str = "tf_flowers:3.0.1"
    # Where TFDS keeps prepared datasets; None is TFDS's own default (~/tensorflow_datasets).
    tfds_data_dir: str | None = None
    # Other sources (one at most, instead of data_dir or TFDS): a CSV of path,label[,split] (paths
    # relative to it), or a Hugging Face dataset (a save_to_disk folder, parquet files or a hub name).
    labels: str | None = None
    hf_dataset: str | None = None
    # The image and label columns (CSV, Hugging Face) or features (TFDS); null: found from the data.
    image_column: str | None = None
    label_column: str | None = None
    # TFDS split specs "TEST,VALID,TRAIN" (e.g. "test,validation,train[:50%]"); null: the book's
    # slices of train when that is the only split, else the dataset's own test/validation splits.
    tfds_splits: str | None = None
    # Class names in label order, comma-separated (folders, CSV, Hugging Face text labels); null: sorted, as Keras does.
    class_order: str | None = None
    # The book's slices: test train[:10%], valid train[10%:25%], train train[25%:].
    test_percent: int = 10
    valid_percent: int = 15
    # Xception's ImageNet resolution; the book resizes every photo to it.
    image_size: int = 224
    batch_size: int = 32
    # The book's buffer; tf_flowers has 3,670 images, so this mixes across classes.
    shuffle_buffer: int = 1000
    # Seeds the folder split, the shuffle and the weight initialisation.
    seed: int = 42
    # Decoded, resized uint8 images are kept so that only the first epoch decodes JPEGs:
    # "auto" keeps them in memory when they take under a quarter of RAM, else in a file cache
    # in the run dir; "memory", "file" or "none" force a choice.
    cache: str = "auto"
    # Training images augmented: "none", or AUGMENTATIONS joined with "+" (e.g. basic+mixup; "basic" is
    # what `augment: true` meant). Off like the book: none measured better (README, Recipes); any
    # of them turns off the head phase's cached features (augmented images change every epoch).
    augment: str = "none"

    # --- model ---
    backbone: str = "xception"
    # "imagenet" downloads once into ~/.keras/models; "none" is random init; else a file path.
    weights: str = "imagenet"
    # With a backbone of your own (a .keras file or KerasHub preset, flowerft/backbones/own_model.py): the
    # layer whose output is the features (null: the one below the model's top), and the scaling its
    # weights expect when the model has none inside it (tf, caffe, torch or none).
    backbone_layer: str | None = None
    pixel_scaling: str | None = None

    # --- the recipe: how the two phases train ---
    # The defaults below are the "flowerft" recipe, chosen by measurement with ImageNet weights on
    # real images (README, "Recipes"): the book's two phases and schedule at a tenth of its learning
    # rates, with clipping. RECIPES["book"] holds Géron's values. A config file or flags override
    # either, and config.yaml records the recipe's name with every resolved value.
    recipe: str = "flowerft"
    # Phase 1: new head on the frozen base.
    epochs_head: int = 5
    # The book's 0.2 leaves an overconfident head (weights 4x larger, twice the validation loss of
    # 0.02 at the same accuracy), and fine-tuning's first gradients through it blow the base apart.
    lr_head: float = 0.02
    # Old Keras `decay`: lr / (1 + decay * step), i.e. InverseTimeDecay(lr, 1, decay); not weight
    # decay. Used by schedule "inverse_time" only.
    decay_head: float = 0.01
    # Phase 2: unfreeze and fine-tune with a fresh optimizer. The book's 0.01 is too high for
    # SGD+momentum on a pretrained base with BatchNorm frozen: it undoes ImageNet's features.
    epochs_finetune: int = 10
    # "auto": a learning-rate range test between the phases picks it (training/lr_find.py); the rate
    # found is recorded in the run's config.yaml (lr_finetune_found) and metrics.json, and a resume reuses it.
    lr_finetune: float | str = 0.001
    decay_finetune: float = 0.001
    momentum: float = 0.9
    # "inverse_time": the book's per-step lr / (1 + decay * step); "cosine": each phase's rate
    # falls from lr to 0 along a half cosine by its last step, after `warmup_epochs` of fine-tuning
    # climbing linearly from 0. Measured no better than the book's schedule at these rates.
    schedule: str = "inverse_time"
    warmup_epochs: float = 0.0
    # Targets of (1 - s) for the true class and s / n for the others (one-hot labels, Keras's
    # CategoricalCrossentropy). Measured: it cost fine-tuned test accuracy, so it is off.
    label_smoothing: float = 0.0
    # Validate and save each phase's exponential moving average of its weights (each step, average =
    # m * average + (1 - m) * weights), not its last step's. Off: measured worse on short runs (README, Recipes).
    ema: bool = False
    ema_momentum: float = 0.99
    # Each gradient's norm is clipped to this (0 or null: no clipping): a safety net for the first
    # fine-tuning steps, when the unfrozen base's gradients are largest.
    clipnorm: float | None = 1.0
    # A phase stops (and goes back to its best weights) when its loss is NaN/inf or this many
    # times its first batch's loss: a diverging run only destroys what it had learned.
    divergence_factor: float = 100.0
    # The validation score that picks each phase's best checkpoint: accuracy, balanced_accuracy (the
    # mean of the per-class recalls: what an imbalanced data set needs) or loss.
    monitor: str = "accuracy"
    # Early stopping: a phase ends after this many epochs without a better monitored score (by more
    # than min_delta), and goes on from its best weights. null (or 0): every planned epoch runs.
    patience: int | None = None
    min_delta: float = 0.0
    # "balanced": each training image's loss weighted by n / (classes x its class's count), sklearn's
    # inverse frequency, so that every class counts as much in the gradient; "none": all alike.
    class_weight: str = "none"
    # The learning-rate sweep's number of steps (lr_finetune: auto, `flowerft lr-find`): fastai's 100.
    lr_find_steps: int = 100

    # Fine-tune only the base's top: its last N blocks (0: the whole base, like the book), or from
    # the named layer of the base up. The frozen part's activations are then computed once
    # (flowerft/training/cached.py) unless augment is on or cache is none.
    finetune_blocks: int = 0
    finetune_from: str | None = None

    # --- speed and memory ---
    # float32, bfloat16 or float16 (mixed: weights and the softmax output stay float32), or auto:
    # float16 on tensor-core GPUs, bfloat16 on CPUs that compute it natively; or mixed: float16 on
    # any GPU, bfloat16 elsewhere, native or not (flowerft/precision.py).
    # float32, though bfloat16 measured 1.46x faster at equal accuracy (README, Speed): a bfloat16
    # model does not convert to TFLite yet (`flowerft export` fails in the MLIR translation).
    precision: str = "float32"
    # Fine-tune batches computed this many images at a time, gradients accumulated to one update
    # per batch_size (same result, less memory: flowerft/training/micro_batches.py). null: whole batches.
    micro_batch: int | None = None
    # XLA-compile the training step.
    jit_compile: bool = False
    # tf.distribute strategy (flowerft/training/distribute.py): "auto" mirrors over every GPU when there
    # are several, else trains on one device; "none", "mirrored", "multiworker" (TF_CONFIG), "tpu".
    # batch_size is the global batch, split across replicas.
    distribute: str = "auto"

    # --- output ---
    # None means <runs_root>/<timestamp>; `evaluate` and `predict` find it via <runs_root>/latest.
    run_dir: str | None = None
    runs_root: str = "runs"
    # Event files for `tensorboard --logdir <run_dir>/tensorboard`.
    tensorboard: bool = True
    # Also log the run to an experiment tracker (flowerft/training/tracking.py): "mlflow" (the extra
    # flowerft[mlflow]) at MLFLOW_TRACKING_URI, else the SQLite store <runs_root>/mlflow.db.
    # The run dir stays the record: a tracker that cannot be reached only costs a warning.
    track: str = "none"

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)


# The defaults of the other commands (export, serve, tracking): flowerft/command_defaults.py.


FIELDS = {f.name for f in dataclasses.fields(Config)}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):  # bool is an int subclass; a YAML `true` is never a number
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else hint.__name__


def _check_types(config: Config) -> None:
    for name, hint in _HINTS.items():
        value = getattr(config, name)
        if not _type_ok(value, hint):
            raise ConfigError(f"{name}: expected {_type_name(hint)}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and hint in (float, float | None, float | str):
            object.__setattr__(config, name, float(value))
    if config.clipnorm == 0:  # one spelling of "no clipping", so a resume compares like with like
        object.__setattr__(config, "clipnorm", None)
    if config.patience == 0:  # likewise "no early stopping"
        object.__setattr__(config, "patience", None)


def _check_values(c: Config) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {what}, got {getattr(c, key)!r}")

    if is_own(c.backbone):
        need(c.pixel_scaling is None or c.pixel_scaling in SCALINGS, "pixel_scaling",
             f"must be one of {', '.join(SCALINGS)}")
    else:
        backbone = get_backbone(c.backbone)
        need(c.image_size >= backbone.min_size, "image_size",
             f"must be at least {backbone.min_size} for backbone {c.backbone}")
        need(c.backbone_layer is None, "backbone_layer",
             "is for a backbone you bring (a .keras file or KerasHub preset), not a built-in one")
        need(c.pixel_scaling is None, "pixel_scaling",
             f"is for a backbone you bring; {backbone.name} has its own ({backbone.scaling})")
    for key in ("epochs_head", "epochs_finetune"):
        need(getattr(c, key) >= 0, key, "must be 0 or more")
    for key in ("batch_size", "shuffle_buffer", "test_percent", "valid_percent"):
        need(getattr(c, key) >= 1, key, "must be 1 or more")
    need(c.test_percent + c.valid_percent < 100, "valid_percent",
         "test_percent + valid_percent must leave some images for training")
    for key in ("lr_head", "divergence_factor"):
        need(getattr(c, key) > 0, key, "must be greater than 0")
    if isinstance(c.lr_finetune, str):
        need(c.lr_finetune == AUTO, "lr_finetune", f"must be a number or {AUTO}")
    else:
        need(c.lr_finetune > 0, "lr_finetune", "must be greater than 0 (or auto)")
    need(c.monitor in MONITORS, "monitor", f"must be one of {', '.join(MONITORS)}")
    need(c.patience is None or c.patience >= 0, "patience", "must be 0 or more (0 or null: no early stopping)")
    need(c.min_delta >= 0, "min_delta", "must be 0 or more")
    need(c.class_weight in CLASS_WEIGHTS, "class_weight", f"must be one of {', '.join(CLASS_WEIGHTS)}")
    need(c.lr_find_steps >= 10, "lr_find_steps", "must be 10 or more")
    for key in ("decay_head", "decay_finetune"):
        need(getattr(c, key) >= 0, key, "must be 0 or more")
    need(0 <= c.momentum < 1, "momentum", "must be in [0, 1)")
    need(c.clipnorm is None or c.clipnorm >= 0, "clipnorm", "must be 0 or more (0 or null: no clipping)")
    need(c.weights != "", "weights", "must be imagenet, none or a weights file")
    need(c.distribute in DISTRIBUTE_MODES, "distribute", f"must be one of {', '.join(DISTRIBUTE_MODES)}")
    need(c.cache in CACHE_MODES, "cache", f"must be one of {', '.join(CACHE_MODES)}")
    need(c.track in TRACKERS, "track", f"must be one of {', '.join(TRACKERS)}")
    need(c.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}")
    need(c.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
    need(0 <= c.warmup_epochs < math.inf, "warmup_epochs", "must be 0 or more")
    need(c.warmup_epochs == 0 or c.schedule == "cosine", "warmup_epochs",
         "needs schedule: cosine (the inverse_time schedule has no warm-up)")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    parts = c.augment.split("+")
    need(c.augment == "none" or set(parts) <= set(AUGMENTATIONS) and len(set(parts)) == len(parts)
         and len(set(parts) & set(MIXING)) < 2, "augment", f"must be none, or some of {', '.join(AUGMENTATIONS)} "
         "joined with + (e.g. basic+mixup; each once, and mixup or cutmix, not both)")
    object.__setattr__(c, "augment", "+".join(sorted(parts, key=("none", *AUGMENTATIONS).index)))  # one spelling
    need(0 <= c.ema_momentum < 1, "ema_momentum", "must be in [0, 1)")
    need(not (c.ema and c.micro_batch), "ema", "would average every micro-batch's step, not every batch's "
         "(Keras's EMA counts optimizer steps); drop micro_batch or ema")
    need(c.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(c.micro_batch is None or c.micro_batch >= 1, "micro_batch", "must be 1 or more (null: whole batches)")
    need(c.micro_batch is None or c.batch_size % c.micro_batch == 0, "micro_batch",
         f"must divide batch_size ({c.batch_size}) so that every batch splits into equal micro-batches")
    need(c.micro_batch is None or c.weights != "none", "micro_batch",
         "matches whole batches only with pretrained weights (with weights none BatchNorm learns from each "
         "micro-batch); drop it, or use a smaller batch_size")
    need(c.finetune_blocks >= 0, "finetune_blocks", "must be 0 (the whole base) or more")
    need(not (c.finetune_blocks and c.finetune_from), "finetune_from",
         "cannot be given with finetune_blocks; choose one way to say where fine-tuning starts")
    need(c.finetune_from != "", "finetune_from", "must name a layer of the base (or be null)")
    _check_source(c, need)


def _check_source(c: Config, need) -> None:
    """One data source, and only the options that source reads."""
    given = [key for key in ("data_dir", "labels", "hf_dataset") if getattr(c, key) is not None]
    for key in given[1:]:
        need(False, key, f"names a second data source beside {given[0]}; give one of data_dir, labels, hf_dataset")
    tfds = not given
    default_tfds = Config.__dataclass_fields__["tfds_name"].default
    need(tfds or c.tfds_name == default_tfds, "tfds_name", f"names a TFDS dataset beside {(given or [''])[0]}; give one source")
    need(tfds or c.tfds_splits is None, "tfds_splits", "applies to TFDS datasets only")
    need(c.tfds_splits is None or (c.tfds_splits.count(",") == 2 and all(s.strip() for s in c.tfds_splits.split(","))),
         "tfds_splits", "must be three TFDS split specs TEST,VALID,TRAIN (e.g. test,validation,train)")
    for key in ("image_column", "label_column"):
        need(c.data_dir is None or getattr(c, key) is None, key, "does not apply to an image folder (its class folders are the labels)")
    need(c.class_order is None or not tfds, "class_order", "applies to folders, CSV labels and Hugging Face text labels; TFDS keeps its dataset's order")
    need(tfds or c.tfds_data_dir is None, "tfds_data_dir",
         f"cannot be given with {(given or [''])[0]} (TFDS is not used for that source); give one of them")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
