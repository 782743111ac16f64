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
from flowerft.training.micro_batches import accumulation_steps

# Short names: the full history, with Keras's names and every digit, is in the run's CSVs.
SHORT = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
# In the order they give way when space is short: a finished epoch leads with its validation
# accuracy, the figure a person watches for.
RUNNING_ORDER = ("loss", "accuracy")
FINISHED_ORDER = ("val_accuracy", "val_loss", "accuracy", "loss")
# Why the run row has no ETA during the head phase: in full once in a log, in short on the row.
HEAD_NO_ETA = "ETA once fine-tuning has run a few steps: the head phase's speed says nothing of it"
HEAD_NO_ETA_SHORT = "ETA after head phase"  # fits the row at 80 columns
DESCRIPTION_WIDTH = 14  # "finetune 10/10"
BAR_WIDTH = 20
TIME_WIDTH = 7  # h:mm:ss
# A run with more than this left says so once, with what would cut it (see cost_line).
LONG_RUN_SECONDS = 3600
COST_AFTER_STEPS = 3  # timed fine-tuning steps before the remaining time is worth stating
# Fine-tuning speed-ups measured by `benchmarks/benchmark.py --part limits` (README, "Fine-tuning
# at the machine's limit", figure (e): Xception at 224 px, batch 32, a 2-core CPU): the last 4
# blocks on cached activations 15.70 vs 4.31 img/s (through images, with --augment: 6.86);
# bfloat16 6.31 vs 4.31 img/s, on a CPU that computes it natively.
PARTIAL_SPEEDUP, PARTIAL_AUGMENTED_SPEEDUP, BFLOAT16_SPEEDUP = 3.64, 1.59, 1.46


def metric_pairs(logs: dict, order=RUNNING_ORDER) -> list[str]:
    return [f"{SHORT[key]} {logs[key]:.3f}" for key in order if key in logs]


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunClock:
    """Epochs done over both phases and the time the run has left, from measured speeds.

    Each phase's speed is its own: the head phase trains on cached features in seconds, so
    its speed says nothing of fine-tuning's. Until fine-tuning has run a few steps, the run's
    ETA is unknown, and `eta` says so (None) rather than guess from the head.
    """

    def __init__(self, epochs: dict[str, int] | None = None, now=time.monotonic):
        self.epochs = dict(epochs or {})  # planned epochs per phase, in order (the run's config)
        self.now = now
        self.started = now()
        self.epochs_done = 0  # over the whole run, including epochs of an earlier (resumed) process
        self.phase: str | None = None
        self.step = 0  # steps done in the current epoch
        self.steps = 0  # steps per epoch of the current phase
        self.epoch_in_phase = 0  # 0-based
        self.first_step_end: float | None = None  # timing starts after the first step (tracing)
        self.steps_timed = 0
        self.epoch_seconds: dict[str, float] = {}  # measured, validation included
        self.epoch_start = self.started
        self.in_epoch = False

    @property
    def total(self) -> int:
        return sum(self.epochs.values())

    def begin_epoch(self, phase: str, epoch_in_phase: int, steps: int) -> None:
        if phase != self.phase:
            self.phase, self.first_step_end, self.steps_timed = phase, None, 0
        phases = list(self.epochs)
        self.epochs_done = sum(self.epochs[p] for p in phases[:phases.index(phase)]) + epoch_in_phase
        self.epoch_in_phase, self.steps, self.step = epoch_in_phase, steps, 0
        self.epoch_start, self.in_epoch = self.now(), True

    def end_step(self) -> None:
        self.step += 1
        if self.first_step_end is None:
            self.first_step_end = self.now()
        else:
            self.steps_timed += 1

    def end_epoch(self) -> None:
        self.epoch_seconds[self.phase] = self.now() - self.epoch_start
        self.epochs_done += 1
        self.step, self.in_epoch = 0, False

    def seconds_per_step(self) -> float | None:
        if self.first_step_end is None or not self.steps_timed:
            return None
        return (self.now() - self.first_step_end) / self.steps_timed

    def eta(self) -> float | None:
        """Seconds until the run ends; None while a phase still to come has no measured speed."""
        if self.phase is None:
            return None
        per_step = self.seconds_per_step()
        per_epoch = self.epoch_seconds.get(self.phase) or (per_step * self.steps if per_step else None)
        if per_epoch is None:
            return None
        if not self.in_epoch:
            left_now = 0.0
        else:
            left_now = (self.steps - self.step) * per_step if per_step and self.step else per_epoch
        left = left_now + (self.epochs[self.phase] - self.epoch_in_phase - 1) * per_epoch
        later = list(self.epochs)[list(self.epochs).index(self.phase) + 1:]
        for phase in later:
            if self.epochs[phase] and phase not in self.epoch_seconds:
                return None
            left += self.epochs[phase] * self.epoch_seconds.get(phase, 0.0)
        return left

    def waiting(self) -> str | None:
        """Why there is no ETA yet, or None when there is one."""
        if self.eta() is not None:
            return None
        if self.phase == "head" and self.epochs.get("finetune"):
            return HEAD_NO_ETA
        return "ETA after a few steps"  # short: it must fit the run row at 80 columns

    def summary(self, said: str | None = None) -> str:
        """The run's epochs and ETA; why there is no ETA yet, unless that is `said` already."""
        eta = self.eta()
        if eta is not None:
            return f"run {self.epochs_done}/{self.total} epochs, ETA {clock(eta)}"
        waiting = self.waiting()
        return f"run {self.epochs_done}/{self.total} epochs" + ("" if waiting == said else f", {waiting}")


def about(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"about {minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"about {minutes} min"


def cost_line(seconds_left: float | None, config, native_bfloat16: bool) -> str | None:
    """One line for a run with over an hour left: the time, and the measured options that cut it."""
    if seconds_left is None or seconds_left <= LONG_RUN_SECONDS:
        return None
    options = []
    if not (config.finetune_blocks or config.finetune_from):
        factor = PARTIAL_AUGMENTED_SPEEDUP if config.augment else PARTIAL_SPEEDUP
        options.append(f"--finetune-blocks 4 measured {factor:.1f}x faster")
    if native_bfloat16 and precision.policy(config) == "float32":
        options.append(f"--precision bfloat16 {BFLOAT16_SPEEDUP:.1f}x")
    line = f"{about(seconds_left)} left"
    if options:
        line += f"; {', '.join(options)} (Xception, 224 px, 2-core CPU: README 'Fine-tuning at the machine's limit')"
    return line


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
        self.clock.epochs = {"head": config.epochs_head, "finetune": config.epochs_finetune}
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
            note = self.clock.waiting() or ""
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
        first = 0 if self.phase == "head" else self.display.clock.epochs.get("head", 0)
        planned = self.display.clock.epochs[self.phase]
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
