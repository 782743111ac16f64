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

import tensorflow as tf

from flowerft import inference
from flowerft.config import DEFAULTS
from flowerft.data import image_io
from flowerft.data.dataset_options import without_autotune
from flowerft.data.image_inputs import Failure, inputs_in_order
from flowerft.errors import DataError, FlowerftError
from flowerft.ranking import top_k
from flowerft.runs import layout, loader
from flowerft.serving import predictors

# Batches decoded ahead of the model: enough to keep it busy, few enough for constant memory.
PREFETCH_BATCHES = 2


@dataclass
class Prediction:
    path: str
    top_k: list[dict[str, Any]]  # [{"label": ..., "probability": ...}], most likely first


def load_predictor(run_dir: str | Path | None = None, checkpoint: str = "best",
                   model_path: str | Path | None = None) -> tuple[predictors.Predictor, int]:
    """The run's checkpoint, or the model at `model_path`, as a predictor; and the batch size to feed it.

    An exported model has no run config: the default batch size is as good as any.
    """
    if model_path is not None:
        return predictors.load(model_path), DEFAULTS["batch_size"]
    path = layout.find_run(run_dir)
    config = loader.run_config(path)
    checkpoint_file = loader.checkpoint_path(path, checkpoint)  # first: it says why a run has no model yet
    return predictors.KerasPredictor(loader.load_model(checkpoint_file), loader.class_names(path)), config.batch_size


def stream(files: list[Path], predictor: predictors.Predictor, batch_size: int, k: int) -> Iterator[Prediction | Failure]:
    """A Prediction or a Failure for each file, in order, read through tf.data: files decoded in
    parallel, predicted a batch at a time, and only a few batches in memory however many files.

    A file that does not decode is dropped from the pipeline (ignore_errors) and noticed by the gap
    in the indices; it is then read once more on its own, for the one-line reason DataError gives.
    """
    size, names = predictor.image_size, predictor.class_names
    if not files:
        return
    # Each image's index rides where a label would: it tells which files the pipeline dropped.
    ds = (tf.data.Dataset.from_tensor_slices(([str(f) for f in files], tf.range(len(files), dtype=tf.int64)))
          .map(lambda path, i: (image_io.load_image_file(path, size), i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .ignore_errors()
          .batch(batch_size)
          .prefetch(PREFETCH_BATCHES))
    ds = without_autotune(ds)  # a long stream ends without the autotuner's stall (dataset_options.py)

    def failed(i: int) -> Failure:
        try:
            image_io.read_image(files[i], size)
            message = f"{files[i]}: cannot be read"  # tf.data failed where the eager read did not
        except DataError as e:
            message = str(e)
        return Failure(str(files[i]), message)

    expected = 0
    for probabilities, indices in inference.batches(lambda images: predictor(images.numpy()), ds):
        for i, row in zip(indices.tolist(), probabilities):
            yield from (failed(j) for j in range(expected, i))
            yield Prediction(str(files[i]), top_k(row, names, k))
            expected = i + 1
    yield from (failed(j) for j in range(expected, len(files)))


def stream_in_order(entries: list[Path | Failure], predictor: predictors.Predictor, batch_size: int,
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
