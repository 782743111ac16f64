"""Predict the class of image files with a trained run's model, or with a model it exported.

Each file is decoded and resized by the same functions as the training pipeline, in parallel
through tf.data; the model holds its own pixel scaling, so nothing else is done to the pixels
here. Results stream out in the inputs' order, a batch at a time: a folder of 100k images needs
no more memory than a folder of a hundred.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np
import tensorflow as tf

from flowerft import artifacts, data, rundir
from flowerft.config import DEFAULTS
from flowerft.errors import DataError, FlowerftError
from flowerft.evaluate import checkpoint_path, load_model, load_run_config

# Batches decoded ahead of the model: enough to keep it busy, few enough for constant memory.
PREFETCH_BATCHES = 2


@dataclass
class Prediction:
    path: str
    top_k: list[dict[str, Any]]  # [{"label": ..., "probability": ...}], most likely first


@dataclass
class Failure:
    path: str
    message: str


def inputs_in_order(inputs: list[str | Path]) -> list[Path | Failure]:
    """Each input where it stands: a file as given, a folder as the images in it (and its
    subfolders) sorted, and a Failure for an input that names no image."""
    entries: list[Path | Failure] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if data.is_image_file(p))
            entries += images or [Failure(str(item), f"{item}: folder has no images ({', '.join(data.IMAGE_EXTENSIONS)})")]
        elif item.exists():
            entries.append(item)
        else:
            entries.append(Failure(str(item), f"{item}: no such file or folder"))
    return entries


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[Failure]]:
    """The image files the inputs name, and a Failure for each input that names none."""
    entries = inputs_in_order(inputs)
    return [e for e in entries if isinstance(e, Path)], [e for e in entries if isinstance(e, Failure)]


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in order]


def load_predictor(run_dir: str | Path | None = None, checkpoint: str = "best",
                   model_path: str | Path | None = None) -> tuple[artifacts.Predictor, int]:
    """The run's checkpoint, or the model at `model_path`, as a predictor; and the batch size to feed it.

    An exported model has no run config: the default batch size is as good as any.
    """
    if model_path is not None:
        return artifacts.load(model_path), DEFAULTS["batch_size"]
    path = rundir.find_run(run_dir)
    config = load_run_config(path)
    checkpoint_file = checkpoint_path(path, checkpoint)  # first: it says why a run has no model yet
    class_names = rundir.read_json(path / "class_names.json")
    return artifacts.KerasPredictor(load_model(checkpoint_file), class_names), config.batch_size


def stream(files: list[Path], predictor: artifacts.Predictor, batch_size: int, k: int) -> Iterator[Prediction | Failure]:
    """A Prediction or a Failure for each file, in order, read through tf.data: files decoded in
    parallel, predicted a batch at a time, and only a few batches in memory however many files.

    A file that does not decode is dropped from the pipeline (ignore_errors) and noticed by the gap
    in the indices; it is then read once more on its own, for the one-line reason DataError gives.
    """
    size, names = predictor.image_size, predictor.class_names
    if not files:
        return
    ds = (tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), [str(f) for f in files]))
          .map(lambda i, path: (i, data.load_image_file(path, size)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .ignore_errors()
          .batch(batch_size)
          .prefetch(PREFETCH_BATCHES))

    def failed(i: int) -> Failure:
        try:
            data.read_image(files[i], size)
            message = f"{files[i]}: cannot be read"  # tf.data failed where the eager read did not
        except DataError as e:
            message = str(e)
        return Failure(str(files[i]), message)

    expected = 0
    for indices, images in ds:
        probabilities = predictor(images.numpy())
        for i, row in zip(indices.numpy().tolist(), probabilities):
            yield from (failed(j) for j in range(expected, i))
            yield Prediction(str(files[i]), top_k(row, names, k))
            expected = i + 1
    yield from (failed(j) for j in range(expected, len(files)))


def stream_in_order(entries: list[Path | Failure], predictor: artifacts.Predictor, batch_size: int,
                    k: int) -> Iterator[Prediction | Failure]:
    """A result for each of inputs_in_order's entries, in that order: stream()'s for the image files
    (still a batch at a time), and each input that names no image where it stands among them."""
    results = stream([e for e in entries if isinstance(e, Path)], predictor, batch_size, k)
    for entry in entries:
        yield entry if isinstance(entry, Failure) else next(results)


def run(
    inputs: list[str | Path],
    run_dir: str | Path | None = None,
    checkpoint: str = "best",
    k: int = 3,
    model_path: str | Path | None = None,
) -> tuple[list[Prediction], list[Failure]]:
    """Predictions for every readable image, and a Failure for each input that is not one.

    The model is the run's checkpoint, or `model_path`: a SavedModel folder, or a .tflite, .onnx
    or .keras file, which carries its own input size and class names.
    """
    predictor, batch_size, entries, k = prepare(inputs, run_dir, checkpoint, k, model_path)
    predictions, failures = [], []
    for result in stream_in_order(entries, predictor, batch_size, k):
        (predictions if isinstance(result, Prediction) else failures).append(result)
    return predictions, failures


def prepare(inputs, run_dir, checkpoint, k, model_path):
    """(predictor, batch size, inputs_in_order's entries, k), checked before any compute."""
    if k < 1:
        raise FlowerftError(f"top-k must be 1 or more, got {k}")
    predictor, batch_size = load_predictor(run_dir, checkpoint, model_path)
    return predictor, batch_size, inputs_in_order(inputs), min(k, len(predictor.class_names))  # no columns for no class


# --------------------------------------------------------------------------- rows for --csv and --jsonl


def csv_header(k: int) -> list[str]:
    return ["path", *[f"{what}_{rank}" for rank in range(1, k + 1) for what in ("label", "probability")], "error"]


def csv_row(result: Prediction | Failure, k: int) -> list[str]:
    if isinstance(result, Failure):
        return [result.path, *[""] * (2 * k), result.message]
    cells = [cell for t in result.top_k for cell in (t["label"], f"{t['probability']:.6f}")]
    return [result.path, *cells, *[""] * (2 * k - len(cells)), ""]


def json_row(result: Prediction | Failure) -> dict[str, Any]:
    if isinstance(result, Failure):
        return {"path": result.path, "error": result.message}
    return {"path": result.path, "top_k": result.top_k}


def write_rows(results: Iterable[Prediction | Failure], out: TextIO, fmt: str, k: int) -> Iterator[Prediction | Failure]:
    """Write each result to `out` as a CSV row or a JSON line as it comes, and pass it on (for a progress bar)."""
    writer = csv.writer(out)
    if fmt == "csv":
        writer.writerow(csv_header(k))
    for result in results:
        if fmt == "csv":
            writer.writerow(csv_row(result, k))
        else:
            out.write(json.dumps(json_row(result)) + "\n")
        yield result
