"""Evaluate a trained run on its test (or validation) split, exactly as training saw the data.

Everything comes from the run directory: the config, the class names, the split's files
(image folders) or TFDS slice, and the checkpoint. The report is plain data; the CLI shows it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix, f1_score

from flowerft import figures, inference
from flowerft.config import Config
from flowerft.data import pipelines, sources
from flowerft.errors import FlowerftError
from flowerft.runs import layout, loader

SPLITS = ("test", "valid")
# Test-time augmentations: "flip" averages each image's probabilities with its left-right mirror's
# (a mirrored photo of a flower is still that flower, unlike one of text or digits: the mean of the
# two views is a steadier guess where the model half sees the class).
TTA = ("flip",)


def predict_dataset(model: keras.Model, ds, tta: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and true labels over a batched (images, labels) dataset, averaged over `tta`'s views."""
    fn = model.predict_on_batch if tta is None else inference.flip_averaged(model.predict_on_batch)
    return inference.collect(fn, ds)


def predict_split(
    run_dir: Path, model_path: Path, split: str, config: Config | None = None, tta: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A model's probabilities on a run's recorded split, its true labels, and the class names."""
    config = config or loader.run_config(run_dir)
    model = loader.load_model(model_path)
    splits = sources.load_recorded(run_dir, config, (split,))
    probabilities, labels = predict_dataset(model, pipelines.pipeline(splits, split, config), tta)
    return probabilities, labels, splits.class_names


def scores(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Loss, accuracy, balanced accuracy, macro F1, top-2 accuracy, per-class precision/recall/F1
    and the confusion matrix.

    Balanced accuracy (the mean of the per-class recalls) and macro F1 weigh every class alike: on an
    imbalanced split, a model that ignores a rare class keeps a high accuracy but not these.
    """
    n = len(class_names)
    loss = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    accuracy.update_state(labels, probabilities)
    top2 = keras.metrics.SparseTopKCategoricalAccuracy(k=min(2, n))
    top2.update_state(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    per_class = classification_report(
        labels, predicted, labels=list(range(n)), target_names=class_names, output_dict=True, zero_division=0
    )
    with warnings.catch_warnings():  # a small split can lack a class: its recall is left out, as sklearn warns
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, predicted))
    return {
        "examples": int(len(labels)),
        "loss": float(loss),
        "accuracy": float(accuracy.result()),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(labels, predicted, labels=list(range(n)), average="macro", zero_division=0)),
        "top2_accuracy": float(top2.result()),
        "per_class": {name: per_class[name] for name in class_names},
        "macro_avg": per_class["macro avg"],
        "weighted_avg": per_class["weighted avg"],
        "class_names": class_names,
        # rows: true class, columns: predicted class
        "confusion_matrix": confusion_matrix(labels, predicted, labels=list(range(n))).tolist(),
    }


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 2.5 + 0.8 * len(class_names)
    fig, ax = figures.pyplot().subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    figures.save_figure(fig, path)


def output_names(split: str, checkpoint: str, tta: str | None = None) -> tuple[str, str, str]:
    """evaluation.json / confusion_matrix.png / predictions.json for the default; suffixed names otherwise
    (`_tta` last for a test-time augmented one, which leaves the plain evaluation in place)."""
    suffix = "" if (split, checkpoint) == ("test", "best") else f"_{split}_{checkpoint}"
    suffix += "_tta" if tta else ""
    return f"evaluation{suffix}.json", f"confusion_matrix{suffix}.png", f"predictions{suffix}.json"


def per_image(run_dir: Path, split: str, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Each image's true label and probabilities, in the split's order (what `report` shows mistakes from).

    A folder run names each image's file (from splits.json); a TFDS run has only its position in the split.
    """
    files = run_dir / layout.SPLITS
    return {
        "split": split,
        "paths": [p for p, _ in layout.read_json(files)[split]] if files.is_file() else None,
        "labels": labels.astype(int).tolist(),
        "probabilities": np.round(probabilities.astype(float), 6).tolist(),
    }


@dataclass
class Evaluation:
    report: dict[str, Any]
    written: list[Path]  # the report's files, or nothing if they could not be written
    not_written: str | None = None  # why not, and what to do


def run(
    run_dir: str | Path | None = None, checkpoint: str = "best", split: str = "test", output: str | Path | None = None,
    tta: str | None = None,
) -> Evaluation:
    """Evaluate a run and write the report, its confusion matrix and the per-image probabilities
    beside it, or into `output` (see output_names). With `tta` ("flip"), each image's probabilities
    are the mean of the model's on it and on its mirror image.

    A run folder that cannot be written to (shared, archived, read-only) still gets its report:
    only the files are missing, and `not_written` says why and what to do.
    """
    if split not in SPLITS:
        raise FlowerftError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if tta is not None and tta not in TTA:
        raise FlowerftError(f"tta must be one of {', '.join(TTA)}, got {tta!r}")
    path = layout.find_run(run_dir)
    config = loader.run_config(path)
    model_path = loader.checkpoint_path(path, checkpoint)
    probabilities, labels, class_names = predict_split(path, model_path, split, config, tta)
    result = {
        "run_dir": str(path),
        "checkpoint": str(model_path.relative_to(path)),
        "split": split,
        "tta": tta,
        **scores(probabilities, labels, class_names),
    }
    folder = Path(output) if output is not None else path
    files = [folder / name for name in output_names(split, checkpoint, tta)]
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        layout.write_json(files[0], result)
        written.append(files[0])
        plot_confusion_matrix(result["confusion_matrix"], class_names, files[1],
                              f"{path.name}: {split} split, {checkpoint} checkpoint" + (f", {tta} TTA" if tta else ""))
        written.append(files[1])
        layout.write_json(files[2], per_image(path, split, probabilities, labels))
        written.append(files[2])
    except OSError as e:
        missing = " and ".join(f.name for f in files if f not in written)
        where = "give --output DIR to write them elsewhere" if output is None else "give another --output"
        return Evaluation(result, written, f"could not write {missing} to {folder} ({e.strerror or e}); {where}")
    return Evaluation(result, files)
