"""flowerft report: one self-contained page per run, evaluated when needed, with missing parts marked."""

import json
import os
import re
import shutil
from html.parser import HTMLParser

import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from flowerft.cli import app

runner = CliRunner()


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The session's trained run, copied: a report writes into its run dir."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    for name in ("evaluation.json", "predictions.json", "confusion_matrix.png", "report.html"):
        (copy / name).unlink(missing_ok=True)  # as training left it
    return copy


class Page(HTMLParser):
    """What a browser would fetch (every src and href) and the visible text."""

    def __init__(self, html: str):
        super().__init__()
        self.sources, self.text = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [(tag, attrs[key]) for key in ("src", "href") if key in attrs]

    def handle_data(self, data):
        self.text.append(data)


def report(run_dir):
    result = runner.invoke(app, ["report", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result, (run_dir / "report.html").read_text()


def test_report_evaluates_first_and_embeds_everything(run_copy):
    result, html = report(run_copy)
    assert "evaluating" in result.output  # evaluation.json was missing
    evaluation = json.loads((run_copy / "evaluation.json").read_text())
    predictions = json.loads((run_copy / "predictions.json").read_text())
    assert predictions["labels"] == [0, 1, 2] and len(predictions["probabilities"]) == evaluation["examples"]
    assert (run_copy / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = Page(html)
    text = " ".join(page.text)
    # Self-contained: every image is inline; nothing is fetched from anywhere, no script.
    images = [src for tag, src in page.sources if tag == "img"]
    assert page.sources and all(src.startswith("data:image/") for _, src in page.sources)
    assert "<script" not in html.lower()
    assert f"{evaluation['accuracy']:.1%}" in text and f"{evaluation['top2_accuracy']:.1%}" in text
    # the cards: test accuracy, balanced accuracy, macro F1, top-2 accuracy, each with its figure
    assert (f"{evaluation['accuracy']:.1%} test accuracy {evaluation['balanced_accuracy']:.1%} test balanced accuracy "
            f"{evaluation['macro_f1']:.3f} test macro F1 {evaluation['top2_accuracy']:.1%} test top-2 accuracy") in text
    assert "balanced accuracy macro F1" in text and f"{evaluation['macro_f1']:.4f}" in text  # the evaluation's table
    for name in evaluation["class_names"]:
        assert name in text
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["environment"]["tensorflow"] in text and metrics["environment"]["keras"] in text
    assert f"{metrics['best_val_accuracy']:.1%}" in text
    # curves + confusion matrix + one thumbnail per wrong prediction (all fit in the grid) + one per class,
    # and a heatmap beside each wrong one (test_report_heatmaps.py)
    wrong = evaluation["examples"] - sum(row[i] for i, row in enumerate(evaluation["confusion_matrix"]))
    heatmaps = html.count('alt="Grad-CAM heatmap for')
    assert heatmaps >= wrong and len(images) == 2 + wrong + 3 + heatmaps
    assert "Missing:" not in text


def test_report_evaluates_again_when_the_checkpoint_is_newer_and_opens_the_page(run_copy, monkeypatch):
    report(run_copy)
    evaluated = (run_copy / "evaluation.json").stat().st_mtime
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    result = runner.invoke(app, ["report", "--run-dir", str(run_copy), "--open"])
    assert result.exit_code == 0 and opened == [(run_copy / "report.html").resolve().as_uri()]
    assert "evaluating" not in result.output and (run_copy / "evaluation.json").stat().st_mtime == evaluated
    older = json.loads((run_copy / "evaluation.json").read_text())
    del older["balanced_accuracy"], older["macro_f1"]
    (run_copy / "evaluation.json").write_text(json.dumps(older))  # as flowerft wrote it before these scores
    result, _ = report(run_copy)
    assert "evaluating" in result.output and "balanced_accuracy" in (run_copy / "evaluation.json").read_text()
    evaluated = (run_copy / "evaluation.json").stat().st_mtime
    monkeypatch.setattr("webbrowser.open", lambda uri: False)  # no browser (a server, say)
    result = runner.invoke(app, ["report", "--run-dir", str(run_copy), "--open"])
    assert result.exit_code == 0 and "no browser found" in result.output
    metrics = json.loads((run_copy / "metrics.json").read_text())
    os.utime(run_copy / metrics["best_checkpoint"], (evaluated + 10, evaluated + 10))
    result, _ = report(run_copy)
    assert "evaluating" in result.output


def test_a_run_dir_missing_files_gives_a_report_with_those_parts_marked(run_copy):
    for name in ("metrics.json", "history.json", "history_head.csv", "history_finetune.csv", "class_names.json"):
        (run_copy / name).unlink()
    _, html = report(run_copy)
    text = " ".join(Page(html).text)
    assert "Missing: no epoch has finished yet" in text
    assert "Missing: the run did not finish: there is no best checkpoint" in text
    assert "Missing: needs the evaluation" in text
    assert "missing (no class_names.json)" in text
    assert "xception" in text  # the rest is there


def test_moved_test_images_leave_the_evaluation_missing_not_a_crash(run_copy, tmp_path):
    splits = json.loads((run_copy / "splits.json").read_text())
    splits["test"] = [[str(tmp_path / "gone.jpg"), 0]] + splits["test"][1:]
    (run_copy / "splits.json").write_text(json.dumps(splits))
    (run_copy / "skipped_files.json").write_text(json.dumps(["/data/flowers/roses/empty.jpg"]))
    result = runner.invoke(app, ["report", "--run-dir", str(run_copy)])
    # The page is still written, but the terminal says the evaluation failed, and the exit code too.
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Error: the evaluation failed" in result.output and "gone.jpg" in result.output
    assert f"Written: {run_copy / 'report.html'}" in result.output
    html = (run_copy / "report.html").read_text()
    text = " ".join(Page(html).text)
    assert "Missing: could not evaluate:" in text and "gone.jpg" in text
    assert "1 file of the data folder left out of every split, not readable as images: /data/flowers/roses/empty.jpg" in text
    assert "Training curves" in text and "Missing: no epoch" not in text


def test_report_errors(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "config.yaml").write_text("name: holiday\n")
    assert "is not a flowerft run" in one_line_error(runner.invoke(app, ["report", "--run-dir", str(tmp_path / "photos")]))
    monkeypatch.chdir(tmp_path)
    assert "no run found" in one_line_error(runner.invoke(app, ["report"]))


def test_train_leaves_the_curves_to_report(trained_run):
    # Drawing them is report work (2-3 s of matplotlib): `report` draws them (test above).
    assert not (trained_run / "curves.png").exists() and (trained_run / "history.json").is_file()


def test_report_of_a_tfds_run_shows_the_test_images_from_the_dataset(run_copy, tmp_path, monkeypatch):
    """A TFDS run has no files to show: the report takes each image from the recorded test split."""
    import tensorflow_datasets as tfds
    import yaml

    from flowerft.data import network

    monkeypatch.setattr(network, "check_online", lambda *a: None)  # mock_data makes the download a no-op
    report(run_copy)  # evaluated as a folder run; now make it the TFDS run it could have been
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config | {"data_dir": None, "tfds_data_dir": str(tmp_path / "tfds")}))
    (run_copy / "splits.json").unlink()
    predictions = json.loads((run_copy / "predictions.json").read_text())
    (run_copy / "predictions.json").write_text(json.dumps(predictions | {"paths": None}))
    with tfds.testing.mock_data(num_examples=5):
        result, html = report(run_copy)
    assert "evaluating" not in result.output  # the images come from the dataset, not a new evaluation
    thumbnails = [src for tag, src in Page(html).sources if tag == "img" and src.startswith("data:image/jpeg")]
    assert re.search(r"test image #\d+", html) and "image file missing" not in html
    # every example shown, each class's worst at least; a wrong one with its heatmap beside it
    assert len(thumbnails) == html.count("<figure") + html.count('alt="Grad-CAM heatmap for') >= 3
