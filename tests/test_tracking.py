"""MLflow tracking, read back from a real SQLite store with MlflowClient: params, every epoch once
(across interrupts and --resume), the test evaluation and the artifacts; a dead server only warns."""

import json
import signal
import subprocess
import sys
import time

import keras
import pytest
import yaml
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.errors import Interrupted
from flowerft.training import session

pytest.importorskip("mlflow")  # in the `test` extra; skipped only where flowerft[mlflow] is not installed
from mlflow.tracking import MlflowClient  # noqa: E402

runner = CliRunner()
EPOCHS = 4  # 2 head + 2 fine-tune


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One database for the module: creating MLflow's tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracked(store, monkeypatch, tiny_backbone, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return make_image_folder(tmp_path / "images", per_class=6, sizes=(32, 40))


def config(folder, run, **more):
    return make_config(data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=6,
                       epochs_head=2, epochs_finetune=2, run_dir=str(run), tensorboard=False, track="mlflow", **more)


def mlflow_run(store, run_dir):
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == store
    client = MlflowClient(store)
    return client, client.get_run(record["run_id"])


def steps(client, run_id, key="val_accuracy"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_tracked_run_logs_params_epochs_evaluation_and_artifacts(tracked, store, tmp_path):
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(tracked), "--weights", "none", "--backbone", "mobilenet",
                                 "--image-size", "32", "--batch-size", "6", "--epochs-head", "2", "--epochs-finetune", "2",
                                 "--run-dir", str(run_dir), "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    client, run = mlflow_run(store, run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params == {k: str(v) for k, v in recorded.items()}  # the resolved config, every key
    history = json.loads((run_dir / "history.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in logged) == [(row["epoch"], pytest.approx(row[key])) for row in history]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.json"} <= artifacts  # curves.png: drawn by report

    for command in (["evaluate"], ["report"], ["report"]):  # the same evaluation is logged once
        result = runner.invoke(app, [*command, "--run-dir", str(run_dir)])
        assert result.exit_code == 0 and "Warning" not in result.output, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    test_accuracy = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.value, m.step) for m in test_accuracy] == [(pytest.approx(evaluation["accuracy"]), EPOCHS)]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "confusion_matrix.png", "evaluation.json", "curves.png"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "report.html", str(tmp_path / "back"))
    assert open(local).read() == (run_dir / "report.html").read_text()


class StopAt(keras.callbacks.Callback):
    """Ctrl-C at the end of global epoch `epoch` (1-based), after its state is committed but before
    the tracker logs it (the callbacks a caller gives run before it), or as the next epoch begins."""

    def __init__(self, epoch, logged: bool):
        super().__init__()
        self.epoch, self.logged = epoch, logged

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch and not self.logged:
            raise KeyboardInterrupt

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch and self.logged:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [(3, False), (1, True)], ids=["saved-not-logged", "saved-and-logged"])
def test_an_interrupted_run_resumed_has_every_epoch_once_in_the_same_mlflow_run(tracked, store, tmp_path, stop):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        session.run(config(tracked, run_dir), callbacks=lambda phase, c: [StopAt(*stop)])
    client, run = mlflow_run(store, run_dir)
    assert run.info.status == "KILLED"
    assert steps(client, run.info.run_id) == list(range(1, stop[0] + stop[1]))  # what was logged before the stop

    session.run(config(tracked, run_dir), resume=True)
    client, resumed = mlflow_run(store, run_dir)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    for key in ("loss", "val_accuracy"):
        assert steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1))  # each epoch exactly once
    history = json.loads((run_dir / "history.json").read_text())
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    assert logged == {row["epoch"]: pytest.approx(row["val_loss"]) for row in history}
    runs = client.search_runs([run.info.experiment_id], f"tags.`flowerft.run_dir` = '{run_dir.resolve()}'")
    assert len(runs) == 1  # the resume made no second MLflow run


def test_a_run_killed_during_fine_tuning_and_resumed_has_every_epoch_once(store, monkeypatch, tmp_path):
    """SIGKILL in a real `flowerft train --track mlflow` process (no callback to tidy up), then --resume."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    folder = make_image_folder(tmp_path / "images", per_class=6, sizes=(32, 40))
    run_dir = tmp_path / "run"
    args = ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
            "--batch-size", "6", "--epochs-head", "2", "--epochs-finetune", "4", "--run-dir", str(run_dir), "--track", "mlflow"]
    proc = subprocess.Popen([sys.executable, "-m", "flowerft", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress, deadline = run_dir / "state" / "progress.json", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["phase"] == "finetune":
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    client, run = mlflow_run(store, run_dir)
    assert run.info.status == "RUNNING"  # nothing could say otherwise

    result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run_dir)])  # --track comes from config.yaml
    assert result.exit_code == 0 and "MLflow" not in result.output, result.output
    client, resumed = mlflow_run(store, run_dir)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    history = json.loads((run_dir / "history.json").read_text())
    logged = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in logged) == [(r["epoch"], pytest.approx(r["val_loss"])) for r in history]
    assert [r["epoch"] for r in history] == list(range(1, 7))


def test_an_unreachable_server_warns_once_and_training_goes_on(tracked, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_dir = tmp_path / "run"
    messages = []
    result = session.run(config(tracked, run_dir), notify=messages.append)
    assert result.metrics["best_checkpoint"] and (run_dir / "metrics.json").is_file()
    warnings = [m for m in messages if "MLflow" in m]
    assert len(warnings) == 1 and "127.0.0.1:9" in warnings[0] and "training goes on" in warnings[0]
    assert not (run_dir / "mlflow.json").exists()


def test_track_mlflow_without_mlflow_is_a_clear_error_before_anything_is_written(tracked, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if flowerft[mlflow] were not installed
    line = one_line_error(runner.invoke(app, ["train", "--data-dir", str(tracked), "--weights", "none",
                                              "--run-dir", str(tmp_path / "run"), "--track", "mlflow"]))
    assert "flowerft[mlflow]" in line and not (tmp_path / "run").exists()
    line = one_line_error(runner.invoke(app, ["train", "--data-dir", str(tracked), "--track", "wandb"]))
    assert "track" in line and "mlflow" in line
