"""Where the images come from: TFDS `tf_flowers` (the book's source) or an image folder.

Both give the same thing, a `Splits` of unbatched (item, label) datasets, which
flowerft/data.py turns into batches.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf

from flowerft.config import Config
from flowerft import rundir
from flowerft.data import IMAGE_EXTENSIONS, decode_image, is_image_file
from flowerft.errors import DataError, OfflineError

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
    # Files of an image folder that did not decode and were left out.
    skipped: list[str] = field(default_factory=list)
    # Splits decoded into memory by `pipeline(cache="memory")`, kept for the next phase.
    decoded: dict[str, tuple[tf.Tensor, tf.Tensor]] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> tf.data.Dataset:
        return getattr(self, name)


# --------------------------------------------------------------------------- image folders


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


def split_sizes(n: int, test_percent: int, valid_percent: int) -> tuple[int, int, int]:
    """How many of a class's `n` images go to test, valid and train."""
    # Boundaries at the nearest image, halves rounding up (Python's round() would go to even).
    n_test = int(n * test_percent / 100 + 0.5)
    n_valid = int(n * (test_percent + valid_percent) / 100 + 0.5) - n_test
    return n_test, n_valid, n - n_test - n_valid


def check_every_split_gets_each_class(class_names: list[str], files_per_class: list[list[str]], config: Config) -> None:
    """A class missing from the test split is never evaluated (support 0); refuse it, saying what would do."""
    for name, files in zip(class_names, files_per_class):
        if min(split_sizes(len(files), config.test_percent, config.valid_percent)) < 1:
            enough = next(n for n in range(len(files) + 1, len(files) + 10_000)
                          if min(split_sizes(n, config.test_percent, config.valid_percent)) >= 1)
            raise DataError(
                f"class {name} has {len(files)} image{'s' if len(files) != 1 else ''}, too few images for one in each "
                f"of the test, valid and train splits ({config.test_percent}%/{config.valid_percent}%/rest): "
                f"{enough} would do; add images to it or remove its folder"
            )


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
        n_test, n_valid, _ = split_sizes(len(files), test_percent, valid_percent)
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


def undecodable(paths: list[str]) -> list[str]:
    """The files TensorFlow cannot decode (empty, truncated, text named .jpg, TIFF, ...).

    One parallel pass with the decoder training uses, so no bad file can stop an epoch later.
    """
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).enumerate()
    ds = ds.map(lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p)))), num_parallel_calls=tf.data.AUTOTUNE)
    readable = {int(i) for i, _ in ds.ignore_errors()}
    return [p for i, p in enumerate(paths) if i not in readable]


def load_folder(config: Config) -> Splits:
    class_names, files_per_class = list_image_folder(config.data_dir)
    skipped = undecodable([p for files in files_per_class for p in files])
    if skipped:
        bad = set(skipped)
        files_per_class = [[p for p in files if p not in bad] for files in files_per_class]
        for name, files in zip(class_names, files_per_class):
            if not files:
                raise DataError(f"class folder {name} has no readable images (all {len(bad)} unreadable files listed "
                                f"first: {', '.join(skipped[:3])}); replace them or remove the folder")
    check_every_split_gets_each_class(class_names, files_per_class, config)
    files = split_files(files_per_class, config.test_percent, config.valid_percent, config.seed)
    splits = splits_from_files(class_names, files)
    splits.skipped = skipped
    return splits


def load_recorded(run_dir: Path, config: Config, needed: tuple[str, ...] = SPLIT_NAMES) -> Splits:
    """A run's own splits: its recorded file lists (image folders), else the TFDS slices.

    The files of the `needed` splits must still be there and decode, checked now: a file
    that went missing since training must not stop an epoch or an evaluation halfway.
    """
    files_path = run_dir / "splits.json"
    if not files_path.is_file():
        return load_tfds(config)
    class_names = rundir.read_json(run_dir / "class_names.json")
    files = {k: [(p, int(y)) for p, y in v] for k, v in rundir.read_json(files_path).items()}
    paths = [p for name in needed for p, _ in files[name]]
    missing = [p for p in paths if not Path(p).is_file()]
    broken = missing or undecodable(paths)
    if broken:
        what = "missing" if missing else "no longer readable images"
        raise DataError(
            f"{len(broken)} of the {len(paths)} {'/'.join(needed)} files recorded in {files_path} are {what} "
            f"(first: {broken[0]}); put them back, or train a new run on the folder as it is now"
        )
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
