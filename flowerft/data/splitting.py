"""What every source gives: `Splits` (unbatched train/valid/test datasets with their class names and
sizes), and what the sources share to make one: splitting a class's files with the seed, the checks
(two classes at least, every class in every split, files that decode), the class order."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Hashable

import tensorflow as tf

from flowerft.config import Config
from flowerft.data.dataset_options import without_autotune
from flowerft.data.image_io import decode_image
from flowerft.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")



# How datasets that come split name their splits (folders, CSV split column, Hugging Face).
SPLIT_ALIASES = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test"}



@dataclass
class Splits:
    """The three splits of one data source, unbatched, with their class names."""

    class_names: list[str]
    train: tf.data.Dataset
    valid: tf.data.Dataset
    test: tf.data.Dataset
    # What each element's first item is: "path" (a file to read), "encoded" (an image file's
    # bytes) or "image" (decoded uint8).
    element: str
    sizes: dict[str, int] = field(default_factory=dict)
    # For a file source: the files of each split, saved with the run so that `evaluate`
    # sees exactly this test set even if the folder changes later.
    files: dict[str, list[tuple[str, int]]] | None = None
    # Files of an image folder that did not decode and were left out.
    skipped: list[str] = field(default_factory=list)
    # Splits decoded into memory by `pipeline(cache="memory")`, kept for the next phase.
    decoded: dict[str, tuple[tf.Tensor, tf.Tensor]] = field(default_factory=dict, repr=False)
    # What the run records of its source (source.json), and what training says about it at the start.
    record: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # A split's images per class, in label order, counted the source's own way without decoding an
    # image (TFDS, Hugging Face); called only when a run needs them (class_counts).
    counts: Callable[[str], list[int]] | None = None

    def get(self, name: str) -> tf.data.Dataset:
        return getattr(self, name)



def class_counts(splits: Splits, split: str = "train") -> list[int]:
    """A split's images per class, in label order: from its file list, the source's counts, or its labels."""
    if splits.counts is not None:
        return splits.counts(split)
    if splits.files:
        labels = [y for _, y in splits.files[split]]
    else:
        labels = [int(y) for y in splits.get(split).map(lambda x, y: y).as_numpy_iterator()]
    return label_counts(labels, len(splits.class_names))


def label_counts(labels: list[int], n_classes: int) -> list[int]:
    """How many of `labels` each class 0..n_classes-1 has."""
    return [labels.count(i) for i in range(n_classes)]


def split_sizes(n: int, test_percent: int, valid_percent: int) -> tuple[int, int, int]:
    """How many of a class's `n` images go to test, valid and train."""
    # Boundaries at the nearest image, halves rounding up (Python's round() would go to even).
    n_test = int(n * test_percent / 100 + 0.5)
    n_valid = int(n * (test_percent + valid_percent) / 100 + 0.5) - n_test
    return n_test, n_valid, n - n_test - n_valid



def check_every_split_gets_each_class(
    class_names: list[str], files_per_class: list[list], config: Config, test_percent: int | None = None,
    remedy: str = "add images to it or remove its folder",
) -> None:
    """A class missing from the test split is never evaluated (support 0); refuse it, saying what would do."""
    test_percent = config.test_percent if test_percent is None else test_percent
    percents = (test_percent, config.valid_percent)
    wanted = [n for n, p in zip(("test", "valid"), percents) if p] + ["train"]

    def enough(n):
        return all(k >= 1 for k, p in zip(split_sizes(n, *percents), (*percents, 1)) if p)

    for name, files in zip(class_names, files_per_class):
        if not enough(len(files)):
            need = next(n for n in range(len(files) + 1, len(files) + 10_000) if enough(n))
            shares = "/".join(f"{p}%" for p in percents if p) + "/rest"
            raise DataError(
                f"class {name} has {len(files)} image{'s' if len(files) != 1 else ''}, too few images for one in each "
                f"of the {', '.join(wanted[:-1])} and train splits ({shares}): {need} would do; {remedy}"
            )



def split_files(files_per_class: list[list], test_percent: int, valid_percent: int, seed: int) -> dict[str, list[tuple]]:
    """Split each class the way the TFDS slices split tf_flowers: test, valid, then train.

    Per class (stratified), after a shuffle fixed by `seed`, so every split sees every class
    and the same folder and seed always give the same split.
    """
    rng = random.Random(seed)
    splits: dict[str, list[tuple]] = {name: [] for name in SPLIT_NAMES}
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



