"""flowerft predict: same pixels as evaluation, unusual images work, broken ones are named."""

import io
import json

import numpy as np
import pytest
from helpers import make_image_folder, tiny_base_under_head
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.data import image_io, pipelines, sources
from flowerft.runs import loader
from flowerft.serving import predict

runner = CliRunner()
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (50, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sensitive_run(tmp_path_factory):
    """A run whose outputs follow its inputs: helpers' tiny base, trained 2 + 2 epochs.

    trained_run's random Xception maps every image to nearly the same probabilities, so any
    preprocessing would match its evaluation to 1e-6.
    """
    root = tmp_path_factory.mktemp("sensitive")
    folder = make_image_folder(root / "flowers", per_class=12)
    with tiny_base_under_head():
        result = runner.invoke(app, [
            "train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
            "--batch-size", "4", "--epochs-head", "2", "--epochs-finetune", "2", "--run-dir", str(root / "run"),
        ])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_predicting_a_file_matches_the_model_on_the_evaluation_pipeline(sensitive_run):
    config = loader.run_config(sensitive_run)
    splits = sources.load_recorded(sensitive_run, config)
    model = loader.load_model(loader.checkpoint_path(sensitive_run, "best"))
    images, _ = next(iter(pipelines.pipeline(splits, "test", config)))
    expected = model.predict_on_batch(images)
    # The outputs move with the pixels: 20% darker images, or another split's images, change them by far more than 1e-6.
    assert np.abs(model.predict_on_batch(images * 0.8) - expected).max() > 1e-2
    assert np.abs(expected - expected[::-1]).max() > 1e-2
    paths = [p for p, _ in splits.files["test"]]
    predictions, failures = predict.run(paths, run_dir=sensitive_run, k=3)
    assert not failures and [p.path for p in predictions] == paths
    names = splits.class_names
    for prediction, row in zip(predictions, expected, strict=True):
        got = np.zeros(len(names))
        for entry in prediction.top_k:
            got[names.index(entry["label"])] = entry["probability"]
        np.testing.assert_allclose(got, row, rtol=0, atol=1e-6)


def unusual_images(folder):
    def save(name, image, **kw):
        image.save(folder / name, **kw)

    save("gray.png", Image.fromarray(RGB[..., 0]))
    save("rgba.png", Image.fromarray(np.dstack([RGB, RGB[..., :1]])))
    save("palette.png", Image.fromarray(RGB).convert("P"))
    save("gray16.png", Image.fromarray(RGB[..., 0].astype(np.uint16) * 257))
    save("cmyk.jpg", Image.fromarray(RGB).convert("CMYK"))
    save("animated.gif", Image.fromarray(RGB).convert("P"), save_all=True,
         append_images=[Image.fromarray(255 - RGB).convert("P")])
    save("picture.bmp", Image.fromarray(RGB))
    save("png_named.jpg", Image.fromarray(RGB), format="PNG")
    save("one_pixel.png", Image.fromarray(RGB[:1, :1]))
    save("picture.webp", Image.fromarray(RGB))
    gradient = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4000, 0).repeat(3, 2)
    save("huge.jpg", Image.fromarray(gradient), quality=70)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK" and Image.open(folder / "gray16.png").mode.startswith("I")
    return sorted(folder.iterdir())


def test_unusual_but_valid_images_are_predicted(trained_run, tmp_path):
    files = unusual_images(tmp_path)
    result = runner.invoke(app, ["predict", str(tmp_path), "--run-dir", str(trained_run), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [entry["path"] for entry in out] == [str(f) for f in files]  # a folder expands sorted
    for entry in out:
        assert [set(t) for t in entry["top_k"]] == [{"label", "probability"}] * 2
        assert entry["top_k"][0]["probability"] >= entry["top_k"][1]["probability"]
        assert entry["top_k"][0]["label"] in ("daisy", "dandelion", "roses")


def test_decoding_keeps_the_first_gif_frame_and_scales_16_bit(tmp_path):
    unusual_images(tmp_path)
    first = image_io.read_image(tmp_path / "animated.gif", 40).numpy()
    assert np.abs(first.astype(int) - image_io.read_image(tmp_path / "palette.png", 40).numpy()).mean() < 3
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "gray16.png", 40), image_io.read_image(tmp_path / "gray.png", 40))


def broken_inputs(folder):
    (folder / "empty_dir").mkdir()
    (folder / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is not an image")
    return {
        str(folder / "missing.jpg"): "no such file or folder",
        str(folder / "empty_dir"): "folder has no images",
        str(folder / "zero.jpg"): "the file is empty",
        str(folder / "truncated.jpg"): "corrupt or truncated",
        str(folder / "text.jpg"): "not an image",
    }


def test_broken_inputs_are_named_and_good_ones_still_predicted(trained_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(RGB).save(good)
    broken = broken_inputs(tmp_path)
    result = runner.invoke(app, ["predict", str(good), *broken, "--run-dir", str(trained_run), "--json"])
    assert result.exit_code == 1
    assert [e["path"] for e in json.loads(result.stdout)] == [str(good)]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(broken) and "Traceback" not in result.output
    for line, (path, message) in zip(errors, broken.items()):
        assert line.startswith(f"Error: {path}") and message in line


def test_table_output_and_each_broken_input_alone(trained_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(RGB).save(good)
    result = runner.invoke(app, ["predict", str(good), "--run-dir", str(trained_run)])
    assert result.exit_code == 0 and "Predictions" in result.stdout and "#3" in result.stdout
    for path, message in broken_inputs(tmp_path).items():
        result = runner.invoke(app, ["predict", path, "--run-dir", str(trained_run)])
        assert result.exit_code == 1 and message in result.stderr and result.stdout == ""


def test_top_k_is_capped_by_the_classes_and_must_be_positive(trained_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(RGB).save(good)
    predictions, _ = predict.run([good], run_dir=trained_run, k=10)
    assert len(predictions[0].top_k) == 3
    assert sum(t["probability"] for t in predictions[0].top_k) == pytest.approx(1.0, abs=1e-5)
    result = runner.invoke(app, ["predict", str(good), "--run-dir", str(trained_run), "--top-k", "0"])
    assert result.exit_code == 1 and "top-k must be 1 or more" in result.stderr
