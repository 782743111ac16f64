"""The learning-rate range test: `flowerft lr-find` on a run, and `--lr-finetune auto` inside `train`."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import named_weights, save_tiny_pretrained, stop_after, tiny_base_under_head
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.errors import ConfigError, Interrupted
from flowerft.runs import layout
from flowerft.training import lr_find, recipe, session
from flowerft.training.optimizer import compile_for_phase


def test_the_sweep_grows_the_rate_exponentially_stops_at_divergence_and_changes_nothing():
    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).normal(size=(64, 4)) * 300).astype("float32")  # large inputs: large steps diverge
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    compile_for_phase(model, lr=0, decay=0, momentum=0.9, clipnorm=None, rate=lr_find.exponential_rate(200))
    before = named_weights(model)
    result = lr_find.sweep(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), 200)
    for name, value in named_weights(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)  # every weight put back
    rates = np.array(result.rates)
    np.testing.assert_allclose(rates[1:] / rates[:-1], (lr_find.END / lr_find.START) ** (1 / 200), rtol=1e-4)
    assert rates[0] == pytest.approx(lr_find.START)
    # Well before a rate of 1 the steps overshoot: the sweep stops there, not at its last step.
    assert len(rates) < 200 and result.stopped_because == "the smoothed loss passed 4x its minimum"
    warm_up = 20  # a tenth of the steps: the average of the first few losses is one lucky batch from the minimum
    lowest = warm_up + int(np.argmin(result.smoothed[warm_up:]))
    assert result.minimum_rate == pytest.approx(rates[lowest])
    assert result.suggested == pytest.approx(result.minimum_rate / 10)
    assert 1e-4 < result.suggested < 0.01 and result.smoothed[-1] > 4 * min(result.smoothed[warm_up:])


def test_a_flat_start_does_not_make_the_first_steps_the_minimum():
    """A trained head's loss is flat over small rates; one low first batch must not decide the rate."""
    result = lr_find.Sweep(rates=list(np.geomspace(1e-6, 1, 100)), losses=[0.01] + [0.2] * 60 + [0.1] * 20 + [0.2] * 19)
    result.smoothed = list(np.convolve(result.losses, np.ones(1), "same"))
    lr_find.suggest(result, warm_up=10)
    assert result.minimum_rate == pytest.approx(result.rates[61])


def test_lr_find_writes_its_plot_and_suggestion_for_a_run_and_leaves_the_run_alone(trained_run):
    checkpoint = trained_run / "checkpoints" / "head_best.keras"
    before = checkpoint.stat().st_mtime_ns, (trained_run / "config.yaml").read_text()
    result = CliRunner().invoke(app, ["lr-find", "--run-dir", str(trained_run), "--steps", "12"])
    assert result.exit_code == 0, result.output
    assert "from the run's head checkpoint checkpoints/head_best.keras" in result.output
    assert "Suggested --lr-finetune" in result.output
    record = json.loads((trained_run / "lr_find" / "lr_find.json").read_text())
    assert len(record["rates"]) == len(record["losses"]) <= 12 and record["suggested"] > 0
    assert (trained_run / "lr_find" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (trained_run / "lr_find.json").exists()  # the run's own name: the record of --lr-finetune auto
    assert (checkpoint.stat().st_mtime_ns, (trained_run / "config.yaml").read_text()) == before


def test_lr_find_refuses_too_few_steps_in_one_line(trained_run, tmp_path):
    result = CliRunner().invoke(app, ["lr-find", "--run-dir", str(trained_run), "--steps", "3",
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "--steps must be 10 or more" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["fast", -1])
def test_lr_finetune_is_a_positive_number_or_auto(value):
    with pytest.raises(ConfigError, match="lr_finetune"):
        make_config(lr_finetune=value)
    assert make_config(lr_finetune="auto").lr_finetune == "auto"


def test_auto_rate_is_found_between_the_phases_recorded_and_reused_on_resume(folder, tmp_path, monkeypatch):
    weights = save_tiny_pretrained(tmp_path / "base.weights.h5")
    run = tmp_path / "run"
    config = make_config(data_dir=str(folder), backbone="mobilenet", weights=str(weights), image_size=32, batch_size=4,
                         epochs_head=1, epochs_finetune=2, lr_finetune="auto", lr_find_steps=20, tensorboard=False,
                         run_dir=str(run))
    lines = []
    with tiny_base_under_head(), pytest.raises(Interrupted):  # after fine-tuning's first epoch
        session.run(config, notify=lines.append, callbacks=lambda phase, c: [stop_after(2)])
    recorded = layout.read_yaml(run / "config.yaml")
    assert recorded["lr_finetune"] == "auto"  # what the user asked for
    assert recorded[lr_find.FOUND_RATE] == json.loads((run / "lr_find.json").read_text())["suggested"] > 0
    assert any(line.startswith("learning-rate sweep: 20 steps") for line in lines)
    # The resumed run trains at the rate its config.yaml records, and sweeps no more.
    layout.write_yaml(run / "config.yaml", recorded | {lr_find.FOUND_RATE: 0.0123})
    monkeypatch.setattr(recipe, "sweep_rates", lambda *a, **k: pytest.fail("swept again on resume"))
    rates, fit_phase = [], recipe.fit_phase
    monkeypatch.setattr(recipe, "fit_phase", lambda *a, **k: rates.append(a[5].lr) or fit_phase(*a, **k))
    with tiny_base_under_head():
        result = session.run(config, resume=True)
    assert rates == [0.0123] and result.metrics["lr_finetune"] == 0.0123
    assert result.metrics["phases"]["finetune"]["epochs_run"] == 2


def test_a_sweep_too_short_to_read_fine_tunes_at_the_default_rate_and_records_it(folder, tmp_path, monkeypatch):
    from flowerft.errors import FlowerftError

    def too_short(*args, **kwargs):
        raise FlowerftError("the learning-rate sweep stopped after 2 steps (the loss became nan): too few to suggest a rate")

    monkeypatch.setattr(recipe, "sweep_rates", too_short)
    lines = []
    config = make_config(data_dir=str(folder), backbone="mobilenet", weights=str(save_tiny_pretrained(tmp_path / "b.weights.h5")),
                         image_size=32, batch_size=4, epochs_head=1, epochs_finetune=1, lr_finetune="auto",
                         tensorboard=False, run_dir=str(tmp_path / "run"))
    with tiny_base_under_head():
        result = session.run(config, notify=lines.append)
    assert any(line.endswith("fine-tuning at the default rate 0.001 instead") for line in lines), lines
    assert result.metrics["lr_finetune"] == 0.001 == lr_find.recorded_rate(tmp_path / "run")


def test_the_model_card_names_the_rate_the_sweep_found():
    from flowerft.serving.model_card import _finetune_rate

    assert _finetune_rate(make_config(lr_finetune="auto"), {"lr_finetune": 0.0015849}) == \
        "0.0016 (found by the learning-rate sweep of --lr-finetune auto)"
    assert _finetune_rate(make_config(), {"lr_finetune": 0.001}) == "0.001"
