"""What a run reports: each phase's figures, and metrics.json over both phases."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from flowerft.config import AUTO, DEFAULTS, Config
from flowerft.training.monitor import score


@dataclass
class PhaseResult:
    phase: str
    epochs_planned: int
    epochs_run: int = 0
    best_epoch: int | None = None  # 1-based, counted over both phases like TensorBoard's x axis
    best_val_accuracy: float | None = None  # the best epoch's (accuracy even when another score picked it)
    best_val_balanced_accuracy: float | None = None
    best_epoch_val_loss: float | None = None  # validation loss of the best epoch
    best_val_loss: float | None = None  # the phase's lowest validation loss, whichever epoch had it
    last_val_accuracy: float | None = None
    last_val_loss: float | None = None
    wall_time_s: float = 0.0
    stopped_because: str | None = None  # divergence
    ended_early: str | None = None  # early stopping (--patience): why
    checkpoint: str | None = None  # relative to the run dir
    monitor: str = "accuracy"  # the validation score that picks the best epoch (config.monitor)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add_history(self, rows: list[dict[str, Any]], diverged: bool = False) -> None:
        """Fill the figures from the phase's per-epoch rows.

        If the phase `diverged`, its last row was validated on the diverged weights, which
        were then thrown away: it is history, but never the phase's best.
        """
        self.history = rows
        self.epochs_run = len(rows)
        clean = rows[:-1] if diverged else rows
        scored = [r for r in clean if score(r, self.monitor) is not None]
        if clean:
            # The first of equals, as BestCheckpoint keeps the first (it saves only a strictly better score).
            best = max(scored, key=lambda r: score(r, self.monitor)) if scored else clean[0]
            self.best_epoch = best["epoch"]
            self.best_val_accuracy = best.get("val_accuracy")
            self.best_val_balanced_accuracy = best.get("val_balanced_accuracy")
            self.best_epoch_val_loss = best.get("val_loss")
            self.best_val_loss = min(_number(r.get("val_loss"), math.inf) for r in clean)
        if rows:
            self.last_val_accuracy = rows[-1].get("val_accuracy")
            self.last_val_loss = rows[-1].get("val_loss")


    @property
    def best_score(self) -> float | None:
        """The best epoch's monitor.score (None if no epoch finished cleanly).

        Figures without their history (a summary written before --monitor existed) have their accuracy.
        """
        rows = [r for r in self.history if r.get("epoch") == self.best_epoch]
        if rows:
            return score(rows[0], self.monitor)
        return score({"val_accuracy": self.best_val_accuracy}, "accuracy") if self.monitor == "accuracy" else None


def _number(value, default=-math.inf) -> float:
    return default if value is None or not math.isfinite(value) else float(value)


def remedies(phase: str, config: Config | None, diverged: bool = True) -> str:
    """What to change when `phase` diverges, or fine-tuning falls below the head without diverging, naming the settings.

    A rate that diverged was too high. One that fell short may be either: too high undoes the
    pretrained features, too low leaves the base as it was (measured: on Fashion-MNIST's garments
    0.003 beat the default 0.001; the sweep of --lr-finetune auto chose rates of 5e-7 to 5e-4 for
    EfficientNet-Lite0, whose fine-tuning then beat its head in 1 run of 6: README, Recipes).
    """
    if config is None:
        return "--clipnorm 1, a lower --lr-head or a lower --lr-finetune"
    chosen = "the sweep's (metrics.json: lr_finetune)" if config.lr_finetune == AUTO else f"{config.lr_finetune:g}"
    if phase == "head":
        steps = [f"a lower --lr-head (this run: {config.lr_head:g})"]
    else:
        if diverged:
            steps = [f"a lower --lr-finetune (this run: {chosen})"]
        else:
            steps = [f"another --lr-finetune (this run: {chosen}): lower if fine-tuning's training loss rose, higher "
                     "if it barely fell"]
        if not config.clipnorm:
            steps.append("--clipnorm 1")
        if config.schedule == "cosine" and not config.warmup_epochs:
            steps.append("warmup_epochs: 1 in a --config file")
        if config.lr_head > DEFAULTS["lr_head"]:
            steps.append(f"a lower --lr-head (this run: {config.lr_head:g}; a head trained fast is "
                         "overconfident and makes fine-tuning's first steps large)")
    if config.recipe != DEFAULTS["recipe"]:
        steps.append(f"the default recipe (--recipe {DEFAULTS['recipe']}) instead of {config.recipe}")
    return ", ".join(steps[:-1]) + (" or " if len(steps) > 1 else "") + steps[-1]


def _shown(phase: PhaseResult) -> str:
    value = phase.best_score
    return f"{-value:.4f}" if phase.monitor == "loss" else f"{value:.1%}"


def summarize(head: PhaseResult, finetune: PhaseResult, final_checkpoint: str, config: Config | None = None) -> dict[str, Any]:
    """metrics.json: per phase, which checkpoint is best over both, and any warnings.

    Given the run's `config`, the warnings name the settings to change and their values.
    """
    candidates = [p for p in (head, finetune) if p.checkpoint and p.best_score is not None]
    # Fine-tuning must beat the head to replace it: on a tie the simpler model wins.
    best = max(candidates, key=lambda p: (p.best_score, p is head), default=None)
    warnings = []
    for p in (head, finetune):
        if p.stopped_because:
            kept = ("its best weights were restored" if p.best_epoch is not None else
                    "no epoch of it finished cleanly, so it kept the weights it started from")
            warnings.append(
                f"{p.phase} phase stopped early: {p.stopped_because}; {kept}. "
                f"To train it stably: {remedies(p.phase, config)}"
            )
    # Its best, not its last epoch: a phase that beat the head and then fell back kept its best checkpoint.
    if head.best_score is not None and finetune.best_score is not None and finetune.best_score < head.best_score:
        name = head.monitor.replace("_", " ")
        warnings.append(
            f"fine-tuning's best validation {name} ({_shown(finetune)}) is below the head phase's best "
            f"({_shown(head)}): evaluate and predict use the head's checkpoint ({best.checkpoint if best else final_checkpoint}). "
            f"Remedies: {remedies(finetune.phase, config, diverged=finetune.stopped_because is not None)}"
        )
    return {
        "monitor": head.monitor,
        "phases": {p.phase: {k: v for k, v in asdict(p).items() if k != "history"} for p in (head, finetune)},
        "best_phase": best.phase if best else None,
        "best_val_accuracy": best.best_val_accuracy if best else None,
        "best_checkpoint": best.checkpoint if best else final_checkpoint,
        "final_checkpoint": final_checkpoint,
        "warnings": warnings,
    }
