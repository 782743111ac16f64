"""One check for every data source: train (stopped after its first epoch), resume from another
working directory, evaluate, report and `runs`, all on what the run dir recorded."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from helpers import stop_after, tiny_make_base
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.errors import Interrupted
from flowerft.training import session

runner = CliRunner()


def tiny_config(tmp_path: Path, **source):
    return make_config(**source, weights="none", backbone="mobilenet", image_size=32, batch_size=4, epochs_head=1,
                       epochs_finetune=1, run_dir=str(tmp_path / "runs" / "run"), runs_root=str(tmp_path / "runs"),
                       tensorboard=False, shuffle_buffer=8)


def train_resume_evaluate_report(tmp_path: Path, monkeypatch, split: str = "test", export: bool = False, **source) -> dict:
    """The whole life of a run on `source` (paths relative to tmp_path); what evaluate printed.

    On helpers' tiny base (a real MobileNet costs seconds to build in each of train, resume,
    evaluate): the sources are under test here, not the backbone.
    """
    from flowerft import model

    monkeypatch.setattr(model, "make_base", tiny_make_base())
    os.chdir(tmp_path)
    config = tiny_config(tmp_path, **source)
    said: list[str] = []
    with pytest.raises(Interrupted):
        session.run(config, callbacks=lambda phase, c: [stop_after(1)], notify=said.append)  # Ctrl-C after the head epoch
    run = Path(config.run_dir)
    assert (run / "source.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # the source's relative paths mean nothing here: the run dir must know them
    result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and (run / "metrics.json").is_file()
    result = runner.invoke(app, ["evaluate", "--run-dir", str(run), "--split", split, "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert evaluation["examples"] == json.loads((run / "metrics.json").read_text())["split_sizes"][split]
    result = runner.invoke(app, ["report", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "could not evaluate" not in page and "data:image/jpeg;base64" in page  # evaluated, mistakes' images shown
    if export:  # verified on the held-out split the run has
        from flowerft.cli.common import console

        statuses = []
        monkeypatch.setattr(console, "status", lambda text, **kw: statuses.append(text) or contextlib.nullcontext())
        result = runner.invoke(app, ["export", "--run-dir", str(run), "--format", "tflite"])
        assert result.exit_code == 0, result.output
        assert (run / "export" / "model.tflite").is_file()
        evaluation["export_status"] = statuses
    result = runner.invoke(app, ["runs", "--runs-root", str(tmp_path / "runs"), "--json"])
    evaluation["runs_row"] = json.loads(result.stdout)[0]
    table = runner.invoke(app, ["runs", "--runs-root", str(tmp_path / "runs")], env={"COLUMNS": "120"}).output
    assert evaluation["runs_row"]["source"] in table  # under the run's name (folded when the terminal is narrow)
    evaluation["said"] = said  # what training said at the start
    return evaluation
