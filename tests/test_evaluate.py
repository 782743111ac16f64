"""flowerft evaluate: the report's math, the files it writes, and its errors."""

import json
import shutil
import warnings

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
    assert r["balanced_accuracy"] == pytest.approx(r["macro_avg"]["recall"])  # every class is in the labels
    assert r["macro_f1"] == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3) == r["macro_avg"]["f1-score"]


def one_hot(predicted, n=3):
    return np.eye(n, dtype="float32")[predicted] * 0.8 + 0.2 / n


def test_balanced_accuracy_and_macro_f1_see_the_rare_classes_accuracy_hides():
    labels = np.array([0] * 6 + [1, 1, 2, 2])
    predicted = [0] * 6 + [1, 0, 0, 2]  # the common class all right, each rare one half
    r = evaluate.scores(one_hot(predicted), labels, ["common", "rare1", "rare2"])
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    # F1 per class: common 2 * 0.75 * 1 / 1.75, each rare one 2 * 1 * 0.5 / 1.5
    assert r["macro_f1"] == pytest.approx((6 / 7 + 2 / 3 + 2 / 3) / 3)


def test_a_class_missing_from_the_labels_leaves_balanced_accuracy_over_those_present_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "y_pred contains classes not in y_true" is not printed
        r = evaluate.scores(one_hot([0, 2, 1]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 1) / 2)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # c: predicted once, never true: F1 0


def test_top2_catches_a_miss():
    r = evaluate.scores(np.array([[0.1, 0.2, 0.7]], "float32"), np.array([0]), ["a", "b", "c"])
    assert r["top2_accuracy"] == 0.0 and r["accuracy"] == 0.0


def test_flip_tta_is_the_mean_of_the_model_on_the_images_and_on_their_mirrors():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input((2, 4, 3))  # a dense layer over every pixel: a mirror image is another input to it
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(0).uniform(0, 255, (5, 2, 4, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 2, 0, 1]))).batch(2)  # a short last batch

    plain, _ = evaluate.predict_dataset(model, ds)
    tta, labels = evaluate.predict_dataset(model, ds, tta="flip")
    mirrored = model.predict_on_batch(images[:, :, ::-1, :].copy())  # columns right to left
    np.testing.assert_allclose(plain, model.predict_on_batch(images), atol=1e-6)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(tta - plain).max() > 0.01 and labels.tolist() == [0, 1, 2, 0, 1]  # the flip mattered
    np.testing.assert_array_equal(evaluate.predict_dataset(model, ds, tta="flip")[0], tta)  # no randomness
    assert evaluate.output_names("valid", "final", "flip") == (
        "evaluation_valid_final_tta.json", "confusion_matrix_valid_final_tta.png", "predictions_valid_final_tta.json")


def test_evaluate_tta_writes_its_own_files_beside_the_plain_ones(trained_run):
    assert "--tta" in runner.invoke(app, ["evaluate", "--help"]).output
    assert runner.invoke(app, ["evaluate", "--run-dir", str(trained_run)]).exit_code == 0
    plain = (trained_run / "evaluation.json").read_bytes()
    result = runner.invoke(app, ["evaluate", "--run-dir", str(trained_run), "--tta", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((trained_run / "evaluation_tta.json").read_text()) and printed["tta"] == "flip"
    assert (trained_run / "evaluation.json").read_bytes() == plain and json.loads(plain)["tta"] is None
    assert (trained_run / "confusion_matrix_tta.png").is_file()
    # By hand: the checkpoint on the test pipeline's images and on the same images mirrored.
    from flowerft.data import pipelines, sources
    from flowerft.runs import loader

    config = loader.run_config(trained_run)
    model = loader.load_model(trained_run / printed["checkpoint"])
    test = pipelines.pipeline(sources.load_recorded(trained_run, config, ("test",)), "test", config)
    images = np.concatenate([x for x, _ in test.as_numpy_iterator()])
    expected = (model.predict_on_batch(images) + model.predict_on_batch(images[:, :, ::-1, :].copy())) / 2
    predictions = json.loads((trained_run / "predictions_tta.json").read_text())
    np.testing.assert_allclose(predictions["probabilities"], expected, atol=1e-5)
    assert printed["accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == predictions["labels"]))


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
    for title in ("Per class", "Confusion matrix", "balanced accuracy", "macro F1", "top-2 accuracy", "macro avg", "weighted avg"):
        assert title in result.output
    report = json.loads((trained_run / "evaluation_valid_final.json").read_text())
    assert report["examples"] == 6 and report["checkpoint"] == "checkpoints/final.keras"
    summary = next(line for line in result.output.splitlines() if f"{report['accuracy']:.1%}" in line)
    assert f"{report['balanced_accuracy']:.1%}" in summary and f"{report['macro_f1']:.4f}" in summary
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