def arrange(
    class_names: list[str], given: dict[str, list[list[Hashable]]], config: Config, where: str,
    remedy: str = "add images to it or remove its folder",
) -> tuple[dict[str, list[tuple]], list[str]]:
    """Each split's (item, label) from a source's items per class, and what to say about it.

    `given` maps the splits the source comes with ("train", "valid", "test") to each class's
    items; None for a source that comes unsplit, split here 10/15/75 with the seed. A missing
    validation split is carved from train with the seed; a missing test split stays empty.
    """
    present = [name for i, name in enumerate(class_names) if any(per_class[i] for per_class in given.values())]
    check_two_classes(present, where)
    if "all" in given:
        check_every_split_gets_each_class(class_names, given["all"], config, remedy=remedy)
        return split_files(given["all"], config.test_percent, config.valid_percent, config.seed), []
    for split, per_class in given.items():
        for name, items in zip(class_names, per_class):
            if not items:
                raise DataError(f"class {name} has no images in the {split} split of {where}; "
                                "add some, or remove the class from every split")
    notes = []
    files = {split: [(item, label) for label, items in enumerate(given.get(split, [])) for item in items]
             for split in SPLIT_NAMES}
    if "valid" not in given:
        check_every_split_gets_each_class(class_names, given["train"], config, test_percent=0,
                                          remedy="add images to its train split or give a validation split")
        carved = split_files(given["train"], 0, config.valid_percent, config.seed)
        files["train"], files["valid"] = carved["train"], carved["valid"]
        notes.append(f"{where} has no validation split: {config.valid_percent}% of each class's train images "
                     f"validate (seed {config.seed})")
    if "test" not in given:
        notes.append(f"{where} has no test split: evaluate with --split valid; `report` shows the validation split")
    rng = random.Random(config.seed)
    for split in given:
        if split != "train" or "valid" in given:
            rng.shuffle(files[split])  # the source's order is often by class
    return files, notes



def ordered_classes(found: list[str], config: Config, where: str) -> list[str]:
    """The class names in label order: `found` (sorted by the caller), or as class_order gives them (all, once)."""
    if config.class_order is None:
        return list(found)
    order = [name.strip() for name in config.class_order.split(",")]
    unknown = [name for name in order if name not in found]
    if unknown:
        raise DataError(f"class_order names {unknown[0]}, which is not a class of {where} ({', '.join(sorted(found))})")
    missing = [name for name in sorted(found) if name not in order]
    if missing or len(set(order)) != len(order):
        what = f"lacks {missing[0]}" if missing else "names a class twice"
        raise DataError(f"class_order {what}; list every class of {where} once: {', '.join(sorted(found))}")
    return order



def check_two_classes(class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        raise DataError(f"{where} has only one class ({', '.join(class_names) or 'none'}); a classifier needs at least two")



def file_dataset(items: list[tuple[str, int]]) -> tf.data.Dataset:
    paths = [p for p, _ in items]
    labels = [label for _, label in items]
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string, shape=[len(paths)]), tf.constant(labels, tf.int64, shape=[len(labels)]))
    )



def splits_from_files(class_names: list[str], files: dict[str, list[tuple[str, int]]], record: dict | None = None) -> Splits:
    has_test = (record or {}).get("has_test", True)
    for name in SPLIT_NAMES:
        if not files[name] and (name != "test" or has_test):
            raise DataError(
                f"the {name} split is empty; add images (at least 10 per class) or change test_percent/valid_percent"
            )
    return Splits(
        class_names=class_names,
        element="path",
        files=files,
        sizes={name: len(files[name]) for name in SPLIT_NAMES},
        record=record or {},
        **{name: file_dataset(files[name]) for name in SPLIT_NAMES},
    )



def undecodable(paths: list[str]) -> list[str]:
    """The files TensorFlow cannot decode (empty, truncated, text named .jpg, TIFF, ...).

    One parallel pass with the decoder training uses, so no bad file can stop an epoch later.
    """
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string, shape=[len(paths)]))
    return [paths[i] for i in undecodable_contents(ds.map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE))]



def undecodable_contents(contents: tf.data.Dataset) -> list[int]:
    """The positions of the encoded images in `contents` that do not decode."""
    ds = contents.enumerate().map(lambda i, c: (i, tf.shape(decode_image(c))), num_parallel_calls=tf.data.AUTOTUNE)
    ds = without_autotune(ds)
    readable = {int(i) for i, _ in ds.ignore_errors()}
    n = int(contents.reduce(0, lambda k, _: k + 1)) if contents.cardinality() < 0 else int(contents.cardinality())
    return [i for i in range(n) if i not in readable]



def drop_unreadable(class_names: list[str], given: dict[str, list[list[str]]], where: str) -> tuple[dict, list[str]]:
    """`given` without the files that do not decode, and those files; a class left empty is refused."""
    skipped = undecodable([p for per_class in given.values() for files in per_class for p in files])
    if not skipped:
        return given, []
    bad = set(skipped)
    kept = {split: [[p for p in files if p not in bad] for files in per_class] for split, per_class in given.items()}
    for split, per_class in kept.items():
        for name, files in zip(class_names, per_class):
            if not files:
                in_split = "" if split == "all" else f" in the {split} split"
                raise DataError(f"class {name} has no readable images{in_split} of {where} ({len(bad)} unreadable files, "
                                f"first: {', '.join(skipped[:3])}); replace them or remove the class")
    return kept, skipped
