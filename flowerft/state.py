"""Training state saved after every finished epoch, so that a killed run can resume.

    <run_dir>/state/initial.weights.h5         the classifier before training (written once)
    <run_dir>/state/<phase>-e<N>.weights.h5    the fitted model and its optimizer after epoch N
    <run_dir>/state/<phase>_best-e<N>.keras    a new best checkpoint, until it is moved into checkpoints/
    <run_dir>/state/progress.json              which of those is current: the commit point

Weights are written under a temporary name and renamed, and progress.json is written
last, so a crash at any moment leaves the previous consistent state. A new best
checkpoint is moved into checkpoints/ only after progress.json records it, and `resume`
finishes that move if a crash came between the two. The per-epoch history CSV is
rewritten from the same rows, so it never holds an epoch the state lacks.

A resumed run continues from the same weights, optimizer state and step count, but its
training batches are shuffled afresh from the seed, so its later epochs see the images in
another order than an uninterrupted run would: equally valid, not bit-identical.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from flowerft import rundir

STATE = "state"
PROGRESS = "progress.json"
INITIAL = "initial.weights.h5"


@dataclass
class Progress:
    phase: str
    epochs_done: int = 0  # finished epochs of this phase
    best_val_accuracy: float | None = None
    wall_time_s: float = 0.0
    weights: str | None = None  # file in state/ with the fitted model and optimizer
    history: list[dict[str, Any]] = field(default_factory=list)
    head: dict[str, Any] | None = None  # the finished head phase's summary, once fine-tuning runs
    best_file: str | None = None  # the staged best checkpoint of the phase, in state/
    stopped: str | None = None  # why the phase stopped early (divergence): it is over

    @classmethod
    def load(cls, run_dir: Path) -> Progress | None:
        path = run_dir / STATE / PROGRESS
        return cls(**rundir.read_json(path)) if path.is_file() else None


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    # Keras insists on the .weights.h5 ending, so the temporary name keeps it.
    tmp = path.with_name(f".tmp-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


def has_initial(run_dir: Path) -> bool:
    return (run_dir / STATE / INITIAL).is_file()


def save_initial(model: keras.Model, run_dir: Path) -> None:
    (run_dir / STATE).mkdir(parents=True, exist_ok=True)
    save_weights_atomic(model, run_dir / STATE / INITIAL)


def load_initial(model: keras.Model, run_dir: Path) -> None:
    model.load_weights(run_dir / STATE / INITIAL)


def load_fitted(model: keras.Model, run_dir: Path, progress: Progress) -> None:
    """The fitted model's weights and its optimizer's state (momentum, step count)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(run_dir / STATE / progress.weights)


def finish_commit(run_dir: Path, progress: Progress, published: Path) -> None:
    """After a crash: move the committed best checkpoint into place; drop what was never committed."""
    folder = run_dir / STATE
    if progress.best_file and (folder / progress.best_file).is_file():
        os.replace(folder / progress.best_file, published)
    for leftover in [*folder.glob(f"{progress.phase}_best-e*.keras"), *folder.glob(".tmp-*"),
                     *published.parent.glob(".tmp-*")]:
        leftover.unlink(missing_ok=True)


def write_history_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_atomic(path, buffer.getvalue())


class EpochState(keras.callbacks.Callback):
    """After each epoch: history CSV, the fitted model with its optimizer, then progress.json.

    Goes after the DivergenceGuard (which restores the best weights before this saves them)
    and the BestCheckpoint (whose pending save this publishes once the epoch is committed).
    """

    def __init__(self, run_dir: Path, progress: Progress, checkpoint, guard, published: Path):
        super().__init__()
        self.run_dir = run_dir
        self.progress = progress
        self.checkpoint = checkpoint  # its `best` is the phase's best so far
        self.guard = guard
        self.published = published

    def on_train_begin(self, logs=None):
        (self.run_dir / STATE).mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter() - self.progress.wall_time_s

    def on_epoch_end(self, epoch, logs=None):
        p = self.progress
        p.history.append({"phase": p.phase, "epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        p.epochs_done += 1
        p.wall_time_s = round(time.perf_counter() - self.started, 3)
        p.best_val_accuracy = self.checkpoint.best
        pending = self.checkpoint.pending
        if pending is not None:
            p.best_file = pending.name
        p.stopped = self.guard.reason
        write_history_csv(self.run_dir / f"history_{p.phase}.csv", p.history)
        previous, p.weights = p.weights, f"{p.phase}-e{epoch + 1}.weights.h5"
        save_weights_atomic(self.model, self.run_dir / STATE / p.weights)
        rundir.write_json(self.run_dir / STATE / PROGRESS, asdict(p))  # the commit point
        if pending is not None:
            os.replace(pending, self.published)
            self.checkpoint.pending = None
        if previous and previous != p.weights:
            (self.run_dir / STATE / previous).unlink(missing_ok=True)
