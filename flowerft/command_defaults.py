"""The defaults and limits of the commands beside `train`: not part of a run, but a user meets them
(as an option's default, in --help, in a table's caption or an error). A run's own are in config.py."""

from __future__ import annotations

from flowerft.errors import ConfigError

# --- `flowerft export` (an export reads the run and writes beside it) ---
EXPORT_FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
# A float format (SavedModel, float32, float16 TFLite) may round a near-tie the other way, no more:
# top-1 answers differing from the .keras model's on over 0.5% of test images mean a broken export.
MAX_FLOAT_DISAGREEMENT = 0.005
# Batch-1 latency is the mean over this many test images (after warm-up calls), not the whole split.
LATENCY_IMAGES = 100

# --- tracking (flowerft/training/tracking.py) ---
# The experiment runs are logged to, unless MLFLOW_EXPERIMENT_NAME names another (MLflow's own variable).
MLFLOW_EXPERIMENT = "flowerft"
# The default store, in runs_root: a real SQLite database that `mlflow ui --backend-store-uri` opens.
MLFLOW_DATABASE = "mlflow.db"


def chosen_formats(fmt: str) -> tuple[str, ...]:
    """The export formats `--format` names (all of them for "all")."""
    if fmt == "all":
        return EXPORT_FORMATS
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)} or all, got {fmt!r}")
    return (fmt,)


# --- `flowerft serve` ---
# TF Serving's REST port and the model name of the README's TF Serving example, so that a client
# moves between the two unchanged.
SERVE_HOST, SERVE_PORT, SERVE_MODEL_NAME = "127.0.0.1", 8501, "flowerft"
# A request's body: a dozen phone photos (3-5 MB each as JPEG, a third more as base64) fit.
SERVE_MAX_MB = 64
SERVE_MAX_IMAGES = 32
# Decoded, 50 megapixels take 150 MB: a larger image (or a "decompression bomb", a small file that
# decodes to gigabytes) is refused before it is decoded.
SERVE_MAX_PIXELS = 50_000_000
# How many classes POST /predict lists per image when its request gives no ?k=.
SERVE_TOP_K = 3
