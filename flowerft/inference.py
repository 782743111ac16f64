"""The one loop that runs a model (or any batch function) over a batched (inputs, labels) dataset.

Evaluation's probabilities (plain or test-time augmented), an export's check, the head phase's
cached features and a partial fine-tune's cached activations are all this loop; only the batch
function and what each keeps of its outputs differ.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np


def batches(fn: Callable[[Any], Any], ds: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fn(inputs), labels) as numpy arrays for each batch of `ds`, in the dataset's order."""
    for inputs, labels in ds:
        yield np.asarray(fn(inputs)), np.asarray(labels)


def collect(fn: Callable[[Any], Any], ds: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Every batch's outputs and labels, concatenated (for data that fits in memory)."""
    outputs, labels = [], []
    for out, y in batches(fn, ds):
        outputs.append(out)
        labels.append(y)
    if not outputs:
        raise ValueError("the dataset has no batches")
    return np.concatenate(outputs), np.concatenate(labels)


def flip_averaged(fn: Callable[[Any], Any]) -> Callable[[Any], np.ndarray]:
    """fn's outputs on a batch of images (N, H, W, C), averaged with its outputs on their left-right mirrors.

    A plain flip of the width axis, not a random augmentation layer: the same images give the same
    probabilities every time.
    """
    def averaged(images):
        images = np.asarray(images)
        return (np.asarray(fn(images)) + np.asarray(fn(np.ascontiguousarray(np.flip(images, axis=2))))) / 2

    return averaged
