"""A labels CSV: `path,label[,split]` rows, the form annotation tools and competitions export.

Paths are relative to the CSV's folder (or absolute). Without a split column the images are
split 10/15/75 like a folder; with one, its train/valid/test rows are used as given (see
splitting.arrange). The same checks as an image folder: unreadable files skipped and reported,
classes too small for a split refused; besides, a row naming a missing file and a path given
twice are refused.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from flowerft.config import Config
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

SPLIT_COLUMN = "split"


def read_rows(path: Path, path_column: str, label_column: str) -> list[tuple[int, str, str, str | None]]:
    """(line number, absolute file, label, split or None) per row, every row checked."""
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; give a CSV with the columns path,label[,split]")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's UTF-8 starts with a BOM
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for column in (path_column, label_column):
                if column not in header:
                    raise DataError(f"labels file {path} has no {column} column (its header: {', '.join(header) or 'none'}); "
                                    f"its first line must name the columns {path_column},{label_column}[,{SPLIT_COLUMN}]")
            raw = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"labels file {path} is not a readable CSV ({e}); save it as UTF-8 CSV") from None
    if not raw:
        raise DataError(f"labels file {path} has no rows below its header; add one row per image: path,label")
    with_split = SPLIT_COLUMN in header and any((row.get(SPLIT_COLUMN) or "").strip() for _, row in raw)
    rows, seen, missing = [], {}, []
    for line, row in raw:
        file, label = (row.get(path_column) or "").strip(), (row.get(label_column) or "").strip()
        if not file or not label:
            raise DataError(f"{path} line {line}: no {path_column if not file else label_column}; "
                            "give every row a path and a label")
        split = None
        if with_split:
            given = (row.get(SPLIT_COLUMN) or "").strip()
            split = SPLIT_ALIASES.get(given.lower())
            if split is None:
                raise DataError(f"{path} line {line}: split {given!r} is not train, val, valid, validation or test; "
                                "give every row one of them (or leave the split column out)")
        absolute = Path(os.path.abspath(path.parent / file))  # symlinks kept as given, like a folder's
        if str(absolute) in seen:
            raise DataError(f"{path} lines {seen[str(absolute)]} and {line} both name {file}; keep one row per image")
        seen[str(absolute)] = line
        if not absolute.is_file():
            missing.append((line, file))
        rows.append((line, str(absolute), label, split))
    if missing:
        (line, file), more = missing[0], len(missing) - 1
        raise DataError(f"{path} line {line}: {file} does not exist{f' (nor do the files of {more} more rows)' if more else ''}; "
                        f"fix the path (relative to {path.parent}) or remove the row")
    return rows


def load(config: Config) -> Splits:
    path = Path(config.labels)
    where = f"labels file {path}"
    rows = read_rows(path, config.image_column or "path", config.label_column or "label")
    class_names = ordered_classes(sorted({label for _, _, label, _ in rows}), config, where)
    check_two_classes(class_names, where)
    index = {name: i for i, name in enumerate(class_names)}
    splits = sorted({split or "all" for _, _, _, split in rows})
    given = {split: [[] for _ in class_names] for split in splits}
    for _, file, label, split in rows:
        given[split or "all"][index[label]].append(file)
    if "all" not in given and "train" not in given:
        raise DataError(f"{where} has {', '.join(splits)} rows but no train rows; give some rows the split train")
    given, skipped = drop_unreadable(class_names, given, where)
    files, notes = arrange(class_names, given, config, where, remedy="add rows for it or remove its rows")
    record = {"kind": "labels", "name": str(path), "has_test": bool(files["test"])}
    if "all" not in given:
        record["given_splits"] = [s for s in ("train", "valid", "test") if s in given]
    result = splits_from_files(class_names, files, record)
    result.skipped, result.notes = skipped, notes
    return result
