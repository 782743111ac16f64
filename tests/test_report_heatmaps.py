"""The report's mistakes: each wrong prediction's Grad-CAM heatmap beside its plain thumbnail."""

import base64
import io
import re
import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app


def decoded(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


def test_each_wrong_prediction_has_its_heatmap_beside_the_thumbnail(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = CliRunner().invoke(app, ["report", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    mistakes = html.split("Most confident wrong predictions", 1)[1].split("Worst example of each class", 1)[0]
    pairs = re.findall(r'<figure class=pair><div><img src="([^"]+)" alt="[^"]*"><img src="([^"]+)" '
                       r'alt="Grad-CAM heatmap for ([^"]+)"></div><figcaption>true <b>[^<]+</b><br>'
                       r'<span class="bad">predicted <b>([^<]+)</b>', mistakes)
    shown = re.search(r"\((\d+) of the (\d+) wrong", mistakes)
    assert shown and int(shown[1]) > 0, "the tiny run made no mistake to show"
    assert len(pairs) == int(shown[1])  # every wrong prediction shown has its heatmap
    for thumbnail, heatmap, explained, predicted in pairs:
        assert explained == predicted
        plain, heated = decoded(thumbnail), decoded(heatmap)
        assert plain.shape == heated.shape and np.abs(plain - heated).mean() > 5  # the map is drawn over the photo
    worst = html.split("Worst example of each class", 1)[1].split("</section>", 1)[0]
    figures = re.findall(r"<figure.*?</figure>", worst)
    assert figures and all(("Grad-CAM heatmap" in f) == ('class="bad"' in f) for f in figures)  # right answers: one image
