"""MLflow tracking (`--track mlflow`, the extra flowerft[mlflow]): every run on record in one store.

    params      the resolved config (config.yaml), once, when the MLflow run is created
    metrics     each finished epoch's loss, accuracy, val_loss, val_accuracy at step = its epoch
                (counted over both phases); test_* when `evaluate` or `report` runs
    artifacts   config.yaml, metrics.json, history.json, then curves.png, evaluation.json,
                confusion_matrix.png, report.html and the model card (export/README.md)
    <run_dir>/mlflow.json   the store and MLflow run id: `--resume` continues that MLflow run

The store is MLFLOW_TRACKING_URI, else a SQLite database in runs_root (command_defaults.MLFLOW_DATABASE),
whose artifacts go to runs_root/mlartifacts. An epoch is logged only after its state is
committed (the callback runs after checkpoints.EpochState), and a resumed run first logs the committed
epochs the store lacks (a kill between the two): so every epoch is logged exactly once.

The run dir stays the record: a store that cannot be reached warns once, and the run goes on
without tracking.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from flowerft.command_defaults import MLFLOW_DATABASE, MLFLOW_EXPERIMENT
from flowerft.config import Config, to_dict
from flowerft.errors import ConfigError, first_line
from flowerft.runs import layout

RECORD = "mlflow.json"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TRAINING_FILES = (layout.CONFIG, layout.METRICS, layout.HISTORY)  # curves.png: `report` draws it (OUTPUT_FILES)
OUTPUT_FILES = (layout.CONFIG, "curves.png", "evaluation.json", "confusion_matrix.png", "report.html")
MODEL_CARD = Path("export") / "README.md"  # written by `flowerft export`; logged as model_card.md
# A server that does not answer must cost seconds, not MLflow's default minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _mlflow():
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # MLflow logs its database set-up ("Creating initial MLflow database tables...") at INFO: noise in a CLI.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("track: mlflow needs MLflow; install it with pip install 'flowerft[mlflow]', or give --track none") from None
    return MlflowClient


def check(config: Config) -> None:
    """Before a run starts: --track mlflow without MLflow installed is an error, not a warning."""
    if config.track == "mlflow":
        _mlflow()


def default_uri(runs_root: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs_root).resolve() / MLFLOW_DATABASE}"


def _said(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e, 160)}" if str(e).strip() else type(e).__name__


class Tracker:
    """One run's MLflow run; does nothing when tracking is off, and turns itself off at the first failure."""

    def __init__(self, config: Config, enabled: bool = True, notify: Callable[[str], None] = lambda m: None):
        self.config = config
        self.enabled = enabled and config.track == "mlflow"
        self.notify = notify
        self.client = self.run_id = None
        self.logged: set[int] = set()  # steps already in the store

    def _failed(self, what: str, e: BaseException) -> None:
        self.enabled = False
        self.notify(f"MLflow tracking stopped: could not {what} ({_said(e)}); training goes on, "
                    f"the run dir keeps everything")

    def start(self, run_dir: Path, committed: list[dict[str, Any]]) -> None:
        """Create the MLflow run (or continue the one mlflow.json names), then log the `committed` epochs it lacks."""
        if not self.enabled:
            return
        uri = default_uri(self.config.runs_root)
        try:
            record = layout.read_json(run_dir / RECORD) if (run_dir / RECORD).is_file() else None
            uri = record["tracking_uri"] if record else uri
            self.client = _mlflow()(uri)
            if record:
                self.run_id = record["run_id"]
                if self.client.get_run(self.run_id).info.status != "RUNNING":
                    self.client.update_run(self.run_id, status="RUNNING")
                self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "loss")}
            else:
                self._create(run_dir, uri)
            self.log_epochs(committed)
        except ConfigError:
            raise
        except Exception as e:  # sqlite, HTTP and MLflow's own errors: none may stop training
            self._failed(f"reach the store {uri}", e)

    def _create(self, run_dir: Path, uri: str) -> None:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:///"):  # the artifacts beside the database, not in ./mlruns
                location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                     tags={"flowerft.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        # As config.yaml holds them (with the run dir it was given, or the one made for it).
        values = to_dict(self.config) | {"run_dir": str(run_dir)}
        params = [Param(key, str(value)) for key, value in values.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        layout.write_json(run_dir / RECORD, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id})

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        """History rows ({"epoch": N, "loss": ...}) at step N, each step once; one call per epoch, so all or nothing."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        try:
            for row in rows:
                step = int(row["epoch"])
                if step in self.logged:
                    continue
                stamp = int(time.time() * 1000)
                metrics = [Metric(k, float(row[k]), stamp, step) for k in row if k in EPOCH_METRICS or k == "learning_rate"]
                self.client.log_batch(self.run_id, metrics=metrics)
                self.logged.add(step)
        except Exception as e:
            self._failed("log an epoch", e)

    def callback(self):
        """A Keras callback logging each epoch; it must come after checkpoints.EpochState (the commit)."""
        import keras

        tracker = self

        class LogEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                tracker.log_epochs([{"epoch": epoch + 1, **(logs or {})}])

        return LogEpoch()

    def finish(self, run_dir: Path, status: str = "FINISHED") -> None:
        """The training files as artifacts, and the run's end (KILLED when interrupted: a resume reopens it)."""
        if not self.enabled:
            return
        try:
            if status == "FINISHED":
                for name in TRAINING_FILES:
                    if (run_dir / name).is_file():
                        self.client.log_artifact(self.run_id, str(run_dir / name))
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            self._failed("log the run's files", e)


def committed_history(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs a run has saved: history.json when finished, else the committed progress (checkpoints.Progress)."""
    from flowerft.training.checkpoints import Progress

    if (run_dir / layout.HISTORY).is_file():
        return layout.read_json(run_dir / layout.HISTORY)
    progress = Progress.load(run_dir)
    if progress is None:
        return []
    return [*((progress.head or {}).get("history") or []), *progress.history]


def log_outputs(run_dir: str | Path) -> str | None:
    """After evaluate, report or export: the test evaluation and the files beside it, to the run's MLflow run.

    Nothing for a run that is not tracked (no mlflow.json); a warning (returned) when the store fails.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).is_file():
        return None
    try:
        record = layout.read_json(run_dir / RECORD)
        client = _mlflow()(record["tracking_uri"])
        run_id = record["run_id"]
        _log_evaluation(client, run_id, run_dir)
        for name in OUTPUT_FILES:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        if (run_dir / MODEL_CARD).is_file():
            with tempfile.TemporaryDirectory() as folder:
                card = Path(folder) / "model_card.md"
                shutil.copyfile(run_dir / MODEL_CARD, card)
                client.log_artifact(run_id, str(card))
    except Exception as e:  # a ConfigError (MLflow gone) too: what was asked for is done already
        return f"not logged to MLflow ({_said(e)}); the files are in {run_dir}"
    return None


def _log_evaluation(client, run_id: str, run_dir: Path) -> None:
    from mlflow.entities import Metric

    path = run_dir / "evaluation.json"
    if not path.is_file():
        return
    evaluation = layout.read_json(path)
    values = {"test_loss": evaluation["loss"], "test_accuracy": evaluation["accuracy"],
              "test_top2_accuracy": evaluation["top2_accuracy"], "test_macro_f1": evaluation["macro_avg"]["f1-score"]}
    logged = client.get_run(run_id).data.metrics
    if all(logged.get(k) == float(v) for k, v in values.items()):
        return  # `report` after `evaluate`: the same evaluation once
    step = len(committed_history(run_dir))
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])
