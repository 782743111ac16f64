"""Nothing lost: SIGKILL and Ctrl-C during fine-tuning, then --resume; run dirs are not overwritten."""

import csv
import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config import DEFAULTS, to_dict
from flowerft.config_files import make_config
from flowerft.errors import FlowerftError
from flowerft.runs import layout
from flowerft.training import checkpoints
from flowerft.training.callbacks import BestCheckpoint, DivergenceGuard
from flowerft.training.recipe import Schedule, Setup, fit_phase
from flowerft.training.session import resumed_config

runner = CliRunner()
EPOCHS_HEAD, EPOCHS_FINETUNE = 2, 6


def train_args(folder, run):
    return ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
            "--batch-size", "4", "--epochs-head", str(EPOCHS_HEAD), "--epochs-finetune", str(EPOCHS_FINETUNE),
            "--run-dir", str(run)]


def start_and_stop_in_fine_tuning(tmp_path, sig):
    """Run `flowerft train` in a subprocess and send `sig` once a fine-tune epoch has finished."""
    folder = make_image_folder(tmp_path / "flowers", per_class=10)
    run = tmp_path / "run"
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt: give the child Ctrl-C's default, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "flowerft", *train_args(folder, run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = run / "state" / "progress.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file():
            p = json.loads(progress.read_text())  # written atomically: always whole
            if p["phase"] == "finetune" and p["epochs_done"] >= 1:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be stopped: {proc.stderr.read()}"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return folder, run, proc


def check_finished_run(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases"]["head"]["epochs_run"] == EPOCHS_HEAD
    assert metrics["phases"]["finetune"]["epochs_run"] == EPOCHS_FINETUNE
    history = json.loads((run / "history.json").read_text())
    expected = [("head", e) for e in range(1, EPOCHS_HEAD + 1)] + \
        [("finetune", e) for e in range(EPOCHS_HEAD + 1, EPOCHS_HEAD + EPOCHS_FINETUNE + 1)]
    assert [(r["phase"], r["epoch"]) for r in history] == expected  # continuous, nothing run twice
    for phase in ("head", "finetune"):
        with open(run / f"history_{phase}.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == [e for p, e in expected if p == phase]
    yaml.safe_load((run / "config.yaml").read_text())
    json.loads((run / "class_names.json").read_text())
    for checkpoint in (run / "checkpoints").iterdir():
        keras.saving.load_model(checkpoint, safe_mode=True)
    assert (run / metrics["best_checkpoint"]).is_file()
    assert not (run / "state").exists() and not list(run.rglob(".tmp*")) and not list(run.rglob("*.tmp"))
    return metrics


def test_sigkill_during_fine_tuning_then_resume(tmp_path):
    folder, run, proc = start_and_stop_in_fine_tuning(tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    progress = json.loads((run / "state" / "progress.json").read_text())
    # What a kill during a file cache's first pass leaves: a lock that fails the next pass.
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "cache": "file"}))
    (run / "cache").mkdir()
    (run / "cache" / "train_0.lockfile").write_text("")
    # What a kill inside layout.write_atomic leaves: a temporary file never renamed into place.
    (run / ".history_finetune.csv.k1ll3d.tmp").write_text("half a CSV")
    (run / "state" / ".progress.json.k1ll3d.tmp").write_text("{")

    result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert f"from finetune epoch {progress['epochs_done'] + 1}" in result.output
    check_finished_run(run)  # the best checkpoint across a resume: tests/test_exact_resume.py


def test_ctrl_c_saves_state_and_says_how_to_resume(tmp_path, monkeypatch):
    folder, run, proc = start_and_stop_in_fine_tuning(tmp_path, signal.SIGINT)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"flowerft train --resume --run-dir {run}" in stderr
    message = one_line_error(runner.invoke(app, ["train", "--resume", "--run-dir", str(run), "--epochs-head", "9"]))
    assert "was trained with epochs_head=2, not 9" in message
    monkeypatch.chdir(tmp_path)
    # The same command again, with --resume.
    result = runner.invoke(app, [*train_args(folder, run), "--resume"])
    assert result.exit_code == 0, result.output
    check_finished_run(run)
    again = runner.invoke(app, ["train", "--resume", "--run-dir", str(run)])
    assert again.exit_code == 0 and "finished training already; nothing to resume" in again.output
    message = one_line_error(runner.invoke(app, train_args(folder, run)))
    assert "already holds a run; add --resume to continue it, --overwrite to replace it" in message


def test_check_new_refuses_to_replace_a_run_or_a_foreign_folder(tmp_path):
    layout.check_new(tmp_path / "missing", overwrite=False)
    (tmp_path / "empty").mkdir()
    layout.check_new(tmp_path / "empty", overwrite=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FlowerftError, match="not a flowerft run"):
        layout.check_new(tmp_path / "photos", overwrite=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\nepochs: 3\n")
    with pytest.raises(FlowerftError, match="not a flowerft run"):  # another tool's config.yaml
        layout.check_new(tmp_path / "run", overwrite=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config())))
    with pytest.raises(FlowerftError, match="--overwrite"):
        layout.check_new(tmp_path / "run", overwrite=False)
    layout.check_new(tmp_path / "run", overwrite=True)


