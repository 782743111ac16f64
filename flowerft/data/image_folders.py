"""Image folders: one subfolder of images per class, or already split (train/ val/ test/, each of class folders).

A folder of class folders is split 10/15/75 here, per class, with the seed. A folder holding
`train` and `val`, `valid`, `validation` and/or `test` is used as split: those are splits, never
classes; a missing validation split is carved from train, a missing test split stays missing.
"""

from __future__ import annotations

from pathlib import Path

from flowerft.config import Config
from flowerft.data.image_io import IMAGE_EXTENSIONS, is_image_file
from flowerft.data.splitting import (
    SPLIT_ALIASES,
    Splits,
    arrange,
    check_two_classes,
    drop_unreadable,
    ordered_classes,
    splits_from_files,
)
from flowerft.errors import DataError


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_image_folder(data_dir: str | Path) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted subfolder names) and each class's image files (sorted)."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data dir {root} does not exist; give a folder with one subfolder of images per class")
    if not root.is_dir():
        raise DataError(f"data dir {root} is not a folder; give a folder with one subfolder of images per class")
    class_dirs = _subfolders(root)
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


def split_folders(root: Path) -> dict[str, Path] | None:
    """{split: folder} when `root` is already split (a `train` folder of class folders and at least
    one of val/valid/validation/test beside it), else None (its subfolders are classes)."""
    if not root.is_dir():
        return None
    folders = _subfolders(root)
    named = {p: SPLIT_ALIASES[p.name.lower()] for p in folders if p.name.lower() in SPLIT_ALIASES}
    train = [p for p, split in named.items() if split == "train"]
    if not train or not _subfolders(train[0]):
        return None  # `train` holding images itself is a class named train
    if len(named) == 1:
        raise DataError(f"data dir {root} holds a train folder but no val, valid, validation or test folder beside it; "
                        f"add one, or give --data-dir {train[0]} to split its classes 10/15/75")
    others = [p.name for p in folders if p not in named]
    if others:
        raise DataError(f"data dir {root} holds the splits {', '.join(p.name for p in named)} and also {', '.join(others)}; "
                        "move the other folders out (each split holds the class folders)")
    by_split: dict[str, Path] = {}
    for folder, split in named.items():
        if split in by_split:
            raise DataError(f"data dir {root} has two {split} folders ({by_split[split].name}, {folder.name}); keep one")
        by_split[split] = folder
    return by_split


def load(config: Config) -> Splits:
    root = Path(config.data_dir)
    folders = split_folders(root)
    if folders is None:
        found, files_per_class = list_image_folder(root)
        given = {"all": dict(zip(found, files_per_class))}
    else:
        given = {split: dict(zip(*list_image_folder(folder))) for split, folder in folders.items()}
        _check_classes_agree(given, folders)
    class_names = ordered_classes(sorted(next(iter(given.values()))), config, f"data dir {root}")
    check_two_classes(class_names, f"data dir {root}")
    per_class = {split: [classes[name] for name in class_names] for split, classes in given.items()}
    per_class, skipped = drop_unreadable(class_names, per_class, f"data dir {root}")
    files, notes = arrange(class_names, per_class, config, f"data dir {root}")
    record = {"kind": "folder", "name": str(root), "has_test": bool(files["test"])}
    if folders is not None:
        record["given_splits"] = [folders[s].name for s in ("train", "valid", "test") if s in folders]
    splits = splits_from_files(class_names, files, record)
    splits.skipped, splits.notes = skipped, notes
    return splits


def _check_classes_agree(given: dict[str, dict[str, list[str]]], folders: dict[str, Path]) -> None:
    """Every split has the same class folders: one line naming the class missing where."""
    every = sorted(set().union(*given.values()))
    for name in every:
        has = [s for s in given if name in given[s]]
        lacks = [s for s in given if name not in given[s]]
        if lacks:
            raise DataError(f"class {name} is in {', '.join(folders[s].name for s in has)} but missing from "
                            f"{folders[lacks[0]].name} (no folder {folders[lacks[0]] / name}); add it there or "
                            "remove the class from every split")
