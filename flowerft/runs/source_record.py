"""Which source a run's images come from, and what the run records of it (source.json).

Read without TensorFlow, so that `flowerft runs` stays instant. The loaders themselves are
flowerft/data/sources.py and one module per kind: image_folders, labels_file, tfds_datasets, hf_datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE = "source.json"
FOLDER, LABELS, TFDS, HF = "folder", "labels", "tfds", "hf"


def kind(values: Any) -> str:
    """The source a config (or a config.yaml's mapping) names: one of FOLDER, LABELS, HF, TFDS."""
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key, None)
    if get("data_dir"):
        return FOLDER
    if get("labels"):
        return LABELS
    if get("hf_dataset"):
        return HF
    return TFDS


def where(values: Any) -> str:
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key, None)
    return {FOLDER: get("data_dir"), LABELS: get("labels"), HF: get("hf_dataset")}.get(kind(values)) or \
        get("tfds_name") or "tf_flowers"


def describe(values: Any, record: dict | None = None, short: bool = False) -> str:
    """`folder /data/flowers (train, val, test)`, `csv labels.csv`, `tfds beans:0.1.0`, `hf /data/beans`."""
    name = (record or {}).get("name") or where(values)
    label = {FOLDER: "folder", LABELS: "csv", TFDS: "tfds", HF: "hf"}[kind(values)]
    if short and kind(values) != TFDS:
        name = Path(str(name)).name or str(name)
    text = f"{label} {name}"
    if not short and record and record.get("given_splits"):
        text += f" ({', '.join(record['given_splits'])})"
    return text


def read(run_dir: Path) -> dict | None:
    import json

    path = Path(run_dir) / SOURCE
    try:
        value = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def has_test(run_dir: Path) -> bool:
    """Whether the run has a test split (a pre-split source may come without one)."""
    record = read(run_dir)
    return record is None or record.get("has_test", True)


def held_out_split(run_dir: Path) -> str:
    """The split a run's model is checked on: test, or valid for data that came without a test split."""
    return "test" if has_test(run_dir) else "valid"
