"""Data as users have it: pre-split folders and a labels CSV (TFDS and Hugging Face: their own files)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers import CLASSES, make_image_folder, one_line_error
from source_runs import train_resume_evaluate_report
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.data import sources

runner = CliRunner()
SMALL = dict(sizes=(32, 40))


def presplit(root: Path, splits=("train", "val", "test"), per_split=(8, 2, 2)) -> Path:
    for i, (split, n) in enumerate(zip(splits, per_split)):
        make_image_folder(root / split, per_class=n, seed=i, **SMALL)
    return root


def names(items) -> set[str]:
    return {Path(p).relative_to(Path(p).parents[2]).as_posix() for p, _ in items}


def test_a_presplit_folder_is_used_as_given_and_its_splits_are_never_classes(tmp_path):
    root = presplit(tmp_path / "d")
    splits = sources.load(make_config(data_dir=str(root)))
    assert splits.class_names == list(CLASSES)  # not ["test", "train", "val"]
    assert splits.sizes == {"train": 24, "valid": 6, "test": 6}
    for ours, folder in (("train", "train"), ("valid", "val"), ("test", "test")):
        assert {p.split("/")[0] for p in names(splits.files[ours])} == {folder}
        assert all(Path(p).parent.name == CLASSES[y] for p, y in splits.files[ours])
    assert splits.record["given_splits"] == ["train", "val", "test"] and splits.notes == []


@pytest.mark.parametrize("valid_name", ["valid", "validation", "VAL"])
def test_a_missing_test_split_is_said_and_a_missing_validation_split_is_carved_from_train(tmp_path, valid_name):
    no_test = presplit(tmp_path / "a", ("train", valid_name), (8, 2))
    splits = sources.load(make_config(data_dir=str(no_test)))
    assert splits.sizes == {"train": 24, "valid": 6, "test": 0} and not splits.record["has_test"]
    assert any("no test split" in note for note in splits.notes)

    no_valid = presplit(tmp_path / "b", ("train", "test"), (8, 2))
    config = make_config(data_dir=str(no_valid), valid_percent=25, seed=3)
    splits = sources.load(config)
    assert splits.sizes == {"train": 18, "valid": 6, "test": 6}  # 25% of each class's 8 train images
    assert {p.split("/")[0] for p in names(splits.files["valid"])} == {"train"}
    assert not names(splits.files["valid"]) & names(splits.files["train"])
    assert sources.load(config).files == splits.files  # the seed fixes the carving
    other_seed = sources.load(make_config(data_dir=str(no_valid), valid_percent=25, seed=4))
    assert names(other_seed.files["valid"]) != names(splits.files["valid"])
    assert any("no validation split" in note for note in splits.notes)


@pytest.mark.parametrize("layout, message", [
    ("class missing from test", "class roses is in train, val but missing from test"),
    ("only train", "holds a train folder but no val, valid, validation or test folder"),
    ("an extra folder", "and also extras; move the other folders out"),
    ("two validation folders", "has two valid folders (val, valid)"),
    ("unlabelled test images", "test has no class subfolders"),
])
def test_a_bad_presplit_folder_gives_one_line(tmp_path, layout, message):
    root = presplit(tmp_path / "d", ("train", "val", "test"), (8, 2, 2)) if layout != "only train" else \
        presplit(tmp_path / "d", ("train",), (8,))
    if layout == "class missing from test":
        shutil.rmtree(root / "test" / "roses")
    elif layout == "an extra folder":
        make_image_folder(root / "extras", **SMALL)
    elif layout == "two validation folders":
        make_image_folder(root / "valid", per_class=2, **SMALL)
    elif layout == "unlabelled test images":  # Kaggle's test folder: images, no classes
        shutil.rmtree(root / "test")
        (root / "test").mkdir()
        shutil.copy(next((root / "train" / "daisy").iterdir()), root / "test" / "0001.jpg")
    result = runner.invoke(app, ["train", "--data-dir", str(root), "--weights", "none", "--image-size", "71"])
    assert message in one_line_error(result)


def test_a_presplit_folder_without_test_trains_resumes_evaluates_valid_and_refuses_test(tmp_path, monkeypatch):
    presplit(tmp_path / "data", ("train", "val"), (8, 3))
    evaluation = train_resume_evaluate_report(tmp_path, monkeypatch, split="valid", data_dir="data", export=True)
    assert evaluation["examples"] == 9 and evaluation["runs_row"]["source"] == "folder data"
    assert any("has no test split: evaluate with --split valid" in line for line in evaluation["said"])
    run = tmp_path / "runs" / "run"
    assert "has no test split" in one_line_error(runner.invoke(app, ["evaluate", "--run-dir", str(run)]))
    assert "validation split" in (run / "report.html").read_text()
    assert evaluation["export_status"] == ["exporting tflite: each is converted, then checked on the valid split"]


# --------------------------------------------------------------------------- labels CSV


def write_csv(path: Path, rows, header=("path", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labelled_images(root: Path, per_class: int = 10) -> list[tuple[str, str]]:
    """Images in one flat folder (no class folders), and their (relative path, label)."""
    make_image_folder(root / "tmp", per_class=per_class, **SMALL)
    (root / "images").mkdir(parents=True)
    rows = []
    for image in sorted((root / "tmp").rglob("*.jpg")):
        image.rename(root / "images" / image.name)
        rows.append((f"images/{image.name}", image.parent.name))
    shutil.rmtree(root / "tmp")
    return rows


def test_a_labels_csv_is_split_like_a_folder_and_keeps_the_class_order_given(tmp_path):
    rows = labelled_images(tmp_path / "data")
    labels = write_csv(tmp_path / "data" / "labels.csv", rows)
    splits = sources.load(make_config(labels=str(labels)))
    assert splits.class_names == sorted(CLASSES) and splits.sizes == {"train": 21, "valid": 6, "test": 3}
    every = [p for split in splits.files.values() for p, _ in split]
    assert sorted(every) == sorted(str(tmp_path / "data" / p) for p, _ in rows)  # relative to the CSV
    ordered = sources.load(make_config(labels=str(labels), class_order="roses,daisy,dandelion"))
    assert ordered.class_names == ["roses", "daisy", "dandelion"]
    assert all(Path(p).name.startswith(ordered.class_names[y]) for p, y in ordered.files["train"])


def test_a_labels_csv_with_a_split_column_uses_its_splits(tmp_path):
    rows = labelled_images(tmp_path / "data")
    split = lambda i: "test" if i % 10 < 2 else "val" if i % 10 < 4 else "train"  # noqa: E731
    labels = write_csv(tmp_path / "data" / "labels.csv", [(p, y, split(i)) for i, (p, y) in enumerate(rows)],
                       header=("path", "label", "split"))
    splits = sources.load(make_config(labels=str(labels)))
    assert splits.sizes == {"train": 18, "valid": 6, "test": 6}
    expected = {str(tmp_path / "data" / p) for i, (p, _) in enumerate(rows) if split(i) == "test"}
    assert {p for p, _ in splits.files["test"]} == expected


def test_a_labels_csv_skips_unreadable_files_and_reports_them(tmp_path):
    rows = labelled_images(tmp_path / "data")
    (tmp_path / "data" / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    labels = write_csv(tmp_path / "data" / "labels.csv", [*rows, ("images/broken.jpg", "daisy")])
    splits = sources.load(make_config(labels=str(labels)))
    assert splits.skipped == [str(tmp_path / "data" / "images" / "broken.jpg")] and sum(splits.sizes.values()) == 30


@pytest.mark.parametrize("case, message", [
    ("missing file", "labels.csv line 3: images/gone.jpg does not exist; fix the path"),
    ("one class", "has only one class (daisy); a classifier needs at least two"),
    ("duplicate path", "lines 2 and 32 both name images/"),
    ("tiny class", "class tulips has 1 image, too few"),
    ("no label column", "has no label column (its header: path, class)"),
    ("bad split", "line 2: split 'dev' is not train, val, valid, validation or test"),
    ("class order", "class_order lacks roses"),
])
def test_a_bad_labels_csv_gives_one_line(tmp_path, case, message):
    rows = labelled_images(tmp_path / "data")
    header, extra = ("path", "label"), []
    if case == "missing file":
        rows.insert(1, ("images/gone.jpg", "daisy"))
    elif case == "one class":
        rows = [(p, "daisy") for p, _ in rows]
    elif case == "duplicate path":
        rows.append(rows[0])
    elif case == "tiny class":
        rows.append((rows[0][0].replace("daisy_000", "daisy_000"), "tulips"))
        rows = rows[1:]
    elif case == "no label column":
        header = ("path", "class")
    elif case == "bad split":
        header, rows = ("path", "label", "split"), [(p, y, "dev") for p, y in rows]
    elif case == "class order":
        extra = ["--class-order", "daisy,dandelion"]
    labels = write_csv(tmp_path / "data" / "labels.csv", rows, header)
    result = runner.invoke(app, ["train", "--labels", str(labels), "--weights", "none", "--image-size", "71", *extra])
    assert message in one_line_error(result)


def test_a_labels_csv_run_trains_resumes_evaluates_and_reports_from_anywhere(tmp_path, monkeypatch):
    rows = labelled_images(tmp_path / "data", per_class=8)
    write_csv(tmp_path / "data" / "labels.csv", rows)
    evaluation = train_resume_evaluate_report(tmp_path, monkeypatch, labels="data/labels.csv")
    assert evaluation["examples"] == 3 and evaluation["runs_row"]["source"] == "csv labels.csv"
    recorded = json.loads((tmp_path / "runs" / "run" / "source.json").read_text())
    assert recorded["name"] == str(tmp_path / "data" / "labels.csv")


def test_two_sources_at_once_are_refused(tmp_path):
    result = runner.invoke(app, ["train", "--data-dir", "a", "--labels", "b.csv"])
    assert "labels: names a second data source beside data_dir" in one_line_error(result)
    result = runner.invoke(app, ["train", "--data-dir", "a", "--tfds", "beans"])
    assert "tfds_name: names a TFDS dataset beside data_dir" in one_line_error(result)
