"""Training state saved after every finished epoch, so that a killed run can resume.

    <run_dir>/state/initial.json               the classifier before training, by reference (written once)
    <run_dir>/state/<phase>-e<N>.weights.h5    the fitted model and its optimizer after epoch N
    <run_dir>/state/<phase>_best-e<N>.keras    a new best checkpoint, until it is moved into checkpoints/
    <run_dir>/state/head_best-e<N>.weights.h5  the head phase's best head (on cached features), until
                                               the phase ends and checkpoints/head_best.keras is written
    <run_dir>/state/progress.json              which of those is current: the commit point

The classifier before training is not stored: it is what `build_model` makes from the
config's weights (a file, ImageNet's, or `none`: random from the seed), and initial.json
records that source and a checksum of every weight, so a resume rebuilds it and checks it
is the same (runs started before kept initial.weights.h5, which a resume still reads).

Weights are written under a temporary name and renamed, and progress.json is written
last, so a crash at any moment leaves the previous consistent state. A new best
checkpoint is moved into checkpoints/ only after progress.json records it, and `resume`
finishes that move if a crash came between the two. The per-epoch history CSV is
rewritten from the same rows, so it never holds an epoch the state lacks.

A resumed run continues from the same weights, optimizer state and step count, and each
epoch's batches come in the order the uninterrupted run gave them (the shuffle is a function
of the seed and the epoch: pipelines.shuffle_for_epoch), so with TensorFlow's deterministic
kernels it ends with the same weights, bit for bit (tests/test_exact_resume.py).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from flowerft.errors import FlowerftError
from flowerft.runs import layout

STATE = "state"
PROGRESS = "progress.json"
INITIAL = "initial.json"
INITIAL_WEIGHTS = "initial.weights.h5"  # what runs started before initial.json wrote instead


@dataclass
class Progress:
    phase: str
    epochs_done: int = 0  # finished epochs of this phase
    best_score: float | None = None  # the phase's best monitor.score so far
    wall_time_s: float = 0.0
    weights: str | None = None  # file in state/ with the fitted model and optimizer
    history: list[dict[str, Any]] = field(default_factory=list)
    head: dict[str, Any] | None = None  # the finished head phase's summary, once fine-tuning runs
    best_file: str | None = None  # the staged best checkpoint of the phase, in state/
    stopped: str | None = None  # why the phase stopped early (divergence): it is over
    ended_early: str | None = None  # why early stopping (--patience) ended the phase: it is over too

    @classmethod
    def load(cls, run_dir: Path) -> Progress | None:
        path = run_dir / STATE / PROGRESS
        if not path.is_file():
            return None
        saved = layout.read_json(path)
        if "best_val_accuracy" in saved:  # runs before --monitor: their score was the validation accuracy
            saved["best_score"] = saved.pop("best_val_accuracy")
        return cls(**saved)


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    # Keras insists on the .weights.h5 ending, so the temporary name keeps it.
    tmp = path.with_name(f".tmp-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """`model` as a .keras file for inference: its layers and weights, not its optimizer.

    A checkpoint users ship needs no momentum (for a fine-tuned Xception, as large again as
    its weights); what `--resume` needs of the optimizer is in state/ (EpochState).
    """
    tmp = path.with_name(f".tmp-{path.name}")
    if getattr(model, "optimizer", None) is not None:  # the same layers, shared, without the training state
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    model.save(tmp)
    os.replace(tmp, path)


def copy_atomic(source: Path, path: Path) -> None:
    """`path` with `source`'s contents, all or nothing: a hard link where the file system has them.

    Every write in a run dir renames a new file into place and none edits one, so two names
    for one file never see each other change; the link saves writing 84 MB (Xception) again.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.unlink(missing_ok=True)  # a kill between the link and the rename left it
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FAT file systems)
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def has_initial(run_dir: Path) -> bool:
    return (run_dir / STATE / INITIAL).is_file() or has_initial_weights(run_dir)


def has_initial_weights(run_dir: Path) -> bool:
    return (run_dir / STATE / INITIAL_WEIGHTS).is_file()


def weights_checksum(model: keras.Model) -> str:
    """CRC-32 over every weight's bytes, in the model's order: a third of a second for Xception."""
    crc = 0
    for variable in model.weights:
        crc = zlib.crc32(np.ascontiguousarray(variable.numpy()), crc)
    return f"crc32:{crc:08x}"


def save_initial(model: keras.Model, run_dir: Path, weights: str) -> None:
    """Record how the untrained classifier was made (`weights`, the config's) and its checksum."""
    (run_dir / STATE).mkdir(parents=True, exist_ok=True)
    layout.write_json(run_dir / STATE / INITIAL, {"weights": weights, "checksum": weights_checksum(model)})


