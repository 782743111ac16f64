"""What a person watching `flowerft train` sees (the CLI's view; library code never prints).

On a terminal: one row per epoch that keeps, at any width from 80 columns, the phase and epoch,
a bar, steps done/total and elapsed/remaining time, then as many whole metrics as fit; and a
row for the whole run with its epochs and ETA. Redirected to a file or pipe (nohup, cluster
logs, CI): one plain, whole line per finished epoch, written at once, no control characters.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from flowerft import precision
from flowerft.cli.run_clock import HEAD_NO_ETA, RunClock, clock, cost_line
from flowerft.training.micro_batches import accumulation_steps

# Short names: the full history, with Keras's names and every digit, is in the run's CSVs.
SHORT = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
# In the order they give way when space is short: a finished epoch leads with its validation
# accuracy, the figure a person watches for.
RUNNING_ORDER = ("loss", "accuracy")
FINISHED_ORDER = ("val_accuracy", "val_loss", "accuracy", "loss")
# run_clock.HEAD_NO_ETA, which a log gets in full, short enough for the run row at 80 columns.
HEAD_NO_ETA_SHORT = "ETA after head phase"
DESCRIPTION_WIDTH = 14  # "finetune 10/10"
BAR_WIDTH = 20
TIME_WIDTH = 7  # h:mm:ss
COST_AFTER_STEPS = 3  # timed fine-tuning steps before the remaining time is worth stating (run_clock.cost_line)


def metric_pairs(logs: dict, order=RUNNING_ORDER) -> list[str]:
    return [f"{SHORT[key]} {logs[key]:.3f}" for key in order if key in logs]


class FittedMetricsColumn(ProgressColumn):
    """As many whole `name value` pairs as fit beside the other columns; the rest are left out.

    The other columns keep their full width: at 80 columns a row keeps its bar, steps and times,
    and metrics are what a narrow terminal gives up first.
    """

    def __init__(self, console: Console, description: Column):
        super().__init__(table_column=Column(no_wrap=True, overflow="crop"))
        self.console = console
        self.description = description  # its width grows with the number of epochs
        self.digits = 1  # of the largest total of any row: Rich sizes a column to its widest row

    def render(self, task) -> Text:
        self.digits = max(self.digits, len(str(int(task.total or 0))))
        used = self.description.width + BAR_WIDTH + (2 * self.digits + 1) + 2 * TIME_WIDTH + 5  # 5 gaps
        room = max(0, self.console.width - used - 1)
        note = task.fields.get("note")
        if note:
            return Text(note if len(note) <= room else note[:max(0, room - 3)] + "...")  # ASCII: any terminal
        shown = ""
        for pair in task.fields.get("metrics", []):
            candidate = f"{shown}  {pair}" if shown else pair
            if len(candidate) > room:
                break
            shown = candidate
        return Text(shown)


class RemainingColumn(ProgressColumn):
    """Time left: the task's own estimate, or the run clock's for the run row."""

    def __init__(self):
        super().__init__(table_column=Column(no_wrap=True, min_width=TIME_WIDTH))

    def render(self, task) -> Text:
        if "eta" in task.fields:
            return Text(clock(task.fields["eta"]), style="progress.remaining")
        remaining = task.time_remaining if task.completed < (task.total or 0) else 0
        return Text(clock(remaining), style="progress.remaining")


def make_progress(console: Console) -> Progress:
    description = Column(no_wrap=True, width=DESCRIPTION_WIDTH)
    return Progress(
        TextColumn("[bold]{task.description}", table_column=description),
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=TIME_WIDTH)),
        RemainingColumn(),
        FittedMetricsColumn(console, description),
        console=console,
    )


class Display:
    """The training display: `callbacks(phase)` for `train.run`, `notify(message)` for its lines."""

    def __init__(self, console: Console):
        self.console = console
        self.clock = RunClock()
        self.planned: dict[str, int] = {}  # each phase's epochs, as the run's config plans them
        self.said_waiting: str | None = None  # a log says why there is no ETA yet once, not every epoch
        self.config = None
        self.cost_checked = False
        self.progress = make_progress(console) if console.is_terminal else None
        if self.progress is not None:
            self.run_task = self.progress.add_task("run", total=None, eta=None, note="")

    def notify(self, message: str) -> None:
        # A terminal gets the line wrapped between words (its own wrap would cut them); a log keeps it whole.
        console = self.progress.console if self.progress else self.console
        console.print(message, highlight=False, markup=False, soft_wrap=not console.is_terminal)

    def callbacks(self, phase: str, config) -> list[keras.callbacks.Callback]:
        """For train.run; `config` is the run's own (a resumed run's, not the command line's)."""
        # Keras numbers epochs over the planned phases; the clock counts what runs (a phase may end early).
        self.planned = {"head": config.epochs_head, "finetune": config.epochs_finetune}
        if phase == "head" or not self.clock.epochs:
            self.clock.epochs = dict(self.planned)
        self.clock.at_most = bool(config.patience)
        self.config = config
        if self.progress is not None:  # "finetune 10/100" must fit whole
            widest = max(len(f"{p} {n}/{n}") for p, n in self.clock.epochs.items())
            self.progress.columns[0].get_table_column().width = max(DESCRIPTION_WIDTH, widest)
        # Fine-tuning in micro-batches: Keras counts micro-batches, a person counts batches.
        per_batch = accumulation_steps(config.batch_size, config.micro_batch) if phase == "finetune" else 1
        return [EpochProgress(self, phase, per_batch)]

    def add_epoch_row(self, description: str, steps: int):
        """A row for a new epoch; the oldest finished rows give way so the display fits the screen."""
        rows = [t for t in self.progress.tasks if t.id != self.run_task and t.visible]
        for task in rows[: max(0, len(rows) - (self.console.height - 8))]:
            self.progress.update(task.id, visible=False)
        return self.progress.add_task(description, total=steps, metrics=[])

    def update_run(self) -> None:
        if self.progress is not None:
            note = self.clock.waiting() or ("ETA at most: --patience may end sooner" if self.clock.at_most else "")
            self.progress.update(self.run_task, total=self.clock.total, completed=self.clock.epochs_done,
                                 eta=self.clock.eta(), note=HEAD_NO_ETA_SHORT if note == HEAD_NO_ETA else note)

    def check_cost(self) -> None:
        """Once fine-tuning has run a few steps: a long run says what it will cost (cost_line)."""
        if self.cost_checked or self.clock.phase != "finetune" or self.clock.steps_timed < COST_AFTER_STEPS:
            return
        self.cost_checked = True
        native_bfloat16 = precision.resolve("auto") == "bfloat16"  # a CPU that computes it natively, no GPU
        line = cost_line(self.clock.eta(), self.config, native_bfloat16)
        if line:
            self.notify(line)

    def line(self, text: str) -> None:
        """A finished epoch, when the output is not a terminal: plain, whole, at once."""
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)
        self.console.file.flush()


