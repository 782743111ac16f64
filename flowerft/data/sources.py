"""Where the images come from: TFDS (`tf_flowers`, the book's, or any image dataset), an image
folder (one subfolder per class, or already split), a labels CSV, or a Hugging Face dataset.

Each gives the same thing, a `Splits` of unbatched (item, label) datasets, which
flowerft/data/pipelines.py turns into batches. This module picks the
source's loader (one module per kind) and reloads a run's own splits; what the sources share is
flowerft/data/splitting.py.
"""

from __future__ import annotations

from pathlib import Path

from flowerft.config import Config
from flowerft.data.splitting import SPLIT_NAMES, Splits, splits_from_files, undecodable
from flowerft.errors import DataError
from flowerft.runs import layout, source_record


def load_recorded(run_dir: Path, config: Config, needed: tuple[str, ...] = SPLIT_NAMES) -> Splits:
    """A run's own splits: its recorded file lists (files), else its recorded source (TFDS, Hugging Face).

    The files of the `needed` splits must still be there and decode, checked now: a file
    that went missing since training must not stop an epoch or an evaluation halfway.
    """
    record = source_record.read(run_dir) or {}
    if "test" in needed and not record.get("has_test", True):
        raise DataError(f"{run_dir} has no test split (its data, {source_record.describe(config, record)}, came "
                        "without one); use --split valid")
    files_path = run_dir / layout.SPLITS
    if not files_path.is_file():
        kind = source_record.kind(config)
        own = record if record.get("kind") == kind else {}  # runs from before source.json: none
        if kind == source_record.HF:
            from flowerft.data import hf_datasets
            return hf_datasets.load(config, own)
        from flowerft.data import tfds_datasets
        return tfds_datasets.load(config, own)
    class_names = layout.read_json(run_dir / layout.CLASS_NAMES)
    files = {k: [(p, int(y)) for p, y in v] for k, v in layout.read_json(files_path).items()}
    paths = [p for name in needed for p, _ in files[name]]
    missing = [p for p in paths if not Path(p).is_file()]
    broken = missing or undecodable(paths)
    if broken:
        what = "missing" if missing else "no longer readable images"
        raise DataError(
            f"{len(broken)} of the {len(paths)} {'/'.join(needed)} files recorded in {files_path} are {what} "
            f"(first: {broken[0]}); put them back, or train a new run on the folder as it is now"
        )
    return splits_from_files(class_names, files, record)


def load(config: Config) -> Splits:
    """The splits of the source the config names (see source_record.kind)."""
    from flowerft.data import hf_datasets, image_folders, labels_file, tfds_datasets

    loaders = {source_record.FOLDER: image_folders.load, source_record.LABELS: labels_file.load,
               source_record.HF: hf_datasets.load, source_record.TFDS: tfds_datasets.load}
    return loaders[source_record.kind(config)](config)
