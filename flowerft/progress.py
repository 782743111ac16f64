"""Rich progress bars for Keras training (the CLI's view; library code never prints)."""

from __future__ import annotations

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
    )


def _format(logs: dict, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys if k in logs)


class RichProgress(keras.callbacks.Callback):
    """One bar per epoch with the running loss and accuracy, then the validation figures."""

    def __init__(self, progress: Progress, phase: str):
        super().__init__()
        self.progress = progress
        self.phase = phase

    def on_train_begin(self, logs=None):
        self.first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        planned = self.params["epochs"] - self.first_epoch
        self.task = self.progress.add_task(
            f"{self.phase} {epoch - self.first_epoch + 1}/{planned}", total=self.params.get("steps"), metrics=""
        )

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(self.task, advance=1, metrics=_format(logs or {}, ("loss", "accuracy")))

    def on_epoch_end(self, epoch, logs=None):
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        self.progress.update(self.task, metrics=_format(logs or {}, keys))