def test_overwrite_replaces_a_run(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=10)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config(epochs_head=7))))
    (run / "evaluation.json").write_text("{}")
    args = ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
            "--epochs-head", "1", "--epochs-finetune", "0", "--run-dir", str(run), "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not (run / "evaluation.json").exists()  # nothing of the old run is mixed in
    assert f"--overwrite: removed the earlier run in {run} (config.yaml, evaluation.json)" in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs_head"] == 1


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=10)
    (folder / "daisy" / "empty.jpg").write_bytes(b"")
    (folder / "daisy" / "text.jpg").write_text("not an image")
    good = (folder / "roses" / "roses_000.jpg").read_bytes()
    (folder / "roses" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    from PIL import Image

    Image.new("RGB", (40, 40)).save(folder / "dandelion" / "tiff_named.png", format="TIFF")
    (folder / "daisy" / ".DS_Store").write_bytes(b"\0\1")
    (folder / "daisy" / "notes.txt").write_text("ignored: not an image extension")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet",
                                 "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "1",
                                 "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "skipped 4 files that are not readable images" in result.output
    skipped = json.loads((run / "skipped_files.json").read_text())
    assert sorted(p.rsplit("/", 1)[1] for p in skipped) == ["empty.jpg", "text.jpg", "tiff_named.png", "truncated.jpg"]
    files = json.loads((run / "splits.json").read_text())
    assert sum(len(v) for v in files.values()) == 30


def test_resume_refuses_an_option_given_at_its_default_that_the_run_did_not_use(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config(epochs_head=2, seed=7))))
    requested = make_config(epochs_head=DEFAULTS["epochs_head"])
    with pytest.raises(FlowerftError, match=f"epochs_head=2, not {DEFAULTS['epochs_head']}"):
        resumed_config(tmp_path, requested, given={"epochs_head": DEFAULTS["epochs_head"]})
    assert resumed_config(tmp_path, requested, given={"seed": 7, "run_dir": "elsewhere"}).epochs_head == 2


def test_finish_commit_publishes_the_committed_best_and_drops_the_rest(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    published = tmp_path / "checkpoints" / "finetune_best.keras"
    published.parent.mkdir()
    published.write_text("epoch 3")
    (folder / "finetune_best-e4.keras").write_text("epoch 4")  # committed, then killed before the move
    (folder / "finetune_best-e5.keras").write_text("epoch 5")  # saved, never committed
    (folder / ".tmp-finetune-e5.weights.h5").write_text("half")
    checkpoints.finish_commit(tmp_path, checkpoints.Progress("finetune", epochs_done=4, best_file="finetune_best-e4.keras"), published)
    assert published.read_text() == "epoch 4"
    assert list(folder.iterdir()) == []


class PoisonAtEpoch(keras.callbacks.Callback):
    """Make the weights NaN at the start of epoch `epoch` (0-based): a divergence on cue."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])


def tiny_classifier():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def test_a_diverged_phase_is_saved_with_its_best_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1)
    progress = checkpoints.Progress("head")
    guard = DivergenceGuard(factor=100)
    best = BestCheckpoint(model, tmp_path / checkpoints.STATE, "head_best", guard=guard)
    published = tmp_path / "head_best.keras"
    epoch_state = checkpoints.EpochState(tmp_path, progress, best, guard, published)
    callbacks = [PoisonAtEpoch(2), guard, best, epoch_state]
    model.fit(x, y, batch_size=8, epochs=20, validation_data=(x, y), callbacks=callbacks, verbose=0)
    saved = checkpoints.Progress.load(tmp_path)
    assert guard.reason == "loss became nan"
    assert saved.stopped == guard.reason and saved.epochs_done == 3 and saved.best_file is not None
    stored = tiny_classifier()
    stored.load_weights(tmp_path / checkpoints.STATE / saved.weights)
    assert all(np.isfinite(w).all() and np.array_equal(w, m) for w, m in zip(stored.get_weights(), model.get_weights()))
    # The best checkpoint is a clean epoch's, moved into place, and it is the weights kept.
    assert int(saved.best_file.rsplit("-e", 1)[1].split(".")[0]) in (1, 2)
    assert published.is_file() and not list((tmp_path / checkpoints.STATE).glob("*.keras"))
    checkpoint = keras.saving.load_model(published)
    assert all(np.array_equal(w, m) for w, m in zip(checkpoint.get_weights(), model.get_weights()))


def test_a_phase_stopped_for_divergence_stays_over_on_resume(tmp_path, monkeypatch):
    model = tiny_classifier()
    progress = checkpoints.Progress("head", epochs_done=2, history=[
        {"phase": "head", "epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0},
        {"phase": "head", "epoch": 2, "val_accuracy": 0.9, "val_loss": float("nan")},  # validated diverged
    ], stopped="loss became nan")
    monkeypatch.setattr(model, "fit", lambda *a, **k: pytest.fail("a stopped phase was trained again"))
    setup = Setup(make_config(recipe="book"), tmp_path, lambda phase, config: [], epoch=None)
    result = fit_phase("head", model, None, None, setup, Schedule(epochs=5, initial_epoch=0, lr=0.1, decay=0.0),
                       resume=progress)
    assert result.stopped_because == "loss became nan" and result.epochs_run == 2
    assert (result.best_epoch, result.best_val_accuracy) == (1, 0.5)  # never the diverged epoch


def test_a_run_whose_both_phases_diverge_at_once_still_finishes(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=10)
    args = ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
            "--batch-size", "4", "--epochs-head", "1", "--epochs-finetune", "1", "--lr-head", "1e38",
            "--lr-finetune", "1e30", "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_phase"] is None and metrics["best_checkpoint"] == "checkpoints/final.keras"
    assert [w.split(":")[0] for w in metrics["warnings"]] == ["head phase stopped early", "finetune phase stopped early"]
    # No epoch finished cleanly: there is no best epoch whose weights could have been restored.
    assert all("no epoch of it finished cleanly, so it kept the weights it started from" in w for w in metrics["warnings"])
    assert not any("best weights were restored" in w for w in metrics["warnings"])
    final = keras.saving.load_model(tmp_path / "run" / "checkpoints" / "final.keras")
    assert all(np.isfinite(w).all() for w in final.get_weights())  # the starting weights, restored
