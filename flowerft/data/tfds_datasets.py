"""Any TFDS image-classification dataset: `tf_flowers` (the book's, the default), `beans`,
`cats_vs_dogs`, `oxford_flowers102`, ... - one image feature and one ClassLabel feature.

The splits: `tfds_splits` (TEST,VALID,TRAIN specs) when given; else the dataset's own test and
validation splits where it has them, and slices of train for the ones it lacks (the book's
train[:10%], train[10%:25%], train[25%:] for tf_flowers, which has only train).
"""

from __future__ import annotations

import re

import tensorflow as tf

from flowerft.config import Config
from flowerft.data import network
from flowerft.data.splitting import SPLIT_NAMES, Splits, label_counts
from flowerft.errors import DataError, first_line

# tf_flowers' archive lives here; a quick connect tells us whether TFDS can download it.
TFDS_DOWNLOAD_HOST = ("download.tensorflow.org", 443)
SPEC_ORDER = ("test", "valid", "train")  # the order of tfds_splits


def tfds_split_names(test_percent: int, valid_percent: int) -> dict[str, str]:
    """The book's slices of tf_flowers' single split: test [:10%], valid [10%:25%], train [25%:]."""
    end = test_percent + valid_percent
    return {
        "test": f"train[:{test_percent}%]",
        "valid": f"train[{test_percent}%:{end}%]",
        "train": f"train[{end}%:]",
    }


def default_splits(names: set[str], config: Config, dataset: str) -> dict[str, str]:
    """The dataset's own test/validation splits where it has them, slices of train for the others."""
    if names and "train" not in names:
        raise DataError(f"TFDS {dataset} has no train split (its splits: {', '.join(sorted(names))}); "
                        "give --tfds-splits TEST,VALID,TRAIN")
    test, valid = "test" in names, "validation" in names
    if not test and not valid:
        return tfds_split_names(config.test_percent, config.valid_percent)
    t, v = config.test_percent, config.valid_percent
    return {
        "test": "test" if test else f"train[:{t}%]",
        "valid": "validation" if valid else f"train[:{v}%]",
        "train": "train" if test and valid else f"train[{v if test else t}%:]",
    }


def given_splits(config: Config) -> dict[str, str]:
    return dict(zip(SPEC_ORDER, (s.strip() for s in config.tfds_splits.split(","))))


def features(info, config: Config) -> tuple[str, str]:
    """The names of the image feature and the ClassLabel feature, from info.features (or named)."""
    import tensorflow_datasets as tfds

    top = dict(info.features.items()) if hasattr(info.features, "items") else {}
    images = [k for k, f in top.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in top.items() if isinstance(f, tfds.features.ClassLabel)]
    return (_pick(images, config.image_column, "image", "image", "--image-column", info, top),
            _pick(labels, config.label_column, "label", "ClassLabel", "--label-column", info, top))


def _pick(candidates, named, usual, what, flag, info, top) -> str:
    name = info.full_name.split("/")[0]
    if named is not None:
        if named not in candidates:
            raise DataError(f"TFDS {name} has no {what} feature named {named} (its features: {', '.join(top)}); "
                            f"name one of {', '.join(candidates) or 'none'} with {flag}")
        return named
    if usual in candidates:
        return usual
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"TFDS {name} has no {what} feature (its features: {', '.join(top) or 'none'}); flowerft "
                        "trains on image-classification datasets: an image and a ClassLabel per example")
    raise DataError(f"TFDS {name} has several {what} features ({', '.join(candidates)}); name one with {flag}")


def _check_split_names(specs: dict[str, str], names: set[str], dataset: str) -> None:
    for spec in specs.values():
        for part in spec.split("+"):
            split = re.match(r"\s*([^\[\s]+)", part)
            if not split or (names and split.group(1) not in names):
                raise DataError(f"TFDS {dataset} has no split {(split.group(1) if split else part)!r} "
                                f"(its splits: {', '.join(sorted(names))}); fix --tfds-splits TEST,VALID,TRAIN")


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grayscale and RGBA images as RGB: the model takes three channels."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    return image[..., :3] if channels == 4 else image


def load(config: Config, recorded: dict | None = None) -> Splits:
    import tensorflow_datasets as tfds  # slow to import; only this source needs it

    recorded = recorded or {}
    name = recorded.get("name") or config.tfds_name
    try:
        builder = tfds.builder(name, data_dir=config.tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"TFDS has no dataset {name.split(':')[0]!r}; see https://www.tensorflow.org/datasets/catalog "
                        "(image classification) for the names") from None
    except (ValueError, AssertionError) as e:  # a version it does not have, ...
        raise DataError(f"TFDS {name}: {first_line(e)}") from None
    dataset = builder.info.full_name.split("/")[0]
    image_key, label_key = features(builder.info, config)
    if not builder.is_prepared():
        network.check_online(
            TFDS_DOWNLOAD_HOST,
            dataset,
            "work offline with --data-dir FOLDER (one subfolder of images per class), "
            f"or --tfds-data-dir pointing at a TFDS folder that already holds {dataset}",
        )
        builder.download_and_prepare()
    names = set(builder.info.splits.keys())
    specs = recorded.get("splits") or (given_splits(config) if config.tfds_splits else default_splits(names, config, dataset))
    _check_split_names(specs, names, dataset)
    try:
        datasets = {
            split: builder.as_dataset(split=specs[split], shuffle_files=False).map(
                lambda x: (to_rgb(x[image_key]), x[label_key]), num_parallel_calls=tf.data.AUTOTUNE)
            for split in SPLIT_NAMES
        }
    except (ValueError, KeyError, AssertionError) as e:  # a slice TFDS cannot parse: "train[:10]%", ...
        raise DataError(f"TFDS {dataset}: cannot read the split {specs}: {first_line(e)}; "
                        "fix --tfds-splits TEST,VALID,TRAIN (e.g. test,validation,train)") from None
    sizes = {split: int(ds.cardinality()) for split, ds in datasets.items()}
    for split, n in sizes.items():
        if n == 0:
            raise DataError(f"TFDS {dataset}'s {split} split {specs[split]!r} is empty; give --tfds-splits TEST,VALID,TRAIN")
    full = f"{dataset}:{builder.version}"
    record = {"kind": "tfds", "name": full, "splits": specs, "image_feature": image_key, "label_feature": label_key}
    book = specs == tfds_split_names(config.test_percent, config.valid_percent)
    notes = [] if book else [f"TFDS {full}: test {specs['test']}, valid {specs['valid']}, train {specs['train']}"]
    class_names = list(builder.info.features[label_key].names)
    return Splits(class_names=class_names, element="image", sizes=sizes, record=record, notes=notes,
                  counts=lambda split: _split_counts(builder, specs[split], image_key, label_key, len(class_names)),
                  **datasets)


def _split_counts(builder, spec: str, image_key: str, label_key: str, n_classes: int) -> list[int]:
    """Images per class of a split, read without decoding one image (TFDS's SkipDecoding)."""
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=spec, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    return label_counts([int(y) for y in ds.map(lambda x: x[label_key]).as_numpy_iterator()], n_classes)
