"""Data functions, each run eagerly and inside Dataset.map (the two can differ)."""

import io
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import closed_port, make_image_folder
from PIL import Image

from flowerft.config_files import make_config
from flowerft.data import image_folders, image_io, network, pipelines, sources, splitting, tfds_datasets
from flowerft.errors import DataError, OfflineError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
SAMPLES = {
    "jpeg": encode(Image.fromarray(RGB), "JPEG"),
    "png": encode(Image.fromarray(RGB), "PNG"),
    "gray png": encode(Image.fromarray(RGB[..., 0]), "PNG"),
    "rgba png": encode(Image.fromarray(np.dstack([RGB, RGB[..., :1]])), "PNG"),
    "palette png": encode(Image.fromarray(RGB).convert("P"), "PNG"),
    "bmp": encode(Image.fromarray(RGB), "BMP"),
    "animated gif": encode(
        Image.fromarray(RGB).convert("P"), "GIF", save_all=True,
        append_images=[Image.fromarray(255 - RGB).convert("P")],
    ),
}


def in_map(fn, value):
    """`fn` applied inside a tf.data pipeline rather than eagerly."""
    return next(iter(tf.data.Dataset.from_tensors(value).map(fn)))


@pytest.mark.parametrize("kind", SAMPLES)
def test_decode_image_gives_rgb_uint8_eagerly_and_in_map(kind):
    eager = image_io.decode_image(tf.constant(SAMPLES[kind]))
    mapped = in_map(image_io.decode_image, tf.constant(SAMPLES[kind]))
    assert eager.shape == (9, 13, 3) and eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager, mapped)


def test_decode_keeps_png_pixels_and_first_gif_frame():
    np.testing.assert_array_equal(image_io.decode_image(tf.constant(SAMPLES["png"])), RGB)
    gray = image_io.decode_image(tf.constant(SAMPLES["gray png"])).numpy()
    np.testing.assert_array_equal(gray[..., 1], RGB[..., 0])
    first = image_io.decode_image(tf.constant(SAMPLES["animated gif"])).numpy()
    palette = np.asarray(Image.fromarray(RGB).convert("P").convert("RGB"))
    assert np.abs(first.astype(int) - palette).mean() < 5  # frame 0, not the inverted frame 1


def test_resize_eagerly_and_in_map():
    image = tf.constant(RGB)
    eager = image_io.resize_image(image, 71)
    mapped = in_map(lambda x: image_io.resize_image(x, 71), image)
    assert eager.shape == (71, 71, 3) and eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager, mapped)


