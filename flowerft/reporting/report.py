"""`flowerft report`: one self-contained HTML page on what a run learned.

The page (R/report.html) shows the run (data, model, every option, wall time, where it
trained), its training curves (also R/curves.png), the test evaluation, the most confident
mistakes with their images, and the run's warnings. Images are embedded as data: URIs, so
the file can be mailed or archived alone; it needs no network and no JavaScript.

A part the run dir cannot give (training interrupted, test images moved, ...) is shown as
missing, with the reason; the rest of the page is still written.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flowerft.errors import EvaluationFailed, FlowerftError
from flowerft.reporting import curves, evaluate, html_page
from flowerft.reporting.page_data import Example, Missing, Page
from flowerft.runs import layout, listing, loader, source_record

REPORT = "report.html"
# A grid a person can take in at once; every class's worst example is shown besides.
MISTAKES_SHOWN = 12
THUMBNAIL_PX = 160


def run(run_dir: str | Path | None = None, runs_root: str | Path = "runs",
        notify: Callable[[str], None] = lambda message: None, output: str | Path | None = None) -> Path:
    """Write R/report.html (and R/curves.png) for a run, evaluating it first when needed.

    With `output`, the page, the curves and any evaluation it runs go into that folder instead
    (a run that is shared or read-only).
    """
    path = layout.find_run(run_dir, runs_root)
    if not layout.is_run(path):
        raise FlowerftError(f"{path} is not a flowerft run (it has no config.yaml from `flowerft train`); give --run-dir of a run")
    out = path if output is None else Path(output)
    if output is None and not os.access(path, os.W_OK | os.X_OK):  # before evaluating: the page could not be saved
        raise FlowerftError(f"cannot write {path / REPORT}: the run dir is not writable; give --output DIR "
                            "(or copy the run somewhere writable)")
    if output is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlowerftError(f"cannot write to --output {out}: {e.strerror or e}; give another folder") from None
    page = Page(path, layout.read_yaml(path / layout.CONFIG), listing.describe(path), _read(path / layout.METRICS), out=out)
    page.class_names = _read(path / layout.CLASS_NAMES) or []
    page.sizes = (page.metrics or {}).get("split_sizes") or _sizes_from_splits(path)
    if not source_record.has_test(path):
        page.split = "valid"
        page.notes.append("the run's data came without a test split: the evaluation is on its validation split")
    for name, build in (("curves", _curves), ("evaluation", _evaluation), ("mistakes", _mistakes)):
        try:
            page.parts[name] = build(page, notify)
        except Missing as e:
            page.parts[name] = e
    page.warnings += (page.metrics or {}).get("warnings", [])
    skipped = _read(path / layout.SKIPPED) or []
    if skipped:
        page.warnings.append(f"{len(skipped)} file{'s' if len(skipped) > 1 else ''} of the data folder "
                             "left out of every split, not readable as images: "
                             + ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    try:
        layout.write_atomic(out / REPORT, html_page.render(page))
    except OSError as e:
        raise FlowerftError(f"cannot write {out / REPORT}: {e.strerror or e}; give --output DIR") from None
    if page.failed:
        raise EvaluationFailed(f"the evaluation failed (the page says so too): {page.failed}", out / REPORT)
    return out / REPORT


def _read(path: Path):
    try:
        return layout.read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _sizes_from_splits(run_dir: Path) -> dict[str, int]:
    """Runs trained before metrics.json recorded the sizes, and unfinished ones: count splits.json."""
    files = _read(run_dir / layout.SPLITS)
    return {s: len(files[s]) for s in ("train", "valid", "test") if s in files} if isinstance(files, dict) else {}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _curves(page: Page, notify) -> str:
    try:
        written = curves.write_curves(page.run_dir, page.out)
    except (OSError, ValueError, KeyError) as e:
        raise Missing(f"the history could not be plotted ({type(e).__name__}: {e})") from None
    if written is None:
        raise Missing("no epoch has finished yet (no history.json nor history_<phase>.csv)")
    return data_uri(written)


def _checkpoint_file(page: Page) -> Path:
    if page.metrics is None:
        what = {listing.IN_PROGRESS: "is still training", listing.INTERRUPTED: "was interrupted"}.get(page.row.status, "did not finish")
        raise Missing(f"the run {what}: there is no best checkpoint to evaluate yet"
                      + (f"; continue it with `flowerft train --resume --run-dir {page.run_dir}`" if page.row.status == listing.INTERRUPTED else ""))
    return page.run_dir / page.metrics["best_checkpoint"]


def _evaluation(page: Page, notify) -> dict[str, Any]:
    """evaluation.json, evaluating first when it is missing, older than the checkpoint, lacks per-image
    predictions, or predates balanced accuracy and macro F1."""
    checkpoint = _checkpoint_file(page)
    evaluation_path, matrix_path, predictions_path = (page.out / n for n in evaluate.output_names(page.split, "best"))
    current = (evaluation_path.is_file() and predictions_path.is_file() and checkpoint.is_file()
               and evaluation_path.stat().st_mtime >= checkpoint.stat().st_mtime
               and "balanced_accuracy" in (_read(evaluation_path) or {}))
    if not current:
        notify(f"evaluating {page.run_dir} on its {page.split} split first")
        try:
            result = evaluate.run(page.run_dir, split=page.split, output=None if page.out == page.run_dir else page.out)
        except FlowerftError as e:
            page.failed = str(e)
            if not evaluation_path.is_file():
                raise Missing(f"could not evaluate: {e}") from None
            page.warnings.append(f"the evaluation shown is out of date (older than the checkpoint, or without balanced accuracy); evaluating again failed: {e}")
        else:
            if result.not_written:
                raise Missing(result.not_written)
            page.notes.append(f"evaluated the best checkpoint on the {page.split} split for this report")
    evaluation = _read(evaluation_path)
    if not isinstance(evaluation, dict) or "per_class" not in evaluation:
        raise Missing(f"{evaluation_path} is not an evaluation written by `flowerft evaluate`")
    evaluation["matrix_uri"] = data_uri(matrix_path) if matrix_path.is_file() else None
    return evaluation


def _mistakes(page: Page, notify) -> dict[str, list[Example]]:
    """The most confident wrong predictions, and per class the image the model gave its class the least."""
    if isinstance(page.parts.get("evaluation"), Missing):
        raise Missing("needs the evaluation, which is missing (see above)")
    predictions = _read(page.out / evaluate.output_names(page.split, "best")[2])
    if not isinstance(predictions, dict):
        raise Missing("predictions.json is missing: run `flowerft evaluate` on this run")
    names = page.parts["evaluation"]["class_names"]
    probabilities, labels = np.array(predictions["probabilities"]), np.array(predictions["labels"])
    paths = predictions.get("paths")

    def example(i: int) -> Example:
        predicted = int(probabilities[i].argmax())
        return Example(i, names[labels[i]], names[predicted], float(probabilities[i, predicted]),
                       float(probabilities[i, labels[i]]), paths[i] if paths else None)

    wrong = [i for i in np.argsort(-probabilities.max(axis=1), kind="stable") if probabilities[i].argmax() != labels[i]]
    worst = []
    for c in range(len(names)):
        members = np.flatnonzero(labels == c)
        if len(members):
            worst.append(int(members[probabilities[members, c].argmin()]))
    chosen = {"wrong": [example(int(i)) for i in wrong[:MISTAKES_SHOWN]], "worst": [example(i) for i in worst],
              "wrong_total": len(wrong), "examples": len(labels)}
    _add_thumbnails(page, [*chosen["wrong"], *chosen["worst"]], heatmaps=_explainer(page))
    return chosen


def _explainer(page: Page):
    """Grad-CAM of the best checkpoint, or None (the grid then shows the plain thumbnails, and says why)."""
    from flowerft.reporting import gradcam

    try:
        model = loader.load_model(_checkpoint_file(page))
        return gradcam.GradCam(model), int(model.input_shape[1])
    except (FlowerftError, Missing) as e:
        page.warnings.append(f"the mistakes are shown without heatmaps: {e}")
        return None


def _jpeg_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _add_thumbnails(page: Page, examples: list[Example], heatmaps=None) -> None:
    """Each example's image as a small JPEG data: URI: the file of a folder run, else the TFDS test split's image;
    with `heatmaps` (a GradCam and its input size), a wrong prediction's heatmap for its predicted class too."""
    from PIL import Image

    from flowerft.data import image_io
    from flowerft.reporting import explain

    images: dict[int, Any] = {}
    wanted = {e.index for e in examples}
    if any(e.path is None for e in examples):
        images = _tfds_images(page, wanted)
    for e in examples:
        try:
            image = Image.open(e.path) if e.path else Image.fromarray(images[e.index]) if e.index in images else None
            if image is None:
                continue
            image = image.convert("RGB")
            # At the model's input, resized as the test pipeline resizes it.
            square = image_io.resize_image(np.asarray(image), heatmaps[1]).numpy() if heatmaps else None
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            e.thumbnail = _jpeg_uri(image)
            if heatmaps and e.predicted != e.true:
                predicted = page.parts["evaluation"]["class_names"].index(e.predicted)
                overlay = explain.thumbnail_heatmap(heatmaps[0], square, np.asarray(image), predicted)
                e.heatmap = _jpeg_uri(Image.fromarray(overlay))
        except FlowerftError as problem:  # a model Grad-CAM cannot explain: the plain thumbnails stay
            page.warnings.append(f"the mistakes are shown without heatmaps: {problem}")
            heatmaps = None
        except OSError:  # the file moved or changed since training: the caption still says which it was
            e.thumbnail = None


def _tfds_images(page: Page, wanted: set[int]) -> dict[int, np.ndarray]:
    from PIL import Image

    from flowerft.data import sources

    try:
        splits = sources.load_recorded(page.run_dir, loader.run_config(page.run_dir), (page.split,))
    except FlowerftError:
        return {}
    found = {}
    for i, (image, _) in enumerate(splits.get(page.split)):
        if i in wanted:  # a decoded image (TFDS), or an encoded one (Hugging Face)
            found[i] = image.numpy() if splits.element == "image" else np.asarray(Image.open(io.BytesIO(image.numpy())).convert("RGB"))
            if len(found) == len(wanted):
                break
    return found
