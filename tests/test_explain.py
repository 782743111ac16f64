"""flowerft explain: one PNG per image with the photo, its Grad-CAM heatmap and the top-k."""

import json

from helpers import one_line_error
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app

runner = CliRunner()


def test_explain_writes_one_png_per_image_and_json(trained_run, tmp_path):
    tests = [p for p, _ in json.loads((trained_run / "splits.json").read_text())["test"]][:2]
    result = runner.invoke(app, ["explain", *tests, "--run-dir", str(trained_run), "--output", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [e["path"] for e in shown] == tests
    names = json.loads((trained_run / "class_names.json").read_text())
    for e, path in zip(shown, tests):
        assert e["class"] == e["top_k"][0]["label"] and len(e["top_k"]) == 3
        assert {r["label"] for r in e["top_k"]} == set(names)
        width, height = Image.open(path).size
        assert 0 <= e["peak"]["x"] < width and 0 <= e["peak"]["y"] < height
        assert 0 < e["peak"]["x_fraction"] < 1 and 0 < e["peak"]["y_fraction"] < 1
        with Image.open(e["png"]) as png:
            assert png.format == "PNG" and png.size[0] > 400


def test_explain_another_class_and_a_keras_file(trained_run, tmp_path):
    image = json.loads((trained_run / "splits.json").read_text())["test"][0][0]
    checkpoint = trained_run / json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    result = runner.invoke(app, ["explain", image, "--model", str(checkpoint), "--class", "roses", "--json",
                                 "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["class"] == "roses"  # names found in the run dir above checkpoints/


def test_explain_bad_inputs(trained_run, tmp_path):
    image = json.loads((trained_run / "splits.json").read_text())["test"][0][0]
    line = one_line_error(runner.invoke(app, ["explain", image, "--run-dir", str(trained_run), "--class", "tulips"]))
    assert "tulips" in line and "daisy" in line
    line = one_line_error(runner.invoke(app, ["explain", image, "--model", str(tmp_path / "none.keras")]))
    assert ".keras" in line
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    result = runner.invoke(app, ["explain", image, str(tmp_path / "broken.jpg"), "--run-dir", str(trained_run),
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "broken.jpg" in result.output and "Traceback" not in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{image.rsplit('/', 1)[1].rsplit('.', 1)[0]}_gradcam.png"]
