"""Predict the class of image files with a trained run's model, or with a model it exported.

Each file is decoded and resized by the same functions as the training pipeline; the model
holds its own pixel scaling, so nothing else is done to the pixels here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowerft import artifacts, data, rundir
from flowerft.config import DEFAULTS
from flowerft.errors import DataError, FlowerftError
from flowerft.evaluate import checkpoint_path, load_model, load_run_config


@dataclass
class Prediction:
    path: str
    top_k: list[dict[str, Any]]  # [{"label": ..., "probability": ...}], most likely first


@dataclass
class Failure:
    path: str
    message: str


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[Failure]]:
    """Files stay as given; a folder becomes the images in it (and its subfolders), sorted."""
    files, failures = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if data.is_image_file(p))
            if images:
                files += images
            else:
                failures.append(Failure(str(item), f"{item}: folder has no images ({', '.join(data.IMAGE_EXTENSIONS)})"))
        elif item.exists():
            files.append(item)
        else:
            failures.append(Failure(str(item), f"{item}: no such file or folder"))
    return files, failures


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in order]


def run(
    inputs: list[str | Path],
    run_dir: str | Path | None = None,
    checkpoint: str = "best",
    k: int = 3,
    model_path: str | Path | None = None,
) -> tuple[list[Prediction], list[Failure]]:
    """Predictions for every readable image, and a Failure for each input that is not one.

    The model is the run's checkpoint, or `model_path`: a SavedModel folder or a .tflite file
    that `flowerft export` wrote, which carries its own input size and class names.
    """
    if k < 1:
        raise FlowerftError(f"top-k must be 1 or more, got {k}")
    if model_path is not None:
        predictor = artifacts.load(model_path)
        # An exported model has no run config: the default batch size is as good as any.
        class_names, image_size, batch_size = predictor.class_names, predictor.image_size, DEFAULTS["batch_size"]
        predict_batch = predictor
    else:
        path = rundir.find_run(run_dir)
        config = load_run_config(path)
        checkpoint_file = checkpoint_path(path, checkpoint)  # first: it says why a run has no model yet
        class_names = rundir.read_json(path / "class_names.json")
        image_size, batch_size = config.image_size, config.batch_size
        model = load_model(checkpoint_file)

        def predict_batch(images: np.ndarray) -> np.ndarray:
            return model.predict_on_batch(images.astype("float32"))

    k = min(k, len(class_names))  # no empty columns for classes that do not exist
    files, failures = expand_inputs(inputs)

    predictions: list[Prediction] = []
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if batch:
            probabilities = predict_batch(np.stack([image for _, image in batch]))
            predictions.extend(Prediction(str(p), top_k(row, class_names, k)) for (p, _), row in zip(batch, probabilities))
            batch.clear()

    for file in files:
        try:
            batch.append((file, data.read_image(file, image_size).numpy()))
        except DataError as e:
            failures.append(Failure(str(file), str(e)))
        if len(batch) == batch_size:
            flush()
    flush()
    return predictions, failures
