"""`flowerft lr-find`: the learning-rate range test (lr_find.py) for a run's fine-tuning, run apart.

It starts from the run's head checkpoint (checkpoints/head_best.keras), or, where the run has
none yet, from a head phase trained afresh in memory as the run's config says; it sweeps the rate
over what fine-tuning trains (the base unfrozen as the config says, BatchNorm frozen, the run's
precision) and writes lr_find.json and lr_find.png into <run>/lr_find/ (the run dir's own
lr_find.* are the record of --lr-finetune auto's sweep). Nothing of the run changes: no weight,
no checkpoint, no config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras

from flowerft import precision
from flowerft.data import pipelines, sources, splitting
from flowerft.errors import FlowerftError
from flowerft.model import build_model, freeze_base
from flowerft.runs import layout, loader, lock
from flowerft.training import class_weights, lr_find, partial_finetune, recipe

OUTPUT = "lr_find"  # <run>/lr_find/: beside the run's own lr_find.* (the record of --lr-finetune auto)


@dataclass
class Found:
    result: lr_find.Sweep
    start: str  # what the sweep started from, in words
    written: list[Path]


def run(run_dir: str | Path | None = None, *, steps: int | None = None, output: str | Path | None = None,
        notify: Callable[[str], None] = lambda message: None) -> Found:
    path = layout.find_run(run_dir)
    if trainer := lock.holder(path):
        raise FlowerftError(f"{path} is training ({trainer}); sweep it when its training has finished")
    config = loader.run_config(path)
    if steps is not None:
        if steps < 10:
            raise FlowerftError(f"--steps must be 10 or more, got {steps}")
        config = dataclasses.replace(config, lr_find_steps=steps)
    out = Path(output) if output else path / OUTPUT
    layout.check_writable(out)
    splits = sources.load_recorded(path, config, ("train",))
    # Decoded once in memory where they fit (a sweep may see the images twice); never a file cache to clean up.
    cache = "memory" if pipelines.cache_mode(config, splits.sizes["train"]) == "memory" else "none"
    train_ds = pipelines.pipeline(splits, "train", config, training=True, cache=cache)
    weights = class_weights.for_run(config, splitting.class_counts(splits))
    head = path / layout.CHECKPOINTS / "head_best.keras"
    keras.utils.set_random_seed(config.seed)
    with precision.building_in(precision.policy(config)):  # swept as the run trains
        model, base, start = _start(path, head, config, len(splits.class_names), train_ds, weights, notify)
    partial_finetune.unfreeze(base, config)
    notify(f"sweeping the fine-tuning rate from {lr_find.START:g} to {lr_find.END:g} over {config.lr_find_steps} "
           f"steps, from {start}")
    result = recipe.sweep_rates(recipe.FINETUNE, model, train_ds, config, weights)
    out.mkdir(parents=True, exist_ok=True)
    written = lr_find.write(result, out, f"Fine-tuning learning-rate sweep: {path.name}")
    return Found(result, start, written)


def _start(path: Path, head: Path, config, n_classes: int, train_ds, weights, notify):
    """(the classifier, its base, what it is in words): the run's head checkpoint, or a head trained afresh."""
    if head.is_file():
        model = loader.load_model(head)
        base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        return model, base, f"the run's head checkpoint {head.relative_to(path)}"
    model, base = build_model(config, n_classes)
    return model, base, _fresh_head(model, base, train_ds, config, weights, notify)


def _fresh_head(model, base, train_ds, config, weights, notify) -> str:
    """The run's head phase, trained in memory at its config's rate (nothing is saved)."""
    if not config.epochs_head:
        return "the untrained classifier (the run has no head phase)"
    notify(f"the run has no head checkpoint: training a head for {config.epochs_head} epochs first (kept in memory)")
    freeze_base(base)
    schedule = recipe.Schedule(config.epochs_head, initial_epoch=0, lr=config.lr_head, decay=config.decay_head)
    ds, _ = recipe.compile_phase(recipe.HEAD, model, train_ds, train_ds, config, schedule,
                                 steps=config.epochs_head * recipe.steps_per_epoch(train_ds))
    model.fit(ds, epochs=config.epochs_head, class_weight=weights, verbose=0)
    return f"a head trained afresh for {config.epochs_head} epochs"
