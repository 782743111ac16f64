"""Imbalanced classes: the warning at a run's start, and the class weights that balance the loss."""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from flowerft.config import Config

# Largest class over smallest beyond which a run says so: tf_flowers' own 898/641 (1.4x) is not imbalanced;
# the dev kit's long-tail set (700 down to 44: 16x) is.
IMBALANCE_RATIO = 5


def balanced(counts: list[int]) -> dict[int, float]:
    """Keras fit's class_weight: sklearn's "balanced", n / (classes x count), for each class with images."""
    present = [i for i, n in enumerate(counts) if n]
    labels = np.repeat(np.arange(len(counts)), counts)
    weights = compute_class_weight("balanced", classes=np.array(present), y=labels)
    return {i: float(w) for i, w in zip(present, weights)}


def for_run(config: Config, counts: list[int]) -> dict[int, float] | None:
    return balanced(counts) if config.class_weight == "balanced" else None


def imbalance_line(class_names: list[str], counts: list[int], config: Config) -> str | None:
    """A line for a training set whose largest class has more than IMBALANCE_RATIO x its smallest's images."""
    present = [(n, name) for n, name in zip(counts, class_names) if n]
    (most, big), (least, small) = max(present), min(present)
    if most <= IMBALANCE_RATIO * least:
        return None
    advice = []
    if config.class_weight != "balanced":
        advice.append("--class-weight balanced")
    if config.monitor != "balanced_accuracy":
        advice.append("--monitor balanced_accuracy")
    said = f"imbalanced classes: {big} has {most} training images, {small} {least} ({most / least:.0f}x)"
    if not advice:
        return f"{said}; weighting the loss by class and keeping the checkpoint of best balanced accuracy"
    return f"{said}; accuracy then favours the large classes: consider {' and '.join(advice)}"
