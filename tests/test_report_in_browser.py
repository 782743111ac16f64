"""The report in a real browser: headless Chromium renders it, every image loads, the numbers show."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
NO_CHROMIUM = "no Chromium to render the report in (Debian: apt-get install chromium)"


def require_chromium(found: str | None, environ=os.environ) -> None:
    """Skip without Chromium on a developer's machine; in CI (CI set) its absence fails the test."""
    if found is None:
        if environ.get("CI"):
            pytest.fail(f"CI is set but there is {NO_CHROMIUM}: CI must run the browser test", pytrace=False)
        pytest.skip(NO_CHROMIUM)


@pytest.fixture
def browser():
    require_chromium(CHROMIUM)
# Runs once the page and its images have loaded, and writes what each <img> did into the DOM,
# which --dump-dom prints. The report itself has no script; only this test's copy does.
CHECK = ('<script>addEventListener("load", () => document.body.dataset.images = JSON.stringify('
         '[...document.images].map(i => i.complete && i.naturalWidth > 0)))</script>')


def chromium(*args: str) -> str:
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def images_loaded(page: Path) -> list[bool]:
    checked = page.with_name("checked.html")
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", checked.as_uri())
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_report_renders_in_chromium_with_every_image_loaded(browser, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = CliRunner().invoke(app, ["report", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    page = run / "report.html"

    loaded = images_loaded(page)
    assert len(loaded) >= 5 and all(loaded), loaded  # curves, confusion matrix, one per class at least

    dom = chromium("--dump-dom", page.as_uri())
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert f"{evaluation['accuracy']:.1%}" in dom and "Training curves" in dom and "Mistakes" in dom

    shot = tmp_path / "report.png"
    chromium("--window-size=1200,2000", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20  # not a blank page: text, tables and plots
    assert (pixels < 80).mean() > 0.005  # dark text and lines are drawn


def test_the_image_check_catches_a_broken_image(browser, tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<html><body><img src="data:image/png;base64,iVBORw0KGgo="></body></html>')
    assert images_loaded(page) == [False]


def test_without_chromium_ci_fails_and_a_developer_skips():
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        require_chromium(None, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception):
        require_chromium(None, {})
    require_chromium("/usr/bin/chromium", {"CI": "true"})  # found: nothing to say
