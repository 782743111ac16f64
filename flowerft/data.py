"""Where the images come from and the tf.data pipeline that feeds them to the model.

Two sources give the same thing, a `Splits` of (image, label) datasets: TFDS
`tf_flowers` (the book's source) and an image folder with one subfolder per class
(the offline route). The pipeline functions are small and pure so that tests can run
them eagerly and inside `Dataset.map`.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tensorflow as tf

from flowerft.config import Config
from flowerft.errors import DataError, OfflineError

# Formats tf.io.decode_image reads (whatever the extension says); a GIF gives its first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SPLIT_NAMES = ("train", "valid", "test")
# tf_flowers' archive lives here; a quick connect tells us whether TFDS can download it.
TFDS_DOWNLOAD_HOST = ("download.tensorflow.org", 443)
NETWORK_PROBE_SECONDS = 10.0


@dataclass
class Splits:
    """The three splits of one data source, unbatched, with their class names."""

    class_names: list[str]
    train: tf.data.Dataset
    valid: tf.data.Dataset
    test: tf.data.Dataset
    # What each element's first item is: "path" (a file to read) or "image" (decoded uint8).
    element: str
    sizes: dict[str, int] = field(default_factory=dict)
    # For a folder source: the files of each split, saved with the run so that `evaluate`
    # sees exactly this test set even if the folder changes later.
    files: dict[str, list[tuple[str, int]]] | None = None

    def get(self, name: str) -> tf.data.Dataset:
        return getattr(self, name)


# --------------------------------------------------------------------------- pure functions


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 RGB [height, width, 3].

    Grayscale, palette and RGBA images become RGB; an animated GIF gives its first frame.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Any uint8 RGB image -> uint8 [image_size, image_size, 3], as the book does (no crop).

    Rounding back to uint8 keeps what training sees identical to what `predict` sees and
    lets a pipeline cache images at a quarter of float32's size.
    """
    resized = tf.image.resize(image, [image_size, image_size])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def load_image_file(path: tf.Tensor, image_size: int) -> tf.Tensor:
    return resize_image(decode_image(tf.io.read_file(path)), image_size)


def read_image(path: str | Path, image_size: int) -> tf.Tensor:
    """One file -> uint8 [image_size, image_size, 3], eagerly, exactly as the pipeline does it.

    Raises DataError naming the file when it is missing, empty or not a readable image.
    """
    path = Path(path)
    try:
        contents = tf.io.read_file(str(path))
        return resize_image(decode_image(contents), image_size)
    except tf.errors.NotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(f"{path}: {_decode_problem(e.message)}") from None


def _decode_problem(message: str) -> str:
    if "Input is empty" in message:
        return "the file is empty (0 bytes)"
    if "Unknown image file format" in message:
        return "not an image (JPEG, PNG, GIF, BMP or WebP expected)"
    if "Invalid JPEG data" in message or "Premature end" in message or "truncated" in message.lower():
        return "the image is corrupt or truncated"
    return "cannot be decoded: " + message.split("}}")[-1].strip().splitlines()[0]


