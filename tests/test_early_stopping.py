"""The monitored validation score (--monitor), early stopping (--patience) and the warning about
fine-tuning that falls below the head."""

import json

import keras
import numpy as np
import pytest
from helpers import assert_same_weights, checkpoint_weights, save_tiny_pretrained, stop_after, tiny_base_under_head
from sklearn.metrics import balanced_accuracy_score

from flowerft.config_files import make_config
from flowerft.errors import Interrupted
from flowerft.training import session
from flowerft.training.monitor import BalancedAccuracy, EarlyStop
from flowerft.training.summary import PhaseResult, summarize


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("one_hot", [False, True])
def test_balanced_accuracy_metric_is_sklearns(one_hot):
    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=50, p=[0.7, 0.2, 0.1, 0.0])  # class 3 never occurs: left out, as sklearn does
    probabilities = rng.dirichlet(np.ones(4), size=50).astype("float32")
    metric = BalancedAccuracy(4)
    for part in np.array_split(np.arange(50), 3):  # accumulated over batches
        y = np.eye(4, dtype="float32")[labels[part]] if one_hot else labels[part]
        metric.update_state(y, probabilities[part])
    expected = balanced_accuracy_score(labels, probabilities.argmax(1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(float((labels == probabilities.argmax(1)).mean()))


def phase(name, rows, monitor="accuracy"):
    result = PhaseResult(name, len(rows), monitor=monitor, checkpoint=f"checkpoints/{name}_best.keras")
    result.add_history([{"epoch": i + 1 + (10 if name == "finetune" else 0), "val_accuracy": a, "val_loss": loss}
                        for i, (a, loss) in enumerate(rows)])
    return result


def test_no_warning_when_fine_tuning_beat_the_head_and_then_fell_back():
    head = phase("head", [(0.70, 0.9), (0.778, 0.8)])
    finetune = phase("finetune", [(0.795, 0.7), (0.769, 0.75)])  # best 79.5%, last 76.9%: the run
    metrics = summarize(head, finetune, "checkpoints/final.keras", make_config())
    assert metrics["best_phase"] == "finetune" and metrics["warnings"] == []
    worse = summarize(head, phase("finetune", [(0.75, 0.7), (0.76, 0.75)]), "checkpoints/final.keras", make_config())
    assert worse["best_phase"] == "head"
    (warning,) = worse["warnings"]
    assert "fine-tuning's best validation accuracy (76.0%) is below the head phase's best (77.8%)" in warning
    assert "another --lr-finetune (this run: 0.001): lower if fine-tuning's training loss rose, higher if it barely fell" in warning


def test_the_monitor_picks_the_best_epoch_and_phase():
    head = phase("head", [(0.70, 0.50), (0.80, 0.90)], monitor="loss")
    finetune = phase("finetune", [(0.85, 0.60)], monitor="loss")
    assert head.best_epoch == 1 and head.best_val_accuracy == 0.70
    metrics = summarize(head, finetune, "checkpoints/final.keras", make_config(monitor="loss"))
    assert metrics["monitor"] == "loss" and metrics["best_phase"] == "head"  # by loss, though less accurate


def test_early_stopping_resumed_counts_the_epochs_before_it_as_the_uninterrupted_one_did():
    scores = [0.5, 0.6, 0.55, 0.58, 0.7]

    def stopped_at(history):
        callback = EarlyStop("accuracy", patience=2, min_delta=0.0, history=history)
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.stop_training = False  # as fit sets it
        callback.set_model(model)
        callback.on_train_begin()
        for epoch in range(len(history), len(scores)):
            callback.on_epoch_end(epoch, {"val_accuracy": scores[epoch]})
            if callback.model.stop_training:
                return epoch, callback.reason
        return None, None

    uninterrupted = stopped_at([])
    assert uninterrupted == (3, "no better validation accuracy for 2 epochs (patience 2)")
    assert stopped_at([{"val_accuracy": s} for s in scores[:3]]) == uninterrupted


def config_for(folder, run, weights, **values):
    return make_config(**(dict(
        data_dir=str(folder), backbone="mobilenet", weights=str(weights), image_size=32, batch_size=4,
        epochs_head=4, epochs_finetune=3, lr_finetune=0.05, patience=1, min_delta=1.0,  # no epoch improves by 1.0
        run_dir=str(run), tensorboard=False,
    ) | values))


def train(config, **options):
    with tiny_base_under_head():
        return session.run(config, **options)


def test_patience_ends_each_phase_keeps_its_best_and_a_resume_does_not_undo_it(folder, tmp_path):
    weights = save_tiny_pretrained(tmp_path / "base.weights.h5")
    run = tmp_path / "run"
    metrics = train(config_for(folder, run, weights)).metrics
    for name, first in (("head", 1), ("finetune", 5)):
        p = metrics["phases"][name]
        assert (p["epochs_run"], p["best_epoch"]) == (2, first), name  # its second epoch could not do better by 1.0
        assert p["ended_early"] == "no better validation accuracy for 1 epoch (patience 1)"
    # The run goes on from the best weights: final.keras is fine-tuning's best checkpoint, not its last epoch.
    best = checkpoint_weights(run, "finetune_best")
    for name, value in checkpoint_weights(run).items():
        np.testing.assert_array_equal(value, best[name], err_msg=name)
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 5, 6]
    assert all("val_balanced_accuracy" in row for row in history)
    # Killed just after the head phase's early stop was saved: the resumed run does not train the head on.
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        train(config_for(folder, stopped, weights), callbacks=lambda phase, c: [stop_after(2)])
    resumed = train(config_for(folder, stopped, weights), resume=True).metrics
    assert resumed["phases"]["head"]["epochs_run"] == 2
    assert_same_weights(stopped, run)
