"""Hugging Face datasets (the optional extra `flowerft[hf]`): a hub name, a `save_to_disk`
folder, or parquet files; an image column and a label column, found from the features or named.

The dataset's own splits are used (train, and validation/valid/val and test where it has them,
see splitting.arrange); a dataset with only train is split 10/15/75 like a folder. Each row's
encoded image bytes go into the same tf.data pipeline as image files (decode, resize, cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from flowerft.config import Config
from flowerft.data import network, splitting
from flowerft.data.splitting import SPLIT_ALIASES, SPLIT_NAMES, Splits, arrange, label_counts, ordered_classes
from flowerft.errors import DataError, OfflineError

HUB_HOST = ("huggingface.co", 443)
USUAL_IMAGE, USUAL_LABEL = ("image", "img"), ("label", "labels")


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("--hf-dataset needs the Hugging Face datasets package: pip install 'flowerft[hf]'") from None
    datasets.disable_progress_bars()  # the CLI draws its own; these would tear its live display
    datasets.logging.set_verbosity_error()
    return datasets


def open_dataset(name: str):
    """A DatasetDict from a local save_to_disk folder, parquet file(s) or dataset folder, or the hub."""
    datasets = import_datasets()
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            found = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix == ".parquet":
            found = datasets.load_dataset("parquet", data_files={"train": str(path)})
        elif path.exists():
            found = datasets.load_dataset(str(path))  # parquet files, a dataset repo's copy, ...
        else:
            if not (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")):
                network.check_online(HUB_HOST, f"the Hugging Face dataset {name}",
                                     "give --hf-dataset a local copy (a save_to_disk folder or parquet files), "
                                     "or set HF_HUB_OFFLINE=1 to use the Hugging Face cache")
            found = datasets.load_dataset(name)
    except (DataError, OfflineError):
        raise
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ValueError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"cannot open the Hugging Face dataset {name}: {first}") from None
    return found if isinstance(found, datasets.DatasetDict) else datasets.DatasetDict(train=found)


def columns(features, config: Config, name: str) -> tuple[str, str]:
    """The image column (an Image feature) and the label column (a ClassLabel, else label/labels)."""
    datasets = import_datasets()
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    listed = ", ".join(features)
    image = config.image_column or next((c for c in USUAL_IMAGE if c in images), images[0] if len(images) == 1 else None)
    if image is None or image not in images:
        what = f"no image column {config.image_column}" if config.image_column else \
            ("several image columns" if images else "no image column")
        raise DataError(f"the Hugging Face dataset {name} has {what} (its columns: {listed}); "
                        f"name {'one of ' + ', '.join(images) if images else 'an image column'} with --image-column")
    label = config.label_column or (labels[0] if len(labels) == 1 else next((c for c in USUAL_LABEL if c in features), None))
    if label is None or label not in features or label == image:
        what = f"no label column {config.label_column}" if config.label_column else "no label column it can tell"
        raise DataError(f"the Hugging Face dataset {name} has {what} (its columns: {listed}); name it with --label-column")
    return image, label


def load(config: Config, recorded: dict | None = None) -> Splits:
    recorded = recorded or {}
    name = config.hf_dataset
    found = open_dataset(name)
    first = next(iter(found.values()))
    image, label = columns(first.features, config, name)
    ours = {SPLIT_ALIASES[s.lower()]: s for s in found if s.lower() in SPLIT_ALIASES}
    if "train" not in ours:
        raise DataError(f"the Hugging Face dataset {name} has no train split (its splits: {', '.join(found)}); "
                        "save the split to train on as train")
    feature = first.features[label]
    if hasattr(feature, "names"):  # a ClassLabel: its own order
        if config.class_order is not None:
            raise DataError(f"class_order does not apply to {name}: its label column {label} is a ClassLabel with its own order")
        class_names = list(feature.names)
        index = {i: i for i in range(len(class_names))}
    else:
        values = {str(v) for s in ours.values() for v in found[s][label]}
        numeric = all(v.lstrip("-").isdigit() for v in values)  # 2 before 10
        found_names = sorted(values, key=lambda v: (int(v) if numeric else 0, v))
        class_names = ordered_classes(found_names, config, f"the Hugging Face dataset {name}")
        index = {n: i for i, n in enumerate(class_names)}
    given = {}
    for split, theirs in ours.items():
        per_class = [[] for _ in class_names]
        for row, value in enumerate(found[theirs][label]):
            key = value if hasattr(feature, "names") else str(value)
            if key not in index:
                raise DataError(f"row {row} of {name}'s {theirs} split has label {value!r}, not one of its "
                                f"{len(class_names)} classes (unlabelled?); leave that split out of the dataset")
            per_class[index[key]].append((theirs, row))
        given[split] = per_class
    if list(given) == ["train"]:
        given = {"all": given["train"]}
    files = recorded.get("rows") and {s: [((r[0], r[1]), r[2]) for r in rows] for s, rows in recorded["rows"].items()}
    notes, skipped = [], []
    if not files:
        given, skipped = _drop_unreadable(found, image, given)
        files, notes = arrange(class_names, given, config, f"the label column {label} of the Hugging Face dataset {name}",
                               remedy="add rows for it or leave its rows out of the dataset")
    record = {"kind": "hf", "name": name, "image_column": image, "label_column": label, "has_test": bool(files["test"]),
              "given_splits": [ours[s] for s in ("train", "valid", "test") if s in ours],
              "rows": {s: [[split, row, y] for (split, row), y in files[s]] for s in SPLIT_NAMES}}
    return Splits(class_names=class_names, element="encoded", sizes={s: len(files[s]) for s in SPLIT_NAMES},
                  record=record, notes=notes, skipped=skipped,
                  counts=lambda split: label_counts([y for _, y in files[split]], len(class_names)),
                  **{s: _encoded_dataset(found, image, files[s]) for s in SPLIT_NAMES})


def _bytes_reader(found, image: str):
    """row reference -> the image's encoded bytes (embedded, or the file the row names)."""
    datasets = import_datasets()
    raw = {s: found[s].cast_column(image, datasets.Image(decode=False)) for s in found}

    def read(split: str, row: int) -> bytes:
        value = raw[split][int(row)][image]
        if value.get("bytes") is not None:
            return value["bytes"]
        return Path(value["path"]).read_bytes()

    return read


def _encoded_dataset(found, image: str, items: list[tuple[tuple[str, int], int]]) -> tf.data.Dataset:
    """(encoded bytes, label) per item, read from the Arrow table as the pipeline asks for them."""
    read = _bytes_reader(found, image)
    refs = [ref for ref, _ in items]

    def fetch(i):
        split, row = refs[int(i)]
        return read(split, row)

    labels = tf.constant([y for _, y in items], tf.int64, shape=[len(items)])
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(items), dtype=tf.int64), labels))
    return ds.map(lambda i, y: (tf.ensure_shape(tf.py_function(fetch, [i], tf.string), []), y),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _drop_unreadable(found, image: str, given: dict) -> tuple[dict, list[str]]:
    """`given` without the rows whose image does not decode, and those rows (split#row)."""
    refs = [ref for per_class in given.values() for items in per_class for ref in items]
    contents = _encoded_dataset(found, image, [(ref, 0) for ref in refs]).map(lambda b, y: b)
    bad = {refs[i] for i in splitting.undecodable_contents(contents)}
    if not bad:
        return given, []
    kept = {s: [[r for r in items if r not in bad] for items in per_class] for s, per_class in given.items()}
    return kept, [f"{split}#{row}" for split, row in sorted(bad)]
