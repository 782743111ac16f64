"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's `lr_find`).

Train for a few hundred steps while the rate grows exponentially from `START` to `END`, record the
loss of every step, smooth it, stop once it diverges, and put every weight back: the test changes
nothing. The suggestion is fastai's `lr_min`: the rate at the smoothed loss's minimum, divided by
10 (at the minimum the rate is already too high to train with; a tenth of it still learns fast).
The steepest descent of the loss is recorded too, for the plot and the JSON.

`sweep` runs it on a model compiled with `exponential_rate` (recipe.sweep_rate compiles it as the
phase would be); `write` leaves lr_find.json and lr_find.png; `recorded_rate` is what a run found
before (config.yaml's lr_finetune_found), so a resumed run trains at the same rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from flowerft import figures
from flowerft.config import FOUND_RATE
from flowerft.errors import FlowerftError
from flowerft.runs import layout

START, END = 1e-6, 1.0
# fastai's: "diverged" at 4x the smoothed minimum, and the loss averaged (exponentially) over about
# half the sweep: 0.98 for its 100 steps, 1 - 2 / steps for another number (smoothing).
DIVERGED = 4.0
# The first tenth of the steps is left out of the search for the minimum: the average of a few noisy
# losses is one lucky batch away from the lowest value of a flat curve (a trained head's loss is
# flat over every rate too small to move it), which would suggest a rate of a tenth of the start.
WARM_UP = 0.1
JSON, PNG = "lr_find.json", "lr_find.png"


@dataclass
class Sweep:
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped_because: str = "reached the last rate"
    suggested: float | None = None
    minimum_rate: float | None = None  # where the smoothed loss was lowest
    steepest_rate: float | None = None  # where it fell fastest (per log-rate)
    how: str = ""

    def line(self) -> str:
        return (f"learning-rate sweep: {len(self.rates)} steps from {self.rates[0]:.1e} to {self.rates[-1]:.1e} "
                f"({self.stopped_because}); suggested {self.suggested:.2g}: {self.how}")


def exponential_rate(steps: int, start: float = START, end: float = END) -> keras.optimizers.schedules.LearningRateSchedule:
    """start * (end / start) ** (step / steps): Keras's ExponentialDecay with a rate above 1 grows."""
    return keras.optimizers.schedules.ExponentialDecay(start, decay_steps=steps, decay_rate=end / start)


def sweep(model: keras.Model, train_ds, steps: int, *, class_weight: dict | None = None, updates_per_step: int = 1) -> Sweep:
    """The range test on `model`, compiled with exponential_rate(steps); its weights are put back after.

    `train_ds` repeats as often as the steps need. With micro-batches (`updates_per_step` > 1)
    each step's loss is the mean of its micro-batches'.
    """
    saved = model.get_weights()
    beta, warm_up = smoothing(steps), max(1, round(WARM_UP * steps))
    result, average, best = Sweep(), 0.0, math.inf
    try:
        batches = iter(train_ds.repeat())
        for step in range(steps):
            result.rates.append(float(model.optimizer.learning_rate))  # the schedule at the optimizer's step
            losses = []
            for _ in range(updates_per_step):
                x, y = next(batches)
                losses.append(float(model.train_on_batch(x, y, class_weight=class_weight, return_dict=True)["loss"]))
            loss = float(np.mean(losses))
            result.losses.append(loss)
            if not math.isfinite(loss):
                result.stopped_because = f"the loss became {loss}"
                break
            average = beta * average + (1 - beta) * loss
            smoothed = average / (1 - beta ** (step + 1))  # bias-corrected, as fastai does
            result.smoothed.append(smoothed)
            if step >= warm_up:
                best = min(best, smoothed)
            if smoothed > DIVERGED * best:
                result.stopped_because = f"the smoothed loss passed {DIVERGED:g}x its minimum"
                break
    finally:
        model.set_weights(saved)
    suggest(result, warm_up)
    return result


def smoothing(steps: int) -> float:
    """The moving average's decay: fastai's 0.98 at 100 steps, an average over about half the sweep at any number."""
    return 1 - 2 / steps


def suggest(result: Sweep, warm_up: int = 0) -> None:
    """Fill the suggestion: the rate at the smoothed loss's minimum (after `warm_up` steps) / 10 (fastai's lr_min)."""
    smoothed = np.array(result.smoothed)
    if len(smoothed) < warm_up + 3:
        raise FlowerftError(
            f"the learning-rate sweep stopped after {len(result.losses)} steps ({result.stopped_because}): too few "
            "to suggest a rate; give a --lr-finetune number instead"
        )
    rates = np.array(result.rates[:len(smoothed)])
    lowest = warm_up + int(smoothed[warm_up:].argmin())
    result.minimum_rate = float(rates[lowest])
    slopes = np.gradient(smoothed, np.log(rates))
    result.steepest_rate = float(rates[warm_up + int(slopes[warm_up:].argmin())])
    result.suggested = result.minimum_rate / 10
    result.how = (f"the smoothed loss was lowest ({smoothed[lowest]:.3g}) at {result.minimum_rate:.2g}, "
                  f"and a tenth of that still learns fast (steepest fall at {result.steepest_rate:.2g})")


def write(result: Sweep, folder: Path, title: str) -> list[Path]:
    """lr_find.json (every step) and lr_find.png (loss against rate, log scale, the suggestion marked)."""
    json_path, png_path = folder / JSON, folder / PNG
    layout.write_json(json_path, asdict(result))
    fig, ax = figures.pyplot().subplots(figsize=(7, 4.5))
    ax.plot(result.rates[:len(result.losses)], result.losses, color="0.75", linewidth=0.8, label="loss per step")
    ax.plot(result.rates[:len(result.smoothed)], result.smoothed, color="C0", label="smoothed loss")
    ax.axvline(result.suggested, color="C3", linestyle="--", label=f"suggested {result.suggested:.2g}")
    ax.axvline(result.minimum_rate, color="C2", linestyle=":", label=f"minimum {result.minimum_rate:.2g}")
    ax.set_xscale("log")
    smoothed = [v for v in result.smoothed if math.isfinite(v)]
    lowest = min(smoothed + [v for v in result.losses if math.isfinite(v)])
    ax.set_ylim(lowest * 0.95, min(max(smoothed), DIVERGED * min(smoothed)) * 1.05)  # the divergence is off the top
    ax.set(xlabel="learning rate", ylabel="training loss", title=title)
    ax.legend()
    figures.save_figure(fig, png_path)
    return [json_path, png_path]


def recorded_rate(run_dir: Path) -> float | None:
    """The rate this run's sweep chose before (config.yaml's lr_finetune_found), if it ran."""
    path = run_dir / layout.CONFIG
    recorded = layout.read_yaml(path) if path.is_file() else None
    return (recorded or {}).get(FOUND_RATE)


def record_rate(run_dir: Path, rate: float) -> None:
    """config.yaml gains lr_finetune_found (lr_finetune stays auto: what the user asked for)."""
    path = run_dir / layout.CONFIG
    layout.write_yaml(path, layout.read_yaml(path) | {FOUND_RATE: rate})
