"""`flowerft export`: a run's model as a SavedModel for TF Serving and as TFLite files, verified.

    <output>/savedmodel/          signatures serving_default (uint8 images) and serving_bytes (encoded images)
    <output>/model.tflite         float32
    <output>/model_fp16.tflite    float16 weights (computed in float32)
    <output>/model_int8.tflite    full-integer int8: uint8 pixels in, uint8 probabilities out
    <output>/model.onnx           float32 pixels in, probabilities out, for onnxruntime (class names in its metadata)
    <output>/labels.txt           the class names, one a line in label order, for the TFLite and ONNX files
    <output>/export.json          the verification table
    <output>/README.md            the model card

<output> is <run_dir>/export unless given. Every artifact is then run on the run's own test split
by its runtime's own loader and compared with the `.keras` checkpoint it came from
(flowerft/serving/export_checks.py): a float format that answers differently is an export bug.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf

from flowerft import machine, precision
from flowerft.command_defaults import MAX_FLOAT_DISAGREEMENT, chosen_formats
from flowerft.config import Config
from flowerft.data import image_io, pipelines, sources, splitting
from flowerft.errors import FlowerftError, first_line
from flowerft.layer_tree import all_layers
from flowerft.model import build_model
from flowerft.runs import layout, loader, source_record
from flowerft.serving import export_checks, model_card
from flowerft.serving.predictors import (
    BYTES_INPUT,
    BYTES_SIGNATURE,
    IMAGES_INPUT,
    IMAGES_SIGNATURE,
    LABELS_FILE,
    ONNX_CLASS_NAMES,
    KerasPredictor,
)

FILES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "tflite-fp16": "model_fp16.tflite",
         "tflite-int8": "model_int8.tflite", "onnx": "model.onnx"}
# int8 calibration: a few hundred training images pin each activation's range; more only cost time.
REPRESENTATIVE_IMAGES = 300


@dataclass
class Export:
    report: dict[str, Any]  # what export.json holds
    folder: Path
    written: list[Path]
    problem: str | None = None  # a float format disagreed with the .keras model: what, and what to do


def prepare_output(folder: Path, given: bool) -> None:
    """Create `folder` and prove it takes files, before any compute."""
    where = "give another --output" if given else "give --output DIR to export elsewhere"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        reason = "it is a file" if folder.is_file() else "a part of it is a file" if isinstance(
            e, (FileExistsError, NotADirectoryError)) else e.strerror or str(e)
        raise FlowerftError(f"cannot export to {folder}: {reason}; {where}") from None


# --------------------------------------------------------------------------- making the artifacts


def serving_archive(model: keras.Model, class_names: list[str], image_size: int) -> keras.export.ExportArchive:
    """The model with the two serving signatures, the class names inside."""
    archive = keras.export.ExportArchive()
    # No archive.track(model): it would store every weight twice, as Keras Variables and as the
    # tf.Variables the endpoints capture (keras-team/keras #23553: twice the size on disk and in
    # TF Serving's memory). add_endpoint tracks the variables the endpoints use, once.
    # A variable rather than a constant so that a client can read the names too (`loaded.class_names`).
    names = tf.Variable(class_names, trainable=False, dtype=tf.string, name="class_names")

    def images(images):  # the argument's name is the input's name a client sends
        probabilities = model(tf.cast(images, tf.float32), training=False)
        return {
            "probabilities": probabilities,
            "label": tf.gather(names, tf.argmax(probabilities, axis=1)),
            "score": tf.reduce_max(probabilities, axis=1),
        }

    def image_bytes(image_bytes):
        # Training's own decode and resize (flowerft/data/pipelines.py), one image at a time: sizes differ.
        decoded = tf.map_fn(
            lambda contents: image_io.resize_image(image_io.decode_image(contents), image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return images(decoded)

    shape = [None, image_size, image_size, 3]
    archive.add_endpoint(IMAGES_SIGNATURE, images, input_signature=[tf.TensorSpec(shape, tf.uint8, name=IMAGES_INPUT)])
    archive.add_endpoint(BYTES_SIGNATURE, image_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_variable_collection("class_names", [names])
    return archive


def write_savedmodel(archive: keras.export.ExportArchive, dest: Path) -> None:
    """Write beside `dest`, then swap folders: a crash leaves the old SavedModel or the new, never half of one."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old = dest.with_name(f".{dest.name}.old")
    os.chmod(tmp, 0o777 & ~layout.current_umask())  # mkdtemp's folder is private; a run's files are not
    try:
        archive.write_out(str(tmp), verbose=False)
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    finally:
        if old.exists() and not dest.exists():  # stopped between the two renames: put the previous one back
            old.rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def float_savedmodel(model: keras.Model, image_size: int, dest: Path) -> None:
    """The plain float32-pixels model as a SavedModel: what the TFLite converter starts from
    (Keras 3's own LiteRT export goes the same way)."""
    archive = keras.export.ExportArchive()  # no track(model): see serving_archive
    archive.add_endpoint("serve", lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    archive.write_out(str(dest), verbose=False)


def convert_tflite(saved: Path, fmt: str, representative: Callable | None = None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
    if fmt == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # Full integer: conversion fails rather than leave an op in float, and uint8 in and out,
        # so that a device feeds its camera's pixels as they are.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and others, with pages of MLIR
        raise FlowerftError(f"TFLite conversion to {fmt} failed ({first_line(e)}); "
                            "export the other formats with --format") from None


def representative_dataset(splits: splitting.Splits, config: Config, n: int) -> Callable:
    """The first `n` training images (the split is shuffled already), as the converter calibrates on them."""
    load = pipelines.loader(splits, config.image_size)
    images = splits.get("train").take(n).map(lambda x, y: load(x))

    def generate():
        for image in images:
            yield [tf.cast(image[None], tf.float32)]

    return generate


def onnx_bytes(model: keras.Model, class_names: list[str], image_size: int) -> bytes:
    """The model as ONNX through Keras's own exporter (tf2onnx underneath), the class names in its metadata."""
    import json

    import onnx

    with tempfile.TemporaryDirectory(prefix="flowerft-onnx-") as tmp:
        file = Path(tmp) / FILES["onnx"]
        try:
            model.export(str(file), format="onnx", verbose=False, input_signature=[
                tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=IMAGES_INPUT)])
        except Exception as e:  # tf2onnx raises many types, with pages of graph dumps
            raise FlowerftError(f"ONNX conversion failed ({first_line(e)}); "
                                "export the other formats with --format") from None
        proto = onnx.load(str(file))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_CLASS_NAMES, json.dumps(class_names)
    return proto.SerializeToString()


# --------------------------------------------------------------------------- the command


def in_float32(model: keras.Model, config, n_classes: int) -> keras.Model:
    """A mixed-precision run's classifier rebuilt to compute in float32, with the same weights.

    Its variables are float32 already (mixed precision only computes in bfloat16/float16), but
    TFLite cannot convert the bfloat16 ops ("Could not translate MLIR to FlatBuffer"), and
    servers and phones expect float32. The rebuilt model is also the reference the exported
    files are compared with, so the check measures conversion, not precision.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in all_layers(model)):
        return model
    with precision.building_in("float32"):
        copy, _ = build_model(dataclasses.replace(config, weights="none"), n_classes)
    copy.set_weights(model.get_weights())
    return copy


def run(
    run_dir: str | Path | None = None,
    checkpoint: str = "best",
    fmt: str = "all",
    output: str | Path | None = None,
    representative_images: int = REPRESENTATIVE_IMAGES,
) -> Export:
    """Export the run's checkpoint in `fmt` (or all formats), verify each on the test split, write the table."""
    formats = chosen_formats(fmt)
    path = layout.find_run(run_dir)
    config = loader.run_config(path)
    keras_path = loader.checkpoint_path(path, checkpoint)
    folder = Path(output) if output is not None else path / "export"
    prepare_output(folder, given=output is not None)
    held_out = source_record.held_out_split(path)
    needed = (held_out, "train") if "tflite-int8" in formats else (held_out,)
    splits = sources.load_recorded(path, config, needed)
    model = in_float32(loader.load_model(keras_path), config, len(splits.class_names))
    size = config.image_size
    written: list[Path] = []

    if "savedmodel" in formats:
        write_savedmodel(serving_archive(model, splits.class_names, size), folder / FILES["savedmodel"])
        written.append(folder / FILES["savedmodel"])
    tflite_formats = [f for f in formats if f.startswith("tflite")]
    if tflite_formats or "onnx" in formats:
        layout.write_atomic(folder / LABELS_FILE, "".join(f"{name}\n" for name in splits.class_names))
        written.append(folder / LABELS_FILE)
    if "onnx" in formats:
        layout.write_atomic(folder / FILES["onnx"], onnx_bytes(model, splits.class_names, size))
        written.append(folder / FILES["onnx"])
    if tflite_formats:
        with tempfile.TemporaryDirectory(prefix="flowerft-export-") as tmp:
            float_savedmodel(model, size, Path(tmp))
            representative = representative_dataset(splits, config, representative_images)
            for f in tflite_formats:
                layout.write_atomic(folder / FILES[f], convert_tflite(Path(tmp), f, representative))
                written.append(folder / FILES[f])

    artifacts = {f: folder / FILES[f] for f in formats}
    checked = export_checks.read_held_out(splits, held_out, size)
    rows = export_checks.table(KerasPredictor(model, splits.class_names), keras_path, artifacts, checked, config.batch_size)
    problem = export_checks.float_problem(rows, len(checked.labels), folder)
    report = {
        "run_dir": str(path),
        "checkpoint": str(keras_path.relative_to(path)),
        "output": str(folder),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": splits.class_names,
        "image_size": size,
        "test_images": int(len(checked.labels)),
        "representative_images": min(representative_images, splits.sizes.get("train", 0)) if "tflite-int8" in formats else None,
        "machine": machine.describe("ai-edge-litert", "onnxruntime"),
        "max_float_disagreement": MAX_FLOAT_DISAGREEMENT,
        "formats": rows,
        "verified": problem is None,
        "problem": problem,
    }
    layout.write_json(folder / "export.json", report)
    layout.write_atomic(folder / "README.md", model_card.render(report, config, loader.finished_metrics(path)))
    written += [folder / "export.json", folder / "README.md"]
    return Export(report, folder, written, problem)