def test_make_pipeline_batches_float_pixels_in_0_255():
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(np.stack([RGB] * 5)), tf.range(5, dtype=tf.int64)))
    batches = list(pipelines.make_pipeline(ds, lambda x: image_io.resize_image(x, 16), batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    images, labels = batches[0]
    assert images.dtype == tf.float32 and images.shape[1:] == (16, 16, 3)
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
    assert list(labels.numpy()) == [0, 1]


def test_training_pipeline_shuffles_deterministically_per_seed():
    ds = tf.data.Dataset.from_tensor_slices((tf.zeros((20, 4, 4, 3), tf.uint8), tf.range(20, dtype=tf.int64)))

    def order(seed):
        pipe = pipelines.make_pipeline(ds, lambda x: x, batch_size=20, shuffle_buffer=20, seed=seed)
        return list(next(iter(pipe))[1].numpy())

    assert order(1) == order(1)
    assert order(1) != list(range(20))
    assert sorted(order(1)) == list(range(20))


def noise_batch(n: int = 16, n_classes: int = 4) -> tuple[tf.Tensor, tf.Tensor]:
    """A training batch as the pipeline gives it: distinct float images in [0, 255], sparse labels."""
    images = np.random.default_rng(1).uniform(0, 255, (n, 24, 24, 3))
    return tf.constant(images, tf.float32), tf.range(n, dtype=tf.int64) % n_classes


@pytest.mark.parametrize("policy", ["basic", "randaugment", "basic+randaugment"])
def test_per_image_augmentation_changes_images_and_keeps_labels_eagerly_and_in_map(policy):
    images, labels = noise_batch()
    augment = pipelines.make_augmenter(policy, seed=42, n_classes=4)
    for x, y in (augment(images, labels), in_map(augment, (images, labels))):
        assert x.dtype == tf.float32 and x.shape == images.shape and not np.allclose(x, images)
        np.testing.assert_array_equal(y, labels)  # sparse, untouched: the loss stays sparse
    assert pipelines.make_augmenter("none", seed=42, n_classes=4) is None


@pytest.mark.parametrize("policy", ["mixup", "cutmix", "randaugment+mixup", "basic+cutmix"])
def test_mixing_gives_soft_one_hot_labels_eagerly_and_in_map(policy):
    images, labels = noise_batch()
    augment = pipelines.make_augmenter(policy, seed=42, n_classes=4)
    assert pipelines.mixes_labels(policy) and not pipelines.mixes_labels("basic+randaugment")
    for x, y in (augment(images, labels), in_map(augment, (images, labels))):
        assert x.dtype == tf.float32 and x.shape == images.shape and not np.allclose(x, images)
        y = y.numpy()
        assert y.dtype == np.float32 and y.shape == (16, 4)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
        assert (y >= 0).all() and ((y > 0).sum(axis=1) > 1).any()  # soft: some images are two classes
        assert ((y > 0).sum(axis=1) <= 2).all()  # two images mixed, no more


def test_split_files_is_stratified_deterministic_and_disjoint():
    files = [[f"c{c}/{i}.jpg" for i in range(40)] for c in range(3)]
    a = splitting.split_files(files, 10, 15, seed=7)
    assert a == splitting.split_files(files, 10, 15, seed=7)
    assert a != splitting.split_files(files, 10, 15, seed=8)
    assert {k: len(v) for k, v in a.items()} == {"test": 12, "valid": 18, "train": 90}
    for label in range(3):
        assert sum(1 for _, y in a["test"] if y == label) == 4
    everything = [p for split in a.values() for p, _ in split]
    assert sorted(everything) == sorted(p for c in files for p in c)


def test_list_image_folder_ignores_hidden_and_non_image_files(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=3)
    (root / "daisy" / ".hidden.jpg").write_bytes(b"x")
    (root / "daisy" / "notes.txt").write_text("x")
    (root / ".cache").mkdir()
    (root / "roses" / "more").mkdir()
    make_image_folder(root / "roses" / "more", classes=("x",), per_class=1, ext=".png")
    names, files = image_folders.list_image_folder(root)
    assert names == ["daisy", "dandelion", "roses"]
    assert [len(f) for f in files] == [3, 3, 4]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty", "has no class subfolders"),
        ("empty class", "has no images"),
        ("one class", "only one class"),
    ],
)
def test_bad_folders(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "empty class":
        make_image_folder(root, per_class=2)
        (root / "tulips").mkdir()
        (root / "tulips" / "readme.txt").write_text("x")
    elif layout == "one class":
        make_image_folder(root, classes=("daisy",), per_class=2)
    with pytest.raises(DataError, match=message):
        image_folders.list_image_folder(root)


def test_too_few_images_for_a_split(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=2)
    with pytest.raises(DataError, match="class daisy has 2 images, too few .*: 6 would do"):
        image_folders.load(make_config(data_dir=str(root)))


def test_a_class_too_small_for_every_split_is_refused_with_the_remedy(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=10)
    for extra in sorted((root / "roses").iterdir())[1:]:
        extra.unlink()  # roses keeps 1 image: it would land in train only, and evaluate would show support 0
    with pytest.raises(DataError, match="class roses has 1 image, too few .* add images to it or remove its folder"):
        image_folders.load(make_config(data_dir=str(root)))
    assert splitting.split_sizes(6, 10, 15) == (1, 1, 4) and splitting.split_sizes(5, 10, 15) == (1, 0, 4)


def test_folder_pipeline_reads_the_files(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=10, ext=".png")
    config = make_config(data_dir=str(root), image_size=71, batch_size=4)
    splits = sources.load(config)
    assert splits.sizes == {"train": 21, "valid": 6, "test": 3}
    images, labels = next(iter(pipelines.pipeline(splits, "valid", config)))
    assert images.shape == (4, 71, 71, 3)
    path, label = splits.files["valid"][0]
    expected = image_io.resize_image(tf.constant(np.asarray(Image.open(path).convert("RGB"))), 71)
    np.testing.assert_array_equal(images[0].numpy().astype("uint8"), expected)
    assert labels[0] == label


def test_tfds_slices_are_the_books():
    assert tfds_datasets.tfds_split_names(10, 15) == {"test": "train[:10%]", "valid": "train[10%:25%]", "train": "train[25%:]"}


def test_tfds_source_keeps_tfds_class_order(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(network, "check_online", lambda *a: None)  # mock_data makes the download a no-op
    config = make_config(tfds_data_dir=str(tmp_path), image_size=71, batch_size=3)
    with tfds.testing.mock_data(num_examples=6):
        splits = sources.load(config)
        images, labels = next(iter(pipelines.pipeline(splits, "train", config, training=True)))
    assert splits.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert splits.element == "image" and splits.files is None
    assert images.shape == (3, 71, 71, 3) and images.dtype == tf.float32


def test_tfds_download_fails_fast_and_names_the_offline_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_datasets, "TFDS_DOWNLOAD_HOST", ("127.0.0.1", closed_port()))
    start = time.monotonic()
    with pytest.raises(OfflineError) as error:
        sources.load(make_config(tfds_data_dir=str(tmp_path)))
    assert time.monotonic() - start < network.NETWORK_PROBE_SECONDS  # refused at once, not the probe's timeout
    assert "--data-dir" in str(error.value) and "--tfds-data-dir" in str(error.value)


def test_read_image_of_something_that_is_not_a_file_is_a_data_error(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(DataError, match="folder.jpg: cannot be read"):
        image_io.read_image(tmp_path / "folder.jpg", 32)


def test_a_host_that_never_answers_fails_after_the_probe_timeout(monkeypatch):
    # A listening socket whose one-slot accept queue is already full: the kernel drops the next
    # handshake, so the probe's connect waits for its timeout (the path a dead network takes),
    # unlike a closed port, which refuses at once.
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler.connect(server.getsockname())
        monkeypatch.setattr(network, "NETWORK_PROBE_SECONDS", 1.5)
        start = time.monotonic()
        with pytest.raises(OfflineError, match="timed out") as error:
            network.check_online(server.getsockname(), "tf_flowers", "work offline with --data-dir")
        waited = time.monotonic() - start
    assert 1.4 <= waited < 5, waited
    assert str(error.value).count("\n") == 0 and "--data-dir" in str(error.value)
