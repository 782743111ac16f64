"""TF Serving's REST API, as far as flowerft's models go: request bodies in, response bodies out.

Pure functions over JSON, so a client written for `flowerft serve` moves to TF Serving (serving the
SavedModel that `flowerft export` writes) unchanged, and back:

    POST /v1/models/<name>:predict   {"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": ...}}]}
                                     {"instances": [<uint8 [size, size, 3] array>, ...]}   (serving_default)
                                     {"inputs": ...}: the columnar form, answered as {"outputs": ...}
    GET  /v1/models/<name>           the version status
    GET  /v1/models/<name>/metadata  the signatures

Errors are `{"error": "..."}` with a 4xx status, as TF Serving answers them.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowerft.errors import FlowerftError
from flowerft.serving.predictors import BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE

VERSION = "1"  # one model, one version: what TF Serving reports for a model base path holding 1/
OUTPUTS = ("probabilities", "label", "score")


class RequestError(FlowerftError):
    """A request the server cannot answer: the HTTP status, and the one-line reason for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class PredictRequest:
    signature: str
    items: list[Any]  # bytes (serving_bytes) or uint8 [size, size, 3] arrays (serving_default)
    columnar: bool  # sent as "inputs": answer as "outputs"


def parse_predict(body: bytes, image_size: int, max_images: int) -> PredictRequest:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"JSON Parse error: {str(e)[:200]}") from None
    if not isinstance(request, dict):
        raise RequestError('the body must be a JSON object: {"signature_name": ..., "instances": [...]}')
    signature = request.get("signature_name", IMAGES_SIGNATURE)
    if signature not in (IMAGES_SIGNATURE, BYTES_SIGNATURE):
        raise RequestError(f'Serving signature name: "{signature}" not found in signature def; this model has '
                           f"{IMAGES_SIGNATURE} (pixel arrays) and {BYTES_SIGNATURE} (base64 images)")
    if ("instances" in request) == ("inputs" in request):
        raise RequestError('give either "instances" (a list, one entry per image) or "inputs" (columnar), not both '
                           "nor neither")
    name = BYTES_INPUT if signature == BYTES_SIGNATURE else IMAGES_INPUT
    columnar = "inputs" in request
    if columnar:
        inputs = request["inputs"]
        values = inputs[name] if isinstance(inputs, dict) and name in inputs else inputs
    else:
        values = request["instances"]
    if not isinstance(values, list) or not values:
        raise RequestError(f'"{"inputs" if columnar else "instances"}" must be a non-empty list of images')
    if len(values) > max_images:
        raise RequestError(f"{len(values)} images in one request; at most {max_images} (the server's --max-images)", 413)
    parse = b64_image if signature == BYTES_SIGNATURE else pixel_array
    items = []
    for i, value in enumerate(values):
        if not columnar and isinstance(value, dict) and name in value:
            value = value[name]  # {"image_bytes": {"b64": ...}}, {"images": [...]}; a bare value is fine too
        items.append(parse(value, i, image_size))
    return PredictRequest(signature, items, columnar)


def b64_image(value: Any, i: int, image_size: int) -> bytes:
    if not (isinstance(value, dict) and isinstance(value.get("b64"), str)):
        raise RequestError(f'instance {i}: {BYTES_INPUT} must be {{"b64": "<base64 of an encoded image>"}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"instance {i}: the b64 value is not valid base64") from None


def pixel_array(value: Any, i: int, image_size: int) -> np.ndarray:
    shape = (image_size, image_size, 3)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        array = None
    if array is None or array.shape != shape or array.dtype.kind not in "iuf":
        got = "nested lists of uneven length" if array is None or array.dtype == object else \
            f"{array.dtype.name} {list(array.shape)}"
        raise RequestError(f"instance {i}: {IMAGES_INPUT} must be uint8 pixels [{image_size}, {image_size}, 3], "
                           f"got {got}; or send encoded images with signature_name {BYTES_SIGNATURE}")
    if array.min() < 0 or array.max() > 255 or (array.dtype.kind == "f" and not np.all(array == np.round(array))):
        raise RequestError(f"instance {i}: pixels must be whole numbers from 0 to 255 (uint8)")
    return array.astype(np.uint8)


def outputs(probabilities: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """The SavedModel's three outputs per image, as TF Serving lists them."""
    top = probabilities.argmax(axis=1)
    return [{"probabilities": [float(p) for p in row], "label": class_names[t], "score": float(row[t])}
            for row, t in zip(probabilities, top)]


def predict_response(rows: list[dict[str, Any]], columnar: bool) -> dict[str, Any]:
    if columnar:
        return {"outputs": {name: [row[name] for row in rows] for name in OUTPUTS}}
    return {"predictions": rows}


def status(name: str) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": VERSION, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def metadata(name: str, image_size: int, n_classes: int) -> dict[str, Any]:
    """The signature defs as TF Serving's /metadata gives them for the exported SavedModel."""
    def tensor(dtype: str, dims: list[int], key: str, signature: str) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                 "unknown_rank": False}, "name": f"{signature}_{key}:0"}

    def signature(key: str, input_name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        return {
            "inputs": {input_name: tensor(dtype, dims, input_name, key)},
            "outputs": {"probabilities": tensor("DT_FLOAT", [-1, n_classes], "probabilities", "StatefulPartitionedCall"),
                        "label": tensor("DT_STRING", [-1], "label", "StatefulPartitionedCall"),
                        "score": tensor("DT_FLOAT", [-1], "score", "StatefulPartitionedCall")},
            "method_name": "tensorflow/serving/predict",
        }

    return {
        "model_spec": {"name": name, "signature_name": "", "version": VERSION},
        "metadata": {"signature_def": {"signature_def": {
            IMAGES_SIGNATURE: signature(IMAGES_SIGNATURE, IMAGES_INPUT, "DT_UINT8", [-1, image_size, image_size, 3]),
            BYTES_SIGNATURE: signature(BYTES_SIGNATURE, BYTES_INPUT, "DT_STRING", [-1]),
        }}},
    }