def load_initial(model: keras.Model, run_dir: Path) -> None:
    """Make `model`, just rebuilt from the run's config and seed, the run's untrained classifier.

    Raises FlowerftError if the rebuilt weights differ from those the run started with.
    """
    if has_initial_weights(run_dir):
        model.load_weights(run_dir / STATE / INITIAL_WEIGHTS)
        return
    recorded = layout.read_json(run_dir / STATE / INITIAL)
    if weights_checksum(model) != recorded["checksum"]:
        raise FlowerftError(
            f"cannot resume {run_dir}: the model rebuilt from weights {recorded['weights']} differs from the one the "
            "run started with (another weights file, or another TensorFlow/Keras version); put back what it started "
            "from, or start the run again with --overwrite"
        )


def load_fitted(model: keras.Model, run_dir: Path, progress: Progress) -> None:
    """The fitted model's weights and its optimizer's state (momentum, step count)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(run_dir / STATE / progress.weights)


def finish_commit(run_dir: Path, progress: Progress, published: Path) -> None:
    """After a crash: move the committed best checkpoint into place; drop what was never committed.

    A best staged as weights (BestCheckpoint's weights_only) stays in state/ until the phase
    ends (publish_staged_best); only the committed one is kept.
    """
    folder = run_dir / STATE
    if progress.best_file and not is_staged_weights(progress.best_file) and (folder / progress.best_file).is_file():
        os.replace(folder / progress.best_file, published)
    staged = [p for p in folder.glob(f"{progress.phase}_best-e*.weights.h5") if p.name != progress.best_file]
    for leftover in [*folder.glob(f"{progress.phase}_best-e*.keras"), *staged, *folder.glob(".tmp-*"),
                     *published.parent.glob(".tmp-*")]:
        leftover.unlink(missing_ok=True)


def is_staged_weights(best_file: str | None) -> bool:
    return bool(best_file) and best_file.endswith(".weights.h5")


def publish_staged_best(run_dir: Path, progress: Progress, fitted: keras.Model, model: keras.Model,
                        published: Path) -> None:
    """At a phase's end: the full classifier `model` with the best epoch's weights of `fitted`, once.

    `fitted` (the head) shares its weights with `model`; its weights in memory are the last
    epoch's, put back afterwards. Safe to redo after a crash: the staged file stays in state/.
    """
    staged = run_dir / STATE / (progress.best_file or "")
    if not is_staged_weights(progress.best_file) or not staged.is_file():
        return
    last = fitted.get_weights()
    fitted.load_weights(staged)
    try:
        save_model_atomic(model, published)
    finally:
        fitted.set_weights(last)


def load_best(model: keras.Model, run_dir: Path, progress: Progress, published: Path) -> None:
    """The phase's best weights into `model` (what BestCheckpoint saved it as): staged head weights, or the checkpoint."""
    if is_staged_weights(progress.best_file) and (run_dir / STATE / progress.best_file).is_file():
        model.load_weights(run_dir / STATE / progress.best_file)
    elif published.is_file():
        with warnings.catch_warnings():  # a checkpoint holds no optimizer state (save_model_atomic): nothing is lost
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(published)


def write_history_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    layout.write_atomic(path, buffer.getvalue())


class EpochState(keras.callbacks.Callback):
    """After each epoch: history CSV, the fitted model with its optimizer, then progress.json.

    Goes after the DivergenceGuard (which restores the best weights before this saves them),
    the BestCheckpoint (whose pending save this publishes once the epoch is committed) and the
    early stopping (whose decision this records).
    """

    def __init__(self, run_dir: Path, progress: Progress, checkpoint, guard, published: Path, early_stop=None):
        super().__init__()
        self.run_dir = run_dir
        self.progress = progress
        self.checkpoint = checkpoint  # its `best` is the phase's best so far
        self.guard = guard
        self.published = published
        self.early_stop = early_stop  # monitor.EarlyStop, or None

    def on_train_begin(self, logs=None):
        (self.run_dir / STATE).mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter() - self.progress.wall_time_s

    def on_epoch_end(self, epoch, logs=None):
        p = self.progress
        p.history.append({"phase": p.phase, "epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        p.epochs_done += 1
        p.wall_time_s = round(time.perf_counter() - self.started, 3)
        p.best_score = self.checkpoint.best
        pending = self.checkpoint.pending
        previous_best = p.best_file
        if pending is not None:
            p.best_file = pending.name
        p.stopped = self.guard.reason
        p.ended_early = self.early_stop.reason if self.early_stop is not None else None
        write_history_csv(self.run_dir / f"history_{p.phase}.csv", p.history)
        previous, p.weights = p.weights, f"{p.phase}-e{epoch + 1}.weights.h5"
        save_weights_atomic(self.model, self.run_dir / STATE / p.weights)
        layout.write_json(self.run_dir / STATE / PROGRESS, asdict(p))  # the commit point
        if pending is not None:
            if is_staged_weights(pending.name):  # published whole when the phase ends
                if is_staged_weights(previous_best) and previous_best != pending.name:
                    (self.run_dir / STATE / previous_best).unlink(missing_ok=True)
            else:
                os.replace(pending, self.published)
            self.checkpoint.pending = None
        if previous and previous != p.weights:
            (self.run_dir / STATE / previous).unlink(missing_ok=True)
