"""The main command's own data path, unmocked: tf_flowers prepared by TFDS's real builder, offline.

A small flower_photos.tgz of real JPEGs (the five class folders of the real archive) stands in for
the download: only `tfds.download.DownloadManager.download` is patched (the seam TFDS's own builder
tests use), so the builder extracts, encodes and writes tf_flowers/3.0.1 as it would online. Then
`flowerft train --tfds-data-dir DIR` (no --data-dir), `evaluate`, `predict` and `report` run on it.
"""

import base64
import io
import json
import re
import tarfile

import numpy as np
import pytest
from helpers import make_image
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.data import network

runner = CliRunner()
# The real archive's folders; TFDS's ClassLabel orders them dandelion, daisy, tulips, sunflowers, roses.
ARCHIVE_FOLDERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
PER_CLASS = 8


@pytest.fixture(scope="session")
def tf_flowers_dir(tmp_path_factory):
    """A --tfds-data-dir holding tf_flowers/3.0.1, prepared by TFDS's builder from a local archive."""
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("tfds")
    archive = root / "flower_photos.tgz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        add("flower_photos/LICENSE.txt", b"generated for flowerft's tests\n")  # the real archive has one too
        for label, folder in enumerate(ARCHIVE_FOLDERS):
            for i in range(PER_CLASS):
                buffer = io.BytesIO()
                make_image(rng, label, tuple(rng.integers(40, 64, 2))).save(buffer, "JPEG", quality=90)
                add(f"flower_photos/{folder}/{folder}_{i}.jpg", buffer.getvalue())
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "download", lambda self, url: archive)
        tfds.builder("tf_flowers:3.0.1", data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def tfds_test_split(data_dir):
    """TFDS's own view of the book's test slice: (labels, images) in order."""
    import tensorflow_datasets as tfds

    ds = tfds.builder("tf_flowers:3.0.1", data_dir=str(data_dir)).as_dataset(split="train[:10%]", as_supervised=True)
    pairs = [(int(y), x.numpy()) for x, y in ds]
    return [y for y, _ in pairs], [x for _, x in pairs]


def test_train_evaluate_predict_and_report_on_a_prepared_tf_flowers(tf_flowers_dir, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    probes = []
    probe = network.check_online
    monkeypatch.setattr(network, "check_online", lambda *a: probes.append(a) or probe(*a))
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--tfds-data-dir", str(tf_flowers_dir), "--weights", "none", "--backbone", "mobilenet",
        "--image-size", "32", "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1", "--run-dir", str(run),
    ])
    assert result.exit_code == 0, result.output
    assert probes == []  # a prepared folder needs no network: no probe, no download

    builder = tfds.builder("tf_flowers:3.0.1", data_dir=str(tf_flowers_dir))
    names = builder.info.features["label"].names
    assert names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]  # TFDS's order, not sorted
    assert json.loads((run / "class_names.json").read_text()) == names
    metrics = json.loads((run / "metrics.json").read_text())
    book = {"test": "train[:10%]", "valid": "train[10%:25%]", "train": "train[25%:]"}  # Géron's slices
    tfds_sizes = {split: builder.info.splits[s].num_examples for split, s in book.items()}
    assert metrics["split_sizes"] == tfds_sizes == {"test": 4, "valid": 6, "train": 30}
    assert not (run / "splits.json").exists()  # a TFDS run has no files to record: the slices are the split

    result = runner.invoke(app, ["evaluate", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    labels, images = tfds_test_split(tf_flowers_dir)
    predictions = json.loads((run / "predictions.json").read_text())
    assert predictions["paths"] is None and predictions["labels"] == labels  # the test slice, in TFDS's order
    assert sum(map(sum, json.loads((run / "evaluation.json").read_text())["confusion_matrix"])) == tfds_sizes["test"]

    picture = tmp_path / "flower.jpg"
    Image.fromarray(images[0]).save(picture)
    result = runner.invoke(app, ["predict", str(picture), "--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert {entry["label"] for entry in json.loads(result.stdout)[0]["top_k"]} <= set(names)

    result = runner.invoke(app, ["report", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    figures = [re.search(r'src="data:image/jpeg;base64,([^"]+)".*test image #(\d+)', f) for f in html.split("<figure>")[1:]]
    shown = [found.groups() for found in figures if found]
    assert shown, "the report shows no test image"
    for encoded, index in shown:  # each thumbnail is the test slice's image at its position
        thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"), dtype=float)
        own, other = (np.asarray(Image.fromarray(images[i]).resize(thumbnail.shape[1::-1]), dtype=float)
                      for i in (int(index), (int(index) + 1) % len(images)))
        assert np.abs(thumbnail - own).mean() < 0.5 * np.abs(thumbnail - other).mean()
