"""Training end to end: the artifacts of a real run, the phase summary, the TFDS source."""

import csv
import json

import keras
import numpy as np
import pytest
import yaml

from flowerft.config_files import make_config
from flowerft.data import network
from flowerft.training import session
from flowerft.training.summary import PhaseResult, summarize


def test_train_writes_every_artifact(trained_run):
    run = trained_run
    for name in ("config.yaml", "class_names.json", "splits.json", "metrics.json", "history.json",
                 "history_head.csv", "history_finetune.csv", "checkpoints/final.keras",
                 "checkpoints/head_best.keras", "checkpoints/finetune_best.keras"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard" / "train").iterdir())
    assert not (run / "state").exists()  # resume state is removed once the run has finished
    assert not list(run.rglob(".tmp*")) and not list(run.rglob("*.tmp"))  # no half-written files
    assert (run.parent / "latest").read_text().splitlines()[0] == run.name

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["image_size"] == 71 and config["weights"] == "none" and config["epochs_head"] == 1
    assert config["recipe"] == "flowerft" and make_config(**config).lr_head == 0.02  # complete and valid
    assert json.loads((run / "class_names.json").read_text()) == ["daisy", "dandelion", "roses"]
    splits = json.loads((run / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 27, "valid": 6, "test": 3}


def test_metrics_summarise_both_phases(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for phase in ("head", "finetune"):
        p = metrics["phases"][phase]
        assert p["epochs_run"] == p["epochs_planned"] == 1
        for key in ("best_val_accuracy", "best_val_loss", "last_val_accuracy", "last_val_loss"):
            assert isinstance(p[key], float)
        assert p["wall_time_s"] > 0 and p["checkpoint"] == f"checkpoints/{phase}_best.keras"
    assert metrics["best_phase"] in ("head", "finetune")
    assert metrics["best_checkpoint"] == metrics["phases"][metrics["best_phase"]]["checkpoint"]
    assert metrics["final_checkpoint"] == "checkpoints/final.keras"


def test_history_is_continuous_over_both_phases(trained_run):
    rows = json.loads((trained_run / "history.json").read_text())
    assert [(r["phase"], r["epoch"]) for r in rows] == [("head", 1), ("finetune", 2)]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    with open(trained_run / "history_finetune.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["phase"], int(r["epoch"])) for r in csv_rows] == [("finetune", 2)]
    assert float(csv_rows[0]["val_accuracy"]) == pytest.approx(rows[1]["val_accuracy"])


def test_checkpoints_load_in_safe_mode_with_the_batchnorm_rule_of_their_weights(trained_run):
    model = keras.saving.load_model(trained_run / "checkpoints" / "final.keras", safe_mode=True)
    assert model.input_shape == (None, 71, 71, 3) and model.output_shape == (None, 3)
    base = model.get_layer("xception")
    assert base.trainable
    # weights none: trained from scratch, BatchNorm learned (pretrained weights keep it frozen: test_model.py)
    batchnorm = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert batchnorm and all(l.trainable for l in batchnorm)
    probabilities = model.predict(np.full((1, 71, 71, 3), 128.0, "float32"), verbose=0)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def phase(name, best, last, checkpoint=True, stopped=None):
    return PhaseResult(
        name, 2, 2, best_val_accuracy=best, last_val_accuracy=last, stopped_because=stopped,
        checkpoint=f"checkpoints/{name}_best.keras" if checkpoint else None,
    )


def test_best_checkpoint_is_chosen_over_both_phases():
    m = summarize(phase("head", 0.6, 0.6), phase("finetune", 0.8, 0.8), "checkpoints/final.keras")
    assert (m["best_phase"], m["best_checkpoint"], m["warnings"]) == ("finetune", "checkpoints/finetune_best.keras", [])
    tie = summarize(phase("head", 0.7, 0.7), phase("finetune", 0.7, 0.7), "checkpoints/final.keras")
    assert tie["best_phase"] == "head"


def test_fine_tuning_that_falls_below_the_head_is_reported_with_remedies():
    m = summarize(phase("head", 0.75, 0.7), phase("finetune", 0.5, 0.2, stopped="loss became nan"), "f.keras")
    assert m["best_checkpoint"] == "checkpoints/head_best.keras"
    text = " ".join(m["warnings"])
    assert "stopped early: loss became nan" in text
    assert "below the head phase's best (75.0%)" in text and "--clipnorm 1" in text and "--lr-finetune" in text


def test_a_diverged_phase_names_the_recipe_settings_to_change():
    head, finetune = phase("head", 0.75, 0.7), phase("finetune", 0.5, 0.2, stopped="loss became nan")
    book = make_config(recipe="book")
    text = " ".join(summarize(head, finetune, "f.keras", book)["warnings"])
    assert "a lower --lr-finetune (this run: 0.01)" in text and "--clipnorm 1" in text
    assert "a lower --lr-head (this run: 0.2;" in text and "--recipe flowerft" in text
    text = " ".join(summarize(phase("head", 0.5, 0.2, stopped="loss became inf"), finetune, "f.keras", make_config())["warnings"])
    assert "To train it stably: a lower --lr-head (this run: 0.02)" in text
    assert "--clipnorm" not in text and "--recipe" not in text  # the default already clips


def test_zero_epochs_everywhere_falls_back_to_the_final_model():
    m = summarize(PhaseResult("head", 0), PhaseResult("finetune", 0), "checkpoints/final.keras")
    assert m["best_checkpoint"] == "checkpoints/final.keras" and m["best_phase"] is None


def test_tfds_run_end_to_end_under_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(network, "check_online", lambda *a: None)  # mock_data makes the download a no-op
    config = make_config(
        tfds_data_dir=str(tmp_path / "tfds"), backbone="mobilenet", weights="none", image_size=32,
        batch_size=4, epochs_head=1, epochs_finetune=1, run_dir=str(tmp_path / "run"), tensorboard=False,
    )
    phases = []

    class Seen(keras.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_end(self, epoch, logs=None):
            phases.append((self.name, epoch))

    with tfds.testing.mock_data(num_examples=8):
        result = session.run(config, callbacks=lambda name, config: [Seen(name)])
    assert phases == [("head", 0), ("finetune", 1)]
    assert json.loads((tmp_path / "run" / "class_names.json").read_text()) == [
        "dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert not (tmp_path / "run" / "splits.json").exists()
    assert result.metrics["phases"]["finetune"]["epochs_run"] == 1
    # The pointer to the newest run lives in the runs root, naming a run elsewhere by its full path.
    assert (tmp_path / "runs" / "latest").read_text().splitlines()[0] == str((tmp_path / "run").resolve())


def test_cosine_warm_up_and_label_smoothing_run_end_to_end(tmp_path):
    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    config = make_config(
        data_dir=str(folder), backbone="mobilenet", weights="none", image_size=32, batch_size=4,
        epochs_head=1, epochs_finetune=2, schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1,
        run_dir=str(tmp_path / "run"), tensorboard=False,
    )
    seen = {}

    class AtTheEnd(keras.callbacks.Callback):  # the compiled model as each phase's fit ends
        def __init__(self, phase):
            super().__init__()
            self.phase = phase

        def on_train_end(self, logs=None):
            optimizer = self.model.optimizer
            seen[self.phase] = (self.model.loss, int(optimizer.iterations), float(optimizer.learning_rate))

    result = session.run(config, callbacks=lambda phase, config: [AtTheEnd(phase)])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(0 <= row["val_accuracy"] <= 1 for row in history)  # accuracy on one-hot labels
    assert result.metrics["recipe"] == "flowerft"
    # The fine-tuning optimizer ran the cosine schedule down to 0 over its 2 x 5 steps (the shipped
    # checkpoints hold no optimizer: it is read as the phase ends).
    loss, iterations, learning_rate = seen["finetune"]
    assert isinstance(loss, keras.losses.CategoricalCrossentropy) and loss.label_smoothing == 0.1
    assert iterations == 10
    assert learning_rate == pytest.approx(0.0, abs=1e-9)


def test_ema_validates_and_saves_the_moving_average_not_the_last_step(tmp_path):
    """With `ema`, each best checkpoint and final.keras hold the optimizer's moving average of the
    weights at that epoch's end, which differs from the weights its last step left."""
    from helpers import checkpoint_weights, make_image_folder, named_weights, tiny_base_under_head

    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    config = make_config(data_dir=str(folder), backbone="mobilenet", weights="none", image_size=32, batch_size=4,
                         epochs_head=2, epochs_finetune=2, ema=True, run_dir=str(tmp_path / "run"), tensorboard=False)
    seen = {}  # global epoch -> (raw weights and averages after its last step, the model's weights at its end)

    class Watch(keras.callbacks.Callback):  # after flowerft's callbacks, as the progress display is
        def on_train_batch_end(self, batch, logs=None):  # before validation swaps the averages in
            averages = [v for v in self.model.optimizer.variables if "average" in v.path]
            assert len(averages) == len(self.model.trainable_variables) > 0
            self.last_step = ([v.numpy() for v in self.model.trainable_variables], [v.numpy() for v in averages])

        def on_epoch_end(self, epoch, logs=None):
            seen[epoch + 1] = (*self.last_step, [v.numpy() for v in self.model.trainable_variables],
                               named_weights(self.model))

    with tiny_base_under_head():
        result = session.run(config, callbacks=lambda phase, config: [Watch()])
    assert sorted(seen) == [1, 2, 3, 4]
    for epoch, (raw, averages, at_end, _) in seen.items():
        for average, weights in zip(averages, at_end, strict=True):
            np.testing.assert_allclose(weights, average, rtol=1e-5, atol=1e-6)  # Keras swaps by adding
        assert any(not np.allclose(r, a, rtol=1e-3, atol=1e-4) for r, a in zip(raw, averages)), epoch
    finetune = result.metrics["phases"]["finetune"]
    best = checkpoint_weights(tmp_path / "run", "finetune_best")
    saved = seen[finetune["best_epoch"]][3]
    assert best.keys() == saved.keys()
    for path in best:
        np.testing.assert_array_equal(best[path], saved[path])
    final = checkpoint_weights(tmp_path / "run")
    for path, weights in seen[4][3].items():
        np.testing.assert_allclose(final[path], weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours", [True, False])
def test_a_phase_stopped_before_its_last_epoch_with_ema_ends_on_the_moving_average(ours):
    """Keras's SwapEMAWeights alone leaves the raw weights in the model when fit stops early (once Keras
    fixes that, this test fails and SwapEMAWeightsEachEpoch.on_train_begin can go)."""
    from flowerft.training.callbacks import SwapEMAWeightsEachEpoch

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=True), "mse")
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.ones((16, 2))

    class StopAfterOneEpoch(keras.callbacks.Callback):  # as early stopping or a divergence stop would
        def on_epoch_end(self, epoch, logs=None):
            self.at_end = [v.numpy() for v in self.model.trainable_variables]  # the EMA weights, swapped in
            self.model.stop_training = True

    stop = StopAfterOneEpoch()
    swap = SwapEMAWeightsEachEpoch(resumed=False) if ours else keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    model.fit(x, y, batch_size=4, epochs=3, callbacks=[swap, stop], verbose=0)
    same = all(np.array_equal(v.numpy(), w) for v, w in zip(model.trainable_variables, stop.at_end))
    assert same == ours
