"""One writer per run dir, and `train --resume` that is safe to re-issue in any state of the run."""

import json
import os
import signal
import subprocess
import sys
import time

import yaml
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config import to_dict
from flowerft.config_files import make_config
from flowerft.runs import lock

runner = CliRunner()

HOLD = """
import sys, time
from flowerft.runs import lock
with lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_in_another_process(run):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_in_use_refuses_a_second_trainer_and_evaluate_names_the_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config(epochs_head=1))))
    proc = hold_in_another_process(run)
    try:
        start = time.monotonic()
        for args in (["train", "--resume", "--run-dir", str(run)],
                     ["train", "--run-dir", str(run), "--overwrite", "--weights", "none"]):
            message = one_line_error(runner.invoke(app, args))
            assert f"{run} is being trained by process {proc.pid} on " in message and "wait for it" in message
        assert time.monotonic() - start < 10  # at once: no data was loaded, nothing waited
        assert (run / "config.yaml").is_file()  # --overwrite deleted nothing of the run in use
        for args in (["evaluate", "--run-dir", str(run)], ["predict", str(tmp_path), "--run-dir", str(run)],
                     ["export", "--run-dir", str(run)]):
            message = one_line_error(runner.invoke(app, args))
            assert f"is still training (process {proc.pid} on " in message
        assert lock.holder(run).startswith(f"process {proc.pid} on ")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead process's lock; its file stays and means nothing.
    assert (run / lock.LOCK).is_file() and lock.holder(run) is None
    with lock.hold(run):
        assert lock.holder(run).startswith(f"process {os.getpid()} on ")


def test_a_refused_new_run_leaves_no_folder_behind(tmp_path):
    run = tmp_path / "run"
    message = one_line_error(runner.invoke(app, ["train", "--data-dir", str(tmp_path / "nothing"), "--weights", "none",
                                                 "--run-dir", str(run)]))
    assert "nothing" in message
    assert not run.exists()


def test_the_same_resume_command_starts_finishes_and_then_leaves_the_run_alone(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    run = tmp_path / "jobs" / "run"
    command = ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet", "--image-size", "32",
               "--batch-size", "4", "--epochs-head", "1", "--epochs-finetune", "1", "--run-dir", str(run), "--resume"]
    first = runner.invoke(app, command)  # a scheduler's first start: nothing to resume yet
    assert first.exit_code == 0, first.output
    assert f"nothing to resume in {run} yet: starting a new run" in first.output
    metrics = (run / "metrics.json").read_text()
    modified = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != lock.LOCK}

    again = runner.invoke(app, command)  # the job restarted after it succeeded
    assert again.exit_code == 0, again.output
    assert f"{run} finished training already; nothing to resume" in again.output
    assert "Training summary" in again.output and "Best model:" in again.output
    assert (run / "metrics.json").read_text() == metrics
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != lock.LOCK} == modified

    # Re-issued with other options, it is another run: refused, not silently "finished".
    message = one_line_error(runner.invoke(app, [*command[:-3], "--epochs-finetune", "3", "--run-dir", str(run), "--resume"]))
    assert "was trained with epochs_finetune=1, not 3" in message


def test_a_run_stopped_before_its_training_began_is_started_again_by_resume(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)  # killed while loading data: config written, no epoch saved
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config(epochs_head=7))))
    result = runner.invoke(app, ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet",
                                 "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "0",
                                 "--run-dir", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "was stopped before its training began: starting it again" in result.output
    assert json.loads((run / "metrics.json").read_text())["phases"]["head"]["epochs_run"] == 1

    foreign = tmp_path / "foreign"
    (foreign / "state").mkdir(parents=True)
    (foreign / "config.yaml").write_text("seed: 1\n")  # another tool's folder
    message = one_line_error(runner.invoke(app, ["train", "--resume", "--run-dir", str(foreign)]))
    assert "is a non-empty folder that is not a flowerft run" in message
