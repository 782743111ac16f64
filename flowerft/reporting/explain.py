"""`flowerft explain`: for each image, a PNG of the photo, its Grad-CAM heatmap and the top-k classes.

The model is a run's best checkpoint or a `.keras` file. Each image is read exactly as
`predict` reads it (decoded, resized to the model's square input); the heatmap, computed at
that input, is stretched back to the photo's own shape, as the resize stretched the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowerft import figures
from flowerft.config import DEFAULTS
from flowerft.data import image_io
from flowerft.data.image_inputs import Failure, expand_inputs
from flowerft.errors import DataError, FlowerftError
from flowerft.ranking import top_k
from flowerft.reporting import gradcam
from flowerft.runs import layout, loader

TOP_K = 3
OVERLAY_ALPHA = 0.45  # enough heat to read, enough photo to see what it covers
SHOWN_PX = 640  # photos are shrunk to this longer side first: the PNG shows them at about 320 px


@dataclass
class Explanation:
    path: str
    explained: str  # the class the heatmap is for
    top_k: list[dict[str, Any]]
    peak: dict[str, float] | None  # x, y in the photo's pixels, x_fraction, y_fraction of its width and height;
    # None when nothing in the image counts for the class (the map is 0 everywhere)
    png: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "class": self.explained, "top_k": self.top_k, "peak": self.peak, "png": self.png}


def load(run_dir: str | Path | None, model_path: str | Path | None):
    """(model, class names, input size) from a run's best checkpoint or a .keras file."""
    if model_path is not None:
        path = Path(model_path)
        if path.suffix != ".keras" or not path.is_file():
            raise FlowerftError(f"--model {path}: give a .keras file (a run's checkpoint or a Keras classifier)")
        model = loader.load_model(path)
        n = int(model.output_shape[-1])
        names = _names_beside(path) or [f"class {i}" for i in range(n)]
        if len(names) != n:
            raise FlowerftError(f"{path} has {n} outputs but the class_names.json beside it names {len(names)} classes")
    else:
        run = layout.find_run(run_dir)
        loader.run_config(run)  # says so when the folder is not a run
        model = loader.load_model(loader.checkpoint_path(run, "best"))
        names = loader.class_names(run)
    height, width = model.input_shape[1:3]
    if height != width:
        raise FlowerftError(f"model {model.name} takes {height} x {width} images; explain needs a square input")
    # A classifier that takes any size (a whole Keras application, say) sees images at the default size.
    return model, names, int(height or DEFAULTS["image_size"])


def _names_beside(path: Path) -> list[str] | None:
    """A checkpoint's class names: class_names.json in its folder or in the run dir above checkpoints/."""
    for folder in (path.parent, path.parent.parent):
        if (folder / layout.CLASS_NAMES).is_file():
            return layout.read_json(folder / layout.CLASS_NAMES)
    return None


def run(inputs: list[str | Path], run_dir: str | Path | None = None, model_path: str | Path | None = None,
        explained_class: str | None = None, output: str | Path = "explained", k: int = TOP_K,
        ) -> tuple[list[Explanation], list[Failure]]:
    """One PNG per readable image in `output` (named after the image), and a Failure for each input that is not one."""
    model, names, size = load(run_dir, model_path)
    if explained_class is not None and explained_class not in names:
        raise FlowerftError(f"--class {explained_class!r} is not a class of this model; its classes are {', '.join(names)}")
    explainer = gradcam.GradCam(model)
    folder = Path(output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowerftError(f"cannot write to {folder}: {e.strerror or e}; give another --output") from None
    files, failures = expand_inputs(inputs)
    explanations = []
    for file in files:
        try:
            image = image_io.read_image(file, size).numpy()
            photo, (width, height) = _open_rgb(file)
        except DataError as e:
            failures.append(Failure(str(file), str(e)))
            continue
        cls = None if explained_class is None else [names.index(explained_class)]
        maps, probabilities = explainer(image[None], cls)
        chosen = names[int(probabilities[0].argmax())] if explained_class is None else explained_class
        heat = stretch(maps[0], photo.shape[:2])
        row, column = gradcam.peak(maps[0])
        x_fraction, y_fraction = (column + 0.5) / size, (row + 0.5) / size
        found = bool(maps[0].max() > 0)
        png = folder / _png_name(file, explanations)
        ranked = top_k(probabilities[0], names, min(k, len(names)))
        write_png(png, photo, heat, chosen if found else f"no evidence for {chosen}", ranked, file.name)
        explanations.append(Explanation(
            str(file), chosen, ranked,
            {"x": int(x_fraction * width), "y": int(y_fraction * height),
             "x_fraction": round(x_fraction, 4), "y_fraction": round(y_fraction, 4)} if found else None, str(png)))
    return explanations, failures


def _open_rgb(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The photo as uint8 RGB, shrunk to SHOWN_PX at most, and its own (width, height)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            size = image.size
            image = image.convert("RGB")
            image.thumbnail((SHOWN_PX, SHOWN_PX))
            return np.asarray(image), size
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e}") from None


def _png_name(file: Path, done: list[Explanation]) -> str:
    """<stem>_gradcam.png; a second image of the same stem (another folder) gets its parent's name too."""
    name = f"{file.stem}_gradcam.png"
    if any(Path(e.png).name == name for e in done):
        name = f"{file.parent.name}_{file.stem}_gradcam.png"
    return name


def stretch(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map at the model's square input, stretched to the photo's (height, width) as the resize squeezed it."""
    import tensorflow as tf

    return tf.image.resize(cam[..., None], shape, method="bilinear")[..., 0].numpy()


def heat_overlay(photo: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The photo with the heatmap over it (matplotlib's jet), as uint8 RGB."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    return np.clip((1 - OVERLAY_ALPHA) * photo + OVERLAY_ALPHA * colours, 0, 255).astype("uint8")


def write_png(path: Path, photo: np.ndarray, heat: np.ndarray, explained: str, ranked, title: str) -> None:
    plt = figures.pyplot()
    fig = plt.figure(figsize=(7.2, 5.4))
    grid = fig.add_gridspec(2, 2, height_ratios=[3.2, 0.35 + 0.32 * len(ranked)])
    for column, (picture, caption) in enumerate(((photo, title), (heat_overlay(photo, heat), f"Grad-CAM: {explained}"))):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(picture)
        ax.set_title(caption, fontsize=10)
        ax.axis("off")
    bars = fig.add_subplot(grid[1, :])
    labels = [r["label"] for r in ranked][::-1]
    values = [r["probability"] for r in ranked][::-1]
    colours = ["#b3261e" if explained.endswith(label) else "#5b6570" for label in labels]
    bars.barh(labels, values, color=colours)
    for y, value in enumerate(values):  # beside the bar, or inside a long one
        inside = value > 0.85
        bars.text(value - 0.01 if inside else value + 0.01, y, f"{value:.1%}", va="center", fontsize=9,
                  ha="right" if inside else "left", color="white" if inside else "black")
    bars.set_xlim(0, 1)
    bars.set_title(f"top {len(ranked)}", fontsize=9, loc="left")
    bars.spines[["top", "right"]].set_visible(False)
    figures.save_figure(fig, path)


def thumbnail_heatmap(model_explainer: gradcam.GradCam, image: np.ndarray, photo: np.ndarray, cls: int | None = None) -> np.ndarray:
    """The photo with the heatmap of `cls` (None: the predicted class) over it, for the report's grid."""
    maps, _ = model_explainer(image[None], None if cls is None else [cls])
    return heat_overlay(photo, stretch(maps[0], photo.shape[:2]))
