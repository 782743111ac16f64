"""The model card an export writes beside its artifacts (README.md): what goes in, what comes out,
how it was trained, and how well each format does on the run's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowerft.backbones.registry import get_backbone, is_own
from flowerft.config import AUTO, Config
from flowerft.runs import source_record
from flowerft.serving.predictors import BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE, LABELS_FILE

WHAT = {
    "keras": "the trained Keras model (reference)",
    "savedmodel": f"SavedModel, `{IMAGES_SIGNATURE}` (uint8 images)",
    "savedmodel-bytes": f"SavedModel, `{BYTES_SIGNATURE}` (encoded images)",
    "tflite": "TFLite float32",
    "tflite-fp16": "TFLite float16 weights",
    "tflite-int8": "TFLite full-integer int8",
    "onnx": "ONNX (onnxruntime)",
}
SCALING = {
    "tf": "to [-1, 1] (x / 127.5 - 1)",
    "caffe": "to BGR minus the ImageNet channel means",
    "torch": "to (x / 255 - ImageNet mean) / ImageNet std, per channel",
    "none": "by the backbone's own layers",
}



def epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"

def size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def table(report: dict[str, Any]) -> str:
    lines = ["| format | file | size | test accuracy | change | top-1 agreement with .keras | latency (batch 1) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    output = Path(report["output"])
    for row in report["formats"]:
        path = Path(row["path"])
        shown = path.name if row["format"] == "keras" else path.relative_to(output) if path.is_relative_to(output) else path
        lines.append(
            f"| {WHAT.get(row['format'], row['format'])} | `{shown}` | {size_text(row['size_bytes'])} | "
            f"{row['accuracy']:.1%} | {row['accuracy_change']:+.1%} | {row['agreement']:.1%} | {row['latency_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def int8_input(report: dict[str, Any], size: int) -> str:
    row = next((r for r in report["formats"] if r["format"] == "tflite-int8"), None)
    if row is None:
        return "- `model_int8.tflite`: not exported this time."
    scale, zero = row["input"]["scale"], row["input"]["zero_point"]
    how = ("the pixels as they are" if (scale, zero) == (1.0, 0) else
           f"pixel / {scale:g} + {zero}, rounded: its calibration images did not span 0-255")
    return f"- `model_int8.tflite`: uint8 [1, {size}, {size}, 3], quantization scale {scale:g}, zero point {zero}: {how}."


def _split_sizes(metrics: dict[str, Any], config: Config) -> str:
    """What each split held (a pre-split source's own splits are not percentages of one pool)."""
    sizes = metrics.get("split_sizes") or {}
    if not sizes:
        return f"{config.test_percent}% test / {config.valid_percent}% validation / the rest training, split with seed {config.seed}"
    shown = [f"{sizes[k]} {name}" for k, name in (("train", "training"), ("valid", "validation"), ("test", "test")) if sizes.get(k)]
    return ", ".join(shown) + f" images (seed {config.seed})"


def _finetune_rate(config: Config, metrics: dict[str, Any]) -> str:
    """The fine-tuning rate the run trained at: its config's, or the one --lr-finetune auto found."""
    rate = metrics.get("lr_finetune", config.lr_finetune)
    found = " (found by the learning-rate sweep of --lr-finetune auto)" if config.lr_finetune == AUTO else ""
    return (f"{rate:.2g}" if isinstance(rate, float) else str(rate)) + found


def render(report: dict[str, Any], config: Config, metrics: dict[str, Any]) -> str:
    size = report["image_size"]
    names = report["class_names"]
    m = report["machine"]
    if is_own(config.backbone):  # a model the user brought: its own scaling, or the one they named
        scaled = f"{Path(config.backbone).name}: {SCALING[config.pixel_scaling or 'none']}"
    else:
        backbone = get_backbone(config.backbone)
        scaled = f"{backbone.name}: {SCALING[backbone.scaling]}"
    data = f"`{source_record.describe(config, source_record.read(Path(report['run_dir'])))}`"
    best = metrics.get("best_val_accuracy")
    classes = "\n".join(f"{i}. {name}" for i, name in enumerate(names))
    return f"""# Model card: {Path(report['run_dir']).name}

Exported by `flowerft export` on {report['exported_at']} from `{report['run_dir']}`
(checkpoint `{report['checkpoint']}`).

## Classes

{len(names)} classes, in the order of the model's outputs (index. name); `{LABELS_FILE}` lists them one a line:

{classes}

## Input

RGB images of {size} x {size} pixels, values 0-255, no normalisation: the model scales pixels itself
({scaled}).

- SavedModel `{IMAGES_SIGNATURE}`: input `{IMAGES_INPUT}`, uint8 [batch, {size}, {size}, 3].
- SavedModel `{BYTES_SIGNATURE}`: input `{BYTES_INPUT}`, string [batch]: encoded JPEG, PNG, GIF, BMP or
  WebP images of any size (TF Serving's REST API takes them as `{{"b64": ...}}`), decoded and resized inside
  the model as below.
- `model.tflite`, `model_fp16.tflite`: float32 [1, {size}, {size}, 3], the same 0-255 values.
- `model.onnx`: input `images`, float32 [batch, {size}, {size}, 3], the same 0-255 values.
{int8_input(report, size)}

## Preprocessing (the same as in training)

Decode with `tf.io.decode_image` to 3 channels (grayscale, palette and RGBA become RGB; a GIF gives
its first frame), resize the whole image to {size} x {size} with `tf.image.resize` (bilinear, no
antialiasing, no crop: the aspect ratio is not kept), round to uint8. `{BYTES_SIGNATURE}` does exactly
this; for the other inputs do it before calling the model.

## Outputs

- SavedModel: `probabilities` (float32 [batch, {len(names)}], in class order), `label` (string, the
  top class) and `score` (its probability).
- TFLite: the probabilities only (float32; uint8 in steps of 1/256 for int8), in the order of `{LABELS_FILE}`.
- ONNX: the probabilities only (float32 [batch, {len(names)}]); the class names are also in the file's
  metadata (`class_names`, a JSON list).

## Data and training

- Data: {data}; {_split_sizes(metrics, config)}. The int8 file was calibrated on {report['representative_images'] or 'no'} training images.
- Model: {config.backbone} (weights: `{config.weights}`), global average pooling, a softmax layer; {size} px.
- Recipe `{config.recipe}`: head {epochs(config.epochs_head)} at lr {config.lr_head:g}, then fine-tuning
  {epochs(config.epochs_finetune)} at lr {_finetune_rate(config, metrics)} (SGD, momentum {config.momentum:g}, schedule
  {config.schedule}, clipnorm {config.clipnorm or 'off'}), batch {config.batch_size}, BatchNorm {'learning from scratch' if config.weights == 'none' else 'kept in inference mode'}.
- Checkpoint: {metrics.get('best_phase') or '-'} phase (picked by validation {metrics.get('monitor', 'accuracy').replace('_', ' ')}), validation accuracy {f'{best:.1%}' if best is not None else '-'}.

## Test accuracy per format

On the run's {report['test_images']} test images; latency is the mean time of one image alone on the
exporting machine ({m['cpu']}, {m['cpu_cores']} cores, {m['gpus']} GPUs; TensorFlow {m['tensorflow']},
LiteRT {m['ai-edge-litert']}).

{table(report)}
"""
