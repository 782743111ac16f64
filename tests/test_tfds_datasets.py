"""Any TFDS image-classification dataset, on small builders defined here and prepared into a
temp data dir by TFDS's real download_and_prepare (real split files, real slicing; no mock_data)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import closed_port, make_image, one_line_error
from source_runs import train_resume_evaluate_report
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.data import sources, tfds_datasets

runner = CliRunner()
COLOURS = ["red", "green", "blue"]


def examples(n: int, seed: int, gray: bool = False):
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = np.asarray(make_image(rng, i % 3, (24, 32)))
        yield i, {"image": image[..., :1] if gray else image, "label": COLOURS[i % 3]}


class FlowerftTinyColours(tfds.core.GeneratorBasedBuilder):
    """Train, validation and test splits, as beans or oxford_flowers102 have them."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=COLOURS),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(24, 0), "validation": self._generate_examples(6, 1),
                "test": self._generate_examples(9, 2)}

    def _generate_examples(self, n, seed):
        return examples(n, seed)


class FlowerftTinyGray(tfds.core.GeneratorBasedBuilder):
    """Only a train split, of grayscale images, with its label under another name (like mnist's)."""

    VERSION = tfds.core.Version("2.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "picture": tfds.features.Image(shape=(None, None, 1)), "colour": tfds.features.ClassLabel(names=COLOURS),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        return ((i, {"picture": x["image"], "colour": x["label"]}) for i, x in examples(40, 3, gray=True))


class FlowerftTinyUnlabelled(tfds.core.GeneratorBasedBuilder):
    """Images and no ClassLabel: not an image-classification dataset."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        return ((i, {"image": x["image"], "caption": "a colour"}) for i, x in examples(3, 4))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    for builder in (FlowerftTinyColours, FlowerftTinyGray):
        builder(data_dir=str(folder)).download_and_prepare()
    return folder


def test_a_dataset_with_its_own_splits_uses_them(tfds_dir):
    splits = sources.load(make_config(tfds_name="flowerft_tiny_colours", tfds_data_dir=str(tfds_dir)))
    assert splits.sizes == {"test": 9, "valid": 6, "train": 24} and splits.class_names == COLOURS
    assert splits.record["splits"] == {"test": "test", "valid": "validation", "train": "train"}
    assert splits.record["name"] == "flowerft_tiny_colours:1.0.0"


def test_a_train_only_dataset_gets_the_books_slices_in_rgb(tfds_dir):
    config = make_config(tfds_name="flowerft_tiny_gray:2.0.0", tfds_data_dir=str(tfds_dir))
    splits = sources.load(config)
    assert splits.record["splits"] == {"test": "train[:10%]", "valid": "train[10%:25%]", "train": "train[25%:]"}
    assert splits.sizes == {"test": 4, "valid": 6, "train": 30}  # TFDS's own rounding of 40 examples
    assert (splits.record["image_feature"], splits.record["label_feature"]) == ("picture", "colour")
    image, label = next(iter(splits.train))
    assert image.shape[-1] == 3 and image.dtype == "uint8"  # grayscale as RGB


def test_tfds_splits_slices_as_given(tfds_dir):
    config = make_config(tfds_name="flowerft_tiny_colours", tfds_data_dir=str(tfds_dir),
                         tfds_splits="validation,test,train[:50%]+train[75%:]")
    assert sources.load(config).sizes == {"test": 6, "valid": 9, "train": 18}


@pytest.mark.parametrize("args, message", [
    (["--tfds", "flowerft_tiny_unlabelled"], "TFDS flowerft_tiny_unlabelled has no ClassLabel feature"),
    (["--tfds", "flowerft_tiny_colours", "--tfds-splits", "test,valid,train"],
     "TFDS flowerft_tiny_colours has no split 'valid' (its splits: test, train, validation)"),
    (["--tfds", "flowerft_tiny_colours", "--tfds-splits", "test,train"], "must be three TFDS split specs"),
    (["--tfds", "flowerft_tiny_colours", "--label-column", "colour"], "has no ClassLabel feature named colour"),
    (["--tfds", "no_such_dataset_at_all"], "TFDS has no dataset 'no_such_dataset_at_all'"),
])
def test_bad_tfds_input_gives_one_line(tfds_dir, args, message):
    result = runner.invoke(app, ["train", *args, "--tfds-data-dir", str(tfds_dir), "--weights", "none", "--image-size", "71"])
    assert message in one_line_error(result)


def test_an_unprepared_dataset_probes_the_network_and_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_datasets, "TFDS_DOWNLOAD_HOST", ("127.0.0.1", closed_port()))
    result = runner.invoke(app, ["train", "--tfds", "flowerft_tiny_colours", "--tfds-data-dir", str(tmp_path / "empty"),
                                 "--weights", "none", "--image-size", "71"])
    line = one_line_error(result)
    assert "cannot download flowerft_tiny_colours" in line and "--tfds-data-dir" in line
    assert not (tmp_path / "empty" / "flowerft_tiny_colours").exists()  # nothing half-prepared


def test_a_tfds_dataset_trains_resumes_evaluates_and_reports(tfds_dir, tmp_path, monkeypatch):
    evaluation = train_resume_evaluate_report(tmp_path, monkeypatch, tfds_name="flowerft_tiny_colours",
                                              tfds_data_dir=str(tfds_dir))
    assert evaluation["examples"] == 9 and evaluation["class_names"] == COLOURS
    assert evaluation["runs_row"]["source"] == "tfds flowerft_tiny_colours:1.0.0"