def to_model_input(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # The model takes raw RGB pixels in [0, 255] and scales them itself.
    return tf.cast(images, tf.float32), labels


def make_pipeline(
    ds: tf.data.Dataset,
    load: Callable[[tf.Tensor], tf.Tensor],
    *,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int | None = None,
) -> tf.data.Dataset:
    """(source item, label) -> batches of (float32 images, labels), prefetched.

    `load` turns a source item into a resized uint8 image. Shuffling happens before
    loading, so a folder source shuffles file names rather than decoded images.
    """
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (load(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def loader(splits: Splits, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    if splits.element == "path":
        return lambda path: load_image_file(path, image_size)
    return lambda image: resize_image(image, image_size)


def pipeline(splits: Splits, split: str, config: Config, *, training: bool = False) -> tf.data.Dataset:
    return make_pipeline(
        splits.get(split),
        loader(splits, config.image_size),
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer if training else 0,
        seed=config.seed,
    )


# --------------------------------------------------------------------------- image folders


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_image_folder(data_dir: str | Path) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted subfolder names) and each class's image files (sorted)."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data dir {root} does not exist; give a folder with one subfolder of images per class")
    if not root.is_dir():
        raise DataError(f"data dir {root} is not a folder; give a folder with one subfolder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data dir {root} has no class subfolders; put each class's images in a subfolder named after it")
    files = []
    for class_dir in class_dirs:
        images = sorted(str(p) for p in class_dir.rglob("*") if is_image_file(p))
        if not images:
            raise DataError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
            )
        files.append(images)
    if len(class_dirs) < 2:
        raise DataError(f"data dir {root} has only one class ({class_dirs[0].name}); a classifier needs at least two")
    return [p.name for p in class_dirs], files


def split_files(
    files_per_class: list[list[str]], test_percent: int, valid_percent: int, seed: int
) -> dict[str, list[tuple[str, int]]]:
    """Split each class the way the TFDS slices split tf_flowers: test, valid, then train.

    Per class (stratified), after a shuffle fixed by `seed`, so every split sees every class
    and the same folder and seed always give the same split.
    """
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, int]]] = {name: [] for name in SPLIT_NAMES}
    for label, files in enumerate(files_per_class):
        files = list(files)
        rng.shuffle(files)
        # Boundaries at the nearest image, halves rounding up (Python's round() would go to even).
        n_test = int(len(files) * test_percent / 100 + 0.5)
        n_valid = int(len(files) * (test_percent + valid_percent) / 100 + 0.5) - n_test
        splits["test"] += [(f, label) for f in files[:n_test]]
        splits["valid"] += [(f, label) for f in files[n_test : n_test + n_valid]]
        splits["train"] += [(f, label) for f in files[n_test + n_valid :]]
    # Interleave classes so that an unshuffled split (valid, test) is not sorted by class.
    for name in SPLIT_NAMES:
        rng.shuffle(splits[name])
    return splits


def file_dataset(items: list[tuple[str, int]]) -> tf.data.Dataset:
    paths = [p for p, _ in items]
    labels = [label for _, label in items]
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int64))
    )


def splits_from_files(class_names: list[str], files: dict[str, list[tuple[str, int]]]) -> Splits:
    for name in SPLIT_NAMES:
        if not files[name]:
            raise DataError(
                f"the {name} split is empty; add images (at least 10 per class) or change test_percent/valid_percent"
            )
    return Splits(
        class_names=class_names,
        element="path",
        files=files,
        sizes={name: len(files[name]) for name in SPLIT_NAMES},
        **{name: file_dataset(files[name]) for name in SPLIT_NAMES},
    )


def load_folder(config: Config) -> Splits:
    class_names, files_per_class = list_image_folder(config.data_dir)
    files = split_files(files_per_class, config.test_percent, config.valid_percent, config.seed)
    return splits_from_files(class_names, files)


# --------------------------------------------------------------------------- TFDS


def tfds_split_names(test_percent: int, valid_percent: int) -> dict[str, str]:
    """The book's slices of tf_flowers' single split: test [:10%], valid [10%:25%], train [25%:]."""
    end = test_percent + valid_percent
    return {
        "test": f"train[:{test_percent}%]",
        "valid": f"train[{test_percent}%:{end}%]",
        "train": f"train[{end}%:]",
    }


def check_online(host: tuple[str, int], what: str, remedy: str) -> None:
    """Fail in seconds, not after minutes of retries, when `host` cannot be reached."""
    try:
        socket.create_connection(host, timeout=NETWORK_PROBE_SECONDS).close()
    except OSError as e:
        raise OfflineError(f"cannot download {what}: {host[0]} is unreachable ({e.strerror or e}); {remedy}") from None


def load_tfds(config: Config) -> Splits:
    import tensorflow_datasets as tfds  # slow to import; only this source needs it

    builder = tfds.builder(config.tfds_name, data_dir=config.tfds_data_dir)
    if not builder.is_prepared():
        check_online(
            TFDS_DOWNLOAD_HOST,
            config.tfds_name,
            "work offline with --data-dir FOLDER (one subfolder of images per class), "
            "or --tfds-data-dir pointing at a TFDS folder that already holds it",
        )
        builder.download_and_prepare()
    names = tfds_split_names(config.test_percent, config.valid_percent)
    datasets = {
        split: builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
        for split, tfds_split in names.items()
    }
    sizes = {split: int(ds.cardinality()) for split, ds in datasets.items()}
    return Splits(
        class_names=list(builder.info.features["label"].names),
        element="image",
        sizes=sizes,
        **datasets,
    )


def load(config: Config) -> Splits:
    return load_folder(config) if config.data_dir else load_tfds(config)
