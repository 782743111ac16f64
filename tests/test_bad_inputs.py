"""The bad-input corpus: each gets one line saying what is wrong, exit code 1, no traceback.

Every case fails before any training, so the whole corpus runs in seconds.
"""

import json
import shutil

import keras
import pytest
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app

runner = CliRunner()
TRAIN = ["train", "--weights", "none", "--image-size", "71"]


def folder(tmp, **kw):
    return str(make_image_folder(tmp / "flowers", **kw))


def weights_of_another_network(tmp):
    other = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp / "mobilenet_notop.weights.h5"
    other.save_weights(path)
    return str(path)


def yaml_file(tmp, text):
    path = tmp / "config.yaml"
    path.write_text(text)
    return str(path)


def run_copy(tmp, trained_run, break_it):
    run = tmp / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("tensorboard"))
    break_it(run)
    return str(run)


def lambda_model(run):
    inputs = keras.Input((71, 71, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Lambda(lambda x: x[:, 0, 0, :] / 255.0)(inputs))
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    keras.Model(inputs, outputs).save(run / best)


def repoint_a_test_file(tmp, run, contents):
    """Make splits.json's first test file one that is missing (None) or holds `contents`."""
    splits = json.loads((run / "splits.json").read_text())
    target = tmp / "moved.jpg"
    if contents is not None:
        target.write_bytes(contents)
    splits["test"][0][0] = str(target)
    (run / "splits.json").write_text(json.dumps(splits))


CASES = {
    # --- train ---
    "missing data dir": (lambda t, r: [*TRAIN, "--data-dir", str(t / "nope")], "does not exist"),
    "empty data dir": (lambda t, r: [*TRAIN, "--data-dir", str((t / "e").mkdir() or t / "e")], "has no class subfolders"),
    "single-class folder": (lambda t, r: [*TRAIN, "--data-dir", folder(t, classes=("daisy",))], "only one class"),
    "class folder without images": (
        lambda t, r: [*TRAIN, "--data-dir", folder(t) if (t / "flowers" / "tulips").mkdir(parents=True) is None else ""],
        "tulips has no images"),
    "class of corrupt images only": (
        lambda t, r: [*TRAIN, "--data-dir", folder(t) if [(t / "flowers" / "tulips").mkdir(parents=True),
                                                          (t / "flowers" / "tulips" / "a.jpg").write_text("text")] else ""],
        "tulips has no readable images"),
    "unknown backbone": (lambda t, r: [*TRAIN, "--backbone", "vgg99"], "backbone: unknown backbone 'vgg99'"),
    "weights file that is not weights": (
        lambda t, r: [*TRAIN, "--data-dir", folder(t), "--weights", str((t / "w.h5").write_text("x") and t / "w.h5")],
        "does not hold Xception weights"),
    "weights of another architecture": (
        lambda t, r: [*TRAIN, "--data-dir", folder(t), "--weights", weights_of_another_network(t)],
        "does not hold Xception weights"),
    "image size below the minimum": (lambda t, r: ["train", "--image-size", "64"], "image_size: must be at least 71"),
    "negative epochs": (lambda t, r: [*TRAIN, "--epochs-finetune", "-2"], "epochs_finetune: must be 0 or more"),
    "unknown config key": (lambda t, r: [*TRAIN, "--config", yaml_file(t, "learning_rate: 0.1\n")],
                           "learning_rate: unknown config key"),
    "config value of the wrong type": (lambda t, r: [*TRAIN, "--config", yaml_file(t, "batch_size: big\n")],
                                       "batch_size: expected int"),
    "unwritable run dir": (
        lambda t, r: [*TRAIN, "--run-dir", str((t / "f").write_text("x") and t / "f" / "run")], "cannot write to run dir"),
    "resume without a run": (lambda t, r: [*TRAIN, "--resume"], "no run found (runs/latest is missing)"),
    "resume and overwrite at once": (lambda t, r: [*TRAIN, "--resume", "--overwrite"],
                                     "--resume continues the run in --run-dir and --overwrite replaces it"),
    "an image folder and a TFDS folder at once": (
        lambda t, r: [*TRAIN, "--data-dir", str(t), "--tfds-data-dir", str(t)], "tfds_data_dir: cannot be given with data_dir"),
    "resume a run that lost its state": (
        lambda t, r: [*TRAIN, "--resume", "--run-dir", str(shutil.copytree(r, t / "lost", ignore=shutil.ignore_patterns(
            "metrics.json")))], "holds no saved training state to resume"),
    # --- evaluate ---
    "evaluate a folder that is not a run": (lambda t, r: ["evaluate", "--run-dir", str(t)], "holds no config.yaml"),
    "run dir with no model": (
        lambda t, r: ["evaluate", "--run-dir", run_copy(t, r, lambda d: (d / "metrics.json").unlink())],
        "has no metrics.json"),
    "a .keras file that is not a model": (
        lambda t, r: ["evaluate", "--run-dir", run_copy(t, r, lambda d: (d / "checkpoints" / "final.keras").write_text("x")),
                      "--checkpoint", "final"],
        "is not a loadable Keras model"),
    "a model with code in it (safe mode)": (
        lambda t, r: ["evaluate", "--run-dir", run_copy(t, r, lambda_model)], "is not a loadable Keras model"),
    "evaluate after a test image went missing": (
        lambda t, r: ["evaluate", "--run-dir", run_copy(t, r, lambda d: repoint_a_test_file(t, d, None))],
        "test files recorded in"),
    "evaluate after a test image was overwritten": (
        lambda t, r: ["evaluate", "--run-dir", run_copy(t, r, lambda d: repoint_a_test_file(t, d, b"not a jpeg"))],
        "are no longer readable images"),
    # --- predict ---
    "predict a missing image": (lambda t, r: ["predict", str(t / "nope.jpg"), "--run-dir", str(r)], "no such file"),
    "predict a zero-byte image": (
        lambda t, r: ["predict", str((t / "z.jpg").write_bytes(b"") or t / "z.jpg"), "--run-dir", str(r)],
        "the file is empty"),
    "predict an empty folder": (lambda t, r: ["predict", str((t / "e").mkdir() or t / "e"), "--run-dir", str(r)],
                                "folder has no images"),
    "predict with a run dir that does not exist": (
        lambda t, r: ["predict", "x.jpg", "--run-dir", str(t / "nope")], "does not exist"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case, tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that nothing lands in the repository's runs/
    make_args, message = CASES[case]
    line = one_line_error(runner.invoke(app, make_args(tmp_path, trained_run)))
    assert message in line, line


def test_the_corpus_covers_every_command_that_reads_user_input(tmp_path):
    run = tmp_path / "run"  # just what the cases' breakages touch, instead of a trained run's copies
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "checkpoints/final.keras"}))
    (run / "splits.json").write_text(json.dumps({"test": [["a.jpg", 0]]}))
    commands = {}
    for number, (make_args, _) in enumerate(CASES.values()):
        (tmp_path / str(number)).mkdir()
        commands.setdefault(make_args(tmp_path / str(number), run)[0], []).append(number)
    assert {command: len(cases) >= 4 for command, cases in commands.items()} == dict.fromkeys(
        ("train", "evaluate", "predict"), True)


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "x.jpg"]])
def test_ctrl_c_in_evaluate_or_predict_is_one_line_and_exit_130(command, trained_run, monkeypatch):
    from flowerft.reporting import evaluate
    from flowerft.serving import predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate if command[0] == "evaluate" else predict, "run", interrupted)
    result = runner.invoke(app, [*command, "--run-dir", str(trained_run)])
    assert one_line_error(result, code=130) == "Error: interrupted"


def test_multiworker_on_an_untested_keras_is_one_line_before_any_internal_is_patched(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    from flowerft.errors import FlowerftError
    from flowerft.training import distribute

    patched_before = trainer.reduce_per_replica
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    with pytest.raises(FlowerftError) as raised:
        distribute.make_strategy("multiworker")
    assert str(raised.value).startswith("--distribute multiworker works around Keras bugs in its internals, tested "
                                        "with keras>=3.15,<3.16 only, and this is Keras 3.16.0: pip install")
    assert "\n" not in str(raised.value) and trainer.reduce_per_replica is patched_before
