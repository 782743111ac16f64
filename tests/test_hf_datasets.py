"""Hugging Face datasets (the `hf` extra), written here: save_to_disk folders and parquet files, offline."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from typer.testing import CliRunner

datasets = pytest.importorskip("datasets")  # in the test extra; the `hf` extra for users

from helpers import closed_port, make_image, one_line_error  # noqa: E402
from source_runs import train_resume_evaluate_report  # noqa: E402

from flowerft.cli import app  # noqa: E402
from flowerft.config_files import make_config  # noqa: E402
from flowerft.data import sources  # noqa: E402
from flowerft.data import hf_datasets

runner = CliRunner()
BREEDS = ["beagle", "corgi", "pug"]


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """load_dataset caches what it converts (parquet): under the test's folder, not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png(rng, label: int) -> bytes:
    buffer = io.BytesIO()
    make_image(rng, label, (24, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def table(n: int, seed: int, labels=None, image="img", label="label") -> "datasets.Dataset":
    rng = np.random.default_rng(seed)
    ys = [i % 3 for i in range(n)]
    features = datasets.Features({image: datasets.Image(),
                                  label: datasets.ClassLabel(names=BREEDS) if labels is None else datasets.Value("string")})
    rows = {image: [{"bytes": png(rng, y), "path": None} for y in ys],
            label: ys if labels is None else [labels[y] for y in ys]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_a_saved_dataset_dict_uses_its_own_splits_and_carves_the_validation_split(tmp_path):
    datasets.DatasetDict(train=table(24, 0), test=table(6, 1)).save_to_disk(str(tmp_path / "hf"))
    splits = sources.load(make_config(hf_dataset=str(tmp_path / "hf")))
    assert splits.class_names == BREEDS and splits.element == "encoded"
    assert splits.sizes == {"train": 21, "valid": 3, "test": 6}  # 15% of each class's 8 train rows validate
    assert {r[0] for r in splits.record["rows"]["test"]} == {"test"}
    assert {r[0] for r in splits.record["rows"]["valid"]} == {"train"}
    assert (splits.record["image_column"], splits.record["label_column"]) == ("img", "label")
    contents, label = next(iter(splits.test))
    assert contents.dtype == "string" and label.dtype == "int64"


def test_a_parquet_file_with_text_labels_is_split_like_a_folder(tmp_path):
    table(30, 2, labels=BREEDS, image="picture", label="breed").to_parquet(str(tmp_path / "dogs.parquet"))
    config = make_config(hf_dataset=str(tmp_path / "dogs.parquet"), label_column="breed", class_order="pug,beagle,corgi")
    splits = sources.load(config)
    assert splits.class_names == ["pug", "beagle", "corgi"] and splits.sizes == {"train": 21, "valid": 6, "test": 3}
    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "dogs.parquet"))["train"]
    assert all(rows[row]["breed"] == splits.class_names[y] for _, row, y in splits.record["rows"]["train"])


def test_rows_whose_image_does_not_decode_are_skipped_and_named(tmp_path):
    ds = table(30, 7)
    broken = datasets.Dataset.from_dict({"img": [{"bytes": b"not an image", "path": None}], "label": [1]},
                                        features=ds.features)
    datasets.concatenate_datasets([ds, broken]).save_to_disk(str(tmp_path / "hf"))
    splits = sources.load(make_config(hf_dataset=str(tmp_path / "hf")))
    assert splits.skipped == ["train#30"] and sum(splits.sizes.values()) == 30


def test_a_hub_name_without_network_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setattr(hf_datasets, "HUB_HOST", ("127.0.0.1", closed_port()))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.monotonic()
    line = one_line_error(runner.invoke(app, ["train", "--hf-dataset", "someone/dogs", "--weights", "none"]))
    assert time.monotonic() - start < 15
    assert "cannot download the Hugging Face dataset someone/dogs" in line and "save_to_disk" in line


@pytest.mark.parametrize("case, message", [
    ("one class", "the label column label of the Hugging Face dataset"),
    ("no label column", "has no label column it can tell (its columns: img, kind); name it with --label-column"),
    ("no image column", "has no image column img2"),
    ("missing path", "cannot open the Hugging Face dataset"),
])
def test_bad_hf_input_gives_one_line(tmp_path, case, message):
    ds, extra = table(12, 3), []
    if case == "one class":
        ds = ds.filter(lambda row: row["label"] == 0)
    elif case == "no label column":
        ds = ds.rename_column("label", "kind").cast_column("kind", datasets.Value("int64"))
    elif case == "no image column":
        extra = ["--image-column", "img2"]
    ds.save_to_disk(str(tmp_path / "hf"))
    where = str(tmp_path / ("hf" if case != "missing path" else "hf/state.json"))
    result = runner.invoke(app, ["train", "--hf-dataset", where, "--weights", "none", "--image-size", "71", *extra])
    assert message in one_line_error(result)


def test_a_hf_dataset_run_trains_resumes_evaluates_and_reports_from_anywhere(tmp_path, monkeypatch):
    datasets.DatasetDict(train=table(24, 4), validation=table(6, 5), test=table(6, 6)).save_to_disk(str(tmp_path / "data" / "hf"))
    evaluation = train_resume_evaluate_report(tmp_path, monkeypatch, hf_dataset="data/hf", export=True)
    assert evaluation["examples"] == 6 and evaluation["class_names"] == BREEDS
    assert evaluation["runs_row"]["source"] == "hf hf"
