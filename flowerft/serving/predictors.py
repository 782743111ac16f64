"""Models as predictors, behind one interface: a SavedModel folder, a `.tflite` file, a `.onnx` file
or a `.keras` file (a run's checkpoint, or a classifier saved by Keras).

Each exported file is opened with its runtime's own loader (`tf.saved_model.load`, LiteRT's
`Interpreter`, onnxruntime's `InferenceSession`), never through Keras or the `.keras` file, so
what works here works for a serving client too. Every predictor has `class_names`, `image_size`
and `kind`, and is called with uint8 RGB images [n, size, size, 3] to give class probabilities
[n, classes]. The class names live inside the SavedModel and the ONNX file, in labels.txt beside
a `.tflite` file, and in the run's class_names.json (or labels.txt) beside a `.keras` file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from flowerft.errors import FlowerftError, first_line
from flowerft.runs import layout

LABELS_FILE = "labels.txt"
# The signatures `flowerft export` writes, and their input names (the keys a serving client sends).
IMAGES_SIGNATURE, IMAGES_INPUT = "serving_default", "images"
BYTES_SIGNATURE, BYTES_INPUT = "serving_bytes", "image_bytes"


class SavedModelPredictor:
    """A SavedModel written by `flowerft export`, called through its serving signatures."""

    kind = "savedmodel"

    def __init__(self, path: Path):
        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as e:  # TensorFlow raises several types for a folder that is not a SavedModel
            raise FlowerftError(f"{path} is not a loadable SavedModel ({first_line(e)}); export it again") from None
        names = getattr(self.loaded, "class_names", None)
        if IMAGES_SIGNATURE not in self.loaded.signatures or not names:
            raise FlowerftError(f"{path} is a SavedModel but not one `flowerft export` wrote (no class names or "
                                f"{IMAGES_SIGNATURE} signature); give the export/savedmodel folder of a run")
        self.class_names = [n.decode() for n in names[0].numpy()]
        self.images = self.loaded.signatures[IMAGES_SIGNATURE]
        self.bytes = self.loaded.signatures.get(BYTES_SIGNATURE)
        self.image_size = int(self.images.structured_input_signature[1][IMAGES_INPUT].shape[1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] -> probabilities [n, classes]."""
        return self.images(**{IMAGES_INPUT: tf.constant(images, tf.uint8)})["probabilities"].numpy()

    def from_bytes(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        """Encoded images of any size -> probabilities, label and score, as a serving client gets them."""
        outputs = self.bytes(**{BYTES_INPUT: tf.constant(encoded, tf.string)})
        return {name: value.numpy() for name, value in outputs.items()}


class TFLitePredictor:
    """A `.tflite` file run by LiteRT (the successor of tf.lite.Interpreter), one image at a time."""

    kind = "tflite"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            # As many threads as cores, as TensorFlow uses for the other formats.
            self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise FlowerftError(f"{path} is not a loadable TFLite model ({first_line(e)}); export it again") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.class_names = class_names if class_names is not None else read_labels(path)
        if int(self.output["shape"][-1]) != len(self.class_names):
            raise FlowerftError(f"{path} has {self.output['shape'][-1]} outputs but {path.parent / LABELS_FILE} names "
                                f"{len(self.class_names)} classes; put the labels.txt exported with it beside it")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] -> probabilities [n, classes]; the file's input holds one image, as on a phone."""
        rows = []
        for image in images:
            self.interpreter.set_tensor(self.input["index"], quantize(image[None], self.input))
            self.interpreter.invoke()
            rows.append(dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[0])
        return np.stack(rows)

    def tensor_types(self) -> set[str]:
        """The dtypes of every tensor in the file (weights included)."""
        return {np.dtype(d["dtype"]).name for d in self.interpreter.get_tensor_details()}


def quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    """Pixels in [0, 255] as the input tensor holds them: float32, or integers with its scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return images.astype(dtype)
    scale, zero_point = detail["quantization"]
    values = images.astype("float32") / scale + zero_point if scale else images.astype("float32")
    limits = np.iinfo(dtype)
    return np.clip(np.round(values), limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return values.astype("float32")
    return (values.astype("float32") - zero_point) * scale


def read_labels(model_path: Path) -> list[str]:
    path = model_path.parent / LABELS_FILE
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FlowerftError(f"{model_path} has no {LABELS_FILE} beside it; copy the {LABELS_FILE} that "
                            "`flowerft export` wrote with it into the same folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FlowerftError(f"{path} cannot be read ({first_line(e)}); export the model again") from None
    return names


class ONNXPredictor:
    """A `.onnx` file run by onnxruntime on the CPU; float32 pixels in, probabilities out."""

    kind = "onnx"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
            raise FlowerftError(f"{path} is not a loadable ONNX model ({first_line(e)}); export it again") from None
        self.input = self.session.get_inputs()[0]
        size = self.input.shape[1]
        if len(self.input.shape) != 4 or not isinstance(size, int) or self.input.shape[3] != 3:
            raise FlowerftError(f"{path} takes {self.input.shape}, not [n, size, size, 3] images; "
                                "give a .onnx file that `flowerft export --format onnx` wrote")
        self.image_size = size
        stored = self.session.get_modelmeta().custom_metadata_map.get(ONNX_CLASS_NAMES)
        self.class_names = class_names if class_names is not None else json.loads(stored) if stored else read_labels(path)
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.class_names):
            raise FlowerftError(f"{path} has {outputs} outputs but {len(self.class_names)} class names; "
                                "export the model again")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: images.astype(np.float32)})[0]


class KerasPredictor:
    """A Keras classifier (raw RGB pixels in, probabilities out) with its class names."""

    kind = "keras"

    def __init__(self, model, class_names: list[str]):
        self.model = model
        self.class_names = class_names
        self.image_size = int(model.input_shape[1])
        if int(model.output_shape[-1]) != len(class_names):
            raise FlowerftError(f"the model has {model.output_shape[-1]} outputs but {len(class_names)} class names; "
                                f"give the {LABELS_FILE} or run folder that goes with it")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images.astype(np.float32)))

    @classmethod
    def from_file(cls, path: Path) -> "KerasPredictor":
        from flowerft.runs import loader  # Keras's loader with safe_mode and a one-line error

        return cls(loader.load_model(path), keras_class_names(path))


# The key of the class names (a JSON list) in a .onnx file's metadata_props.
ONNX_CLASS_NAMES = "class_names"


def keras_class_names(path: Path) -> list[str]:
    """labels.txt beside the file, else the class_names.json of the run it is a checkpoint of."""
    if (path.parent / LABELS_FILE).is_file():
        return read_labels(path)
    for folder in (path.parent, path.parent.parent):
        if (folder / layout.CLASS_NAMES).is_file():
            return json.loads((folder / layout.CLASS_NAMES).read_text(encoding="utf-8"))
    raise FlowerftError(f"{path} has no {LABELS_FILE} beside it and is not in a run folder with class_names.json; "
                        f"write the class names, one a line in label order, to {path.parent / LABELS_FILE}")


Predictor = SavedModelPredictor | TFLitePredictor | ONNXPredictor | KerasPredictor


def load(path: str | Path) -> Predictor:
    """The predictor for `path`: a SavedModel folder (holding saved_model.pb), a .tflite, .onnx or .keras file."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModelPredictor(path)
    files = {".tflite": TFLitePredictor, ".onnx": ONNXPredictor, ".keras": KerasPredictor.from_file}
    if path.is_file() and path.suffix in files:
        return files[path.suffix](path)
    what = ("does not exist" if not path.exists() else "is a folder without saved_model.pb" if path.is_dir()
            else "is not a .tflite, .onnx or .keras file nor a SavedModel folder")
    raise FlowerftError(f"model {path} {what}; give the savedmodel folder or a .tflite, .onnx or .keras file "
                        "that `flowerft export` or `train` wrote")