@contextlib.contextmanager
def training_display(console: Console) -> Iterator[Display]:
    display = Display(console)
    if display.progress is None:
        yield display
        return
    with display.progress:
        yield display


class EpochProgress(keras.callbacks.Callback):
    """Feeds one phase's epochs and steps to the display.

    Epochs are numbered within the phase from Keras's absolute epoch index, so a resumed run
    shows `finetune 3/3` for the third fine-tuning epoch, not `1/1`.
    """

    def __init__(self, display: Display, phase: str, per_batch: int = 1):
        super().__init__()
        self.display = display
        self.phase = phase
        self.per_batch = per_batch  # Keras's steps per batch (micro-batches, flowerft/training/micro_batches.py)
        self.task = None

    def on_epoch_begin(self, epoch, logs=None):
        first = 0 if self.phase == "head" else self.display.planned["head"]
        planned = self.display.planned[self.phase]
        self.number = epoch - first + 1
        self.description = f"{self.phase} {self.number}/{planned}"
        self.steps = (self.params.get("steps") or 0) // self.per_batch
        self.display.clock.begin_epoch(self.phase, self.number - 1, self.steps)
        self.started, self.done = time.monotonic(), 0
        if self.display.progress is not None:
            self.task = self.display.add_epoch_row(self.description, self.steps)
            self.display.update_run()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.per_batch:
            return  # a micro-batch: the batch is not done yet
        self.done += 1
        self.display.clock.end_step()
        self.display.check_cost()
        if self.task is not None:
            self.display.progress.update(self.task, advance=1, metrics=metric_pairs(logs or {}))
            self.display.update_run()

    def on_train_end(self, logs=None):
        planned = self.display.clock.epochs[self.phase]
        if self.model.stop_training and getattr(self, "number", planned) < planned:
            self.display.clock.end_phase_early(self.phase, self.number)
            self.display.update_run()

    def on_epoch_end(self, epoch, logs=None):
        self.display.clock.end_epoch()
        if self.task is not None:
            self.display.progress.update(self.task, metrics=metric_pairs(logs or {}, FINISHED_ORDER))
            self.display.progress.stop_task(self.task)  # an epoch stopped early (divergence) stops its clock too
            self.display.update_run()
        else:
            summary = self.display.clock.summary(said=self.display.said_waiting)
            self.display.said_waiting = self.display.clock.waiting()
            self.display.line(
                f"{self.description}  {self.done}/{self.steps} steps  {clock(time.monotonic() - self.started)}  "
                + "  ".join(metric_pairs(logs or {}, FINISHED_ORDER)) + f"  | {summary}"
            )
