"""flowerft evaluate: the report's math, the files it writes, and its errors."""

import json
import shutil

import numpy as np
import pytest
from helpers import error_of
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.reporting import evaluate

runner = CliRunner()


def test_report_on_a_known_confusion_matrix():
    labels = np.array([0, 0, 1, 1, 2, 2])
    # predicted: 0, 1, 1, 1, 2, 0
    probabilities = np.array([
        [0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4],
    ], dtype="float32")
    r = evaluate.scores(probabilities, labels, ["a", "b", "c"])
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["examples"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["top2_accuracy"] == pytest.approx(6 / 6)  # every true class is in the top two
    expected_loss = -np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.7, 0.4]))
    assert r["loss"] == pytest.approx(expected_loss, rel=1e-5)
    a, b, c = (r["per_class"][n] for n in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert (c["precision"], c["recall"], c["f1-score"]) == (pytest.approx(1.0), pytest.approx(0.5), pytest.approx(2 / 3))
    assert r["macro_avg"]["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_top2_catches_a_miss():
    r = evaluate.scores(np.array([[0.1, 0.2, 0.7]], "float32"), np.array([0]), ["a", "b", "c"])
    assert r["top2_accuracy"] == 0.0 and r["accuracy"] == 0.0


def test_evaluate_json_is_the_written_report(trained_run):
    result = runner.invoke(app, ["evaluate", "--run-dir", str(trained_run), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((trained_run / "evaluation.json").read_text())
    assert printed["split"] == "test" and printed["examples"] == 3
    assert printed["class_names"] == ["daisy", "dandelion", "roses"]
    assert sum(map(sum, printed["confusion_matrix"])) == 3
    assert set(printed["per_class"]) == {"daisy", "dandelion", "roses"}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert printed["checkpoint"] == metrics["best_checkpoint"]
    assert (trained_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_arguments_uses_the_latest_run(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent)  # runs/latest -> runs/first
    result = runner.invoke(app, ["evaluate", "--split", "valid", "--checkpoint", "final"])
    assert result.exit_code == 0, result.output
    for title in ("Per class", "Confusion matrix", "top-2 accuracy", "macro avg", "weighted avg"):
        assert title in result.output
    report = json.loads((trained_run / "evaluation_valid_final.json").read_text())
    assert report["examples"] == 6 and report["checkpoint"] == "checkpoints/final.keras"
    assert (trained_run / "confusion_matrix_valid_final.png").is_file()


def test_evaluate_errors(tmp_path, trained_run, monkeypatch):
    assert "does not exist" in error_of(["evaluate", "--run-dir", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "holds no config.yaml" in error_of(["evaluate", "--run-dir", str(tmp_path / "empty")])
    monkeypatch.chdir(tmp_path)
    assert "no run found" in error_of(["evaluate"])
    assert "split must be one of test, valid" in error_of(["evaluate", "--run-dir", str(trained_run), "--split", "train"])
    assert "checkpoint must be one of best, final" in error_of(["evaluate", "--run-dir", str(trained_run), "--checkpoint", "x"])


def test_run_without_a_model_and_a_keras_file_that_is_not_a_model(tmp_path, trained_run):
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns("*.keras", "tensorboard"))
    (broken / "metrics.json").unlink()
    assert "has no metrics.json" in error_of(["evaluate", "--run-dir", str(broken)])
    shutil.copy(trained_run / "metrics.json", broken / "metrics.json")
    assert "is missing" in error_of(["evaluate", "--run-dir", str(broken)])
    best = json.loads((broken / "metrics.json").read_text())["best_checkpoint"]
    (broken / best).write_text("not a zip file")
    assert "is not a loadable Keras model" in error_of(["evaluate", "--run-dir", str(broken)])
