"""The run's clock: epochs done over both phases, the time it has left, and what a long run costs.

Plain arithmetic on measured step and epoch times (no Keras, no Rich), so that the display in
progress_display.py only shows what this computes.
"""

from __future__ import annotations

import time

from flowerft import precision

# Why there is no ETA during the head phase (the display shortens it to fit its run row).
HEAD_NO_ETA = "ETA once fine-tuning has run a few steps: the head phase's speed says nothing of it"
# A run with more than this left says so once, with what would cut it (see cost_line).
LONG_RUN_SECONDS = 3600
# Fine-tuning speed-ups measured by `benchmarks/benchmark.py --part limits` (README, "Fine-tuning
# at the machine's limit", figure (e): Xception at 224 px, batch 32, a 2-core CPU): the last 4
# blocks on cached activations 15.70 vs 4.31 img/s (through images, with --augment: 6.86);
# bfloat16 6.31 vs 4.31 img/s, on a CPU that computes it natively.
PARTIAL_SPEEDUP, PARTIAL_AUGMENTED_SPEEDUP, BFLOAT16_SPEEDUP = 3.64, 1.59, 1.46


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
        self.at_most = False  # --patience may end a phase early: the ETA is then an upper bound

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

    def end_phase_early(self, phase: str, epochs_run: int) -> None:
        """A phase ended before its planned epochs (early stopping, divergence): the run is that much shorter."""
        self.epochs[phase] = epochs_run

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
            return f"run {self.epochs_done}/{self.total} epochs, ETA {'at most ' if self.at_most else ''}{clock(eta)}"
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
        factor = PARTIAL_AUGMENTED_SPEEDUP if config.augment != "none" else PARTIAL_SPEEDUP
        options.append(f"--finetune-blocks 4 measured {factor:.1f}x faster")
    if native_bfloat16 and precision.policy(config) == "float32":
        options.append(f"--precision bfloat16 {BFLOAT16_SPEEDUP:.1f}x")
    line = f"{about(seconds_left)} left"
    if options:
        line += f"; {', '.join(options)} (Xception, 224 px, 2-core CPU: README 'Fine-tuning at the machine's limit')"
    return line
