"""The verification table of `flowerft export`: every artifact run on the held-out split by its
runtime's own loader (flowerft/serving/predictors.py), its answers, size and latency beside the
`.keras` model's.

A float format must give the `.keras` model's answers: one that answers differently is an export
bug, not a rounding matter. int8 shows what quantization costs instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from flowerft import inference
from flowerft.command_defaults import LATENCY_IMAGES, MAX_FLOAT_DISAGREEMENT
from flowerft.data import pipelines, splitting
from flowerft.serving.predictors import KerasPredictor, ONNXPredictor, SavedModelPredictor, TFLitePredictor

# The rows that must give the .keras model's answers.
FLOAT_ROWS = ("savedmodel", "savedmodel-bytes", "tflite", "tflite-fp16", "onnx")
# The first calls of a model trace, allocate and warm caches: not what a served model costs.
WARMUP_CALLS = 3


@dataclass
class HeldOut:
    images: np.ndarray  # uint8 [n, size, size, 3], decoded and resized as training's pipeline does
    labels: np.ndarray
    encoded: list[bytes]  # each image's file bytes (image folders) or a lossless PNG of it (TFDS), for serving_bytes


def read_held_out(splits: splitting.Splits, split: str, image_size: int) -> HeldOut:
    """The split's images, read once as uint8, and each image encoded."""
    images, labels = pipelines.decode_split(splits, split, image_size)
    if splits.element == "path":
        encoded = [Path(p).read_bytes() for p, _ in splits.files[split]]
    elif splits.element == "encoded":  # a Hugging Face row's image bytes
        encoded = [contents.numpy() for contents, _ in splits.get(split)]
    else:
        encoded = [tf.io.encode_png(image).numpy() for image, _ in splits.get(split)]
    return HeldOut(images.numpy(), labels.numpy(), encoded)


def table(reference: KerasPredictor, reference_path: Path, artifacts: dict[str, Path], held_out: HeldOut,
          batch_size: int) -> list[dict[str, Any]]:
    """The rows of export.json: the .keras model first, then each artifact (a SavedModel twice:
    its uint8 signature and its encoded-bytes one), with its accuracy change from the .keras model."""
    images, labels = held_out.images, held_out.labels
    keras_row, answers = measure("keras", reference_path, reference, images, labels, batch_size, None)
    rows = [keras_row]
    for fmt, path in artifacts.items():
        if fmt == "savedmodel":
            served = SavedModelPredictor(path)
            rows.append(measure(fmt, path, served, images, labels, batch_size, answers)[0])
            rows.append(measure("savedmodel-bytes", path, lambda items: served.from_bytes(list(items))["probabilities"],
                                held_out.encoded, labels, batch_size, answers)[0])
        elif fmt == "onnx":
            rows.append(measure(fmt, path, ONNXPredictor(path), images, labels, batch_size, answers)[0])
        else:
            lite = TFLitePredictor(path, reference.class_names)
            rows.append(measure(fmt, path, lite, images, labels, batch_size, answers)[0])
            # int8: (1.0, 0) when the calibration images span 0-255 (photos do): pixels go in as they are.
            rows[-1]["input"] = {"dtype": np.dtype(lite.input["dtype"]).name,
                                 "scale": float(lite.input["quantization"][0]),
                                 "zero_point": int(lite.input["quantization"][1])}
    for row in rows:
        row["accuracy_change"] = row["accuracy"] - keras_row["accuracy"]
    return rows


def measure(fmt: str, path: Path, predict: Callable, items, labels: np.ndarray, batch_size: int,
            reference: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
    """One row of the table, and the format's top-1 answers."""
    batches = [(items[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    probabilities, _ = inference.collect(predict, batches)
    predicted = probabilities.argmax(axis=1)
    agreeing = predicted == (predicted if reference is None else reference)
    row = {
        "format": fmt,
        "path": str(path),
        "size_bytes": size_of(path),
        "accuracy": float(np.mean(predicted == labels)),
        "agreement": float(np.mean(agreeing)),
        "disagreeing_images": int((~agreeing).sum()),
        "latency_ms": batch_one_latency_ms(predict, items),
    }
    return row, predicted


def batch_one_latency_ms(predict: Callable, items) -> float:
    """Mean wall time of one image alone, over the first LATENCY_IMAGES items, after warm-up."""
    sample = items[:LATENCY_IMAGES]
    for i in range(min(WARMUP_CALLS, len(sample))):
        predict(sample[i : i + 1])
    times = []
    for i in range(len(sample)):
        start = time.perf_counter()
        predict(sample[i : i + 1])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.mean(times))


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def float_problem(rows: list[dict[str, Any]], n: int, folder: Path) -> str | None:
    """What to tell the user when a float format disagrees with the .keras model on too many images, or None."""
    for row in rows:
        if row["format"] in FLOAT_ROWS and row["disagreeing_images"] > MAX_FLOAT_DISAGREEMENT * n:
            return (f"{row['format']} disagrees with the .keras model on {row['disagreeing_images']} of {n} test images "
                    f"({row['disagreeing_images'] / n:.1%}; a float format may differ on {MAX_FLOAT_DISAGREEMENT:.1%} at most): "
                    f"do not ship it; the table is in {folder / 'export.json'}")
    return None
