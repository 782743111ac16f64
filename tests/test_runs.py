"""flowerft runs: finished, interrupted, in-progress and foreign folders, newest first, the best marked."""

import json
import os

import pytest
import yaml
from helpers import one_line_error
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.runs import listing, lock

runner = CliRunner()
CONFIG = dict(backbone="xception", image_size=96, epochs_head=3, lr_head=0.02, epochs_finetune=2, lr_finetune=0.001)


def make_run(root, name, started, *, finished=None, interrupted=None, evaluated=None):
    """A run dir as `train` leaves it: config.yaml, then metrics.json (finished) or state/ (interrupted)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    if finished is not None:
        phases = {"head": {"epochs_run": 3, "wall_time_s": 40.0}, "finetune": {"epochs_run": 2, "wall_time_s": 260.0}}
        (run / "metrics.json").write_text(json.dumps({"phases": phases, "best_val_accuracy": finished}))
    if interrupted is not None:
        (run / "state").mkdir()
        (run / "state" / "initial.weights.h5").write_bytes(b"")
        head = {"history": [{"epoch": e, "val_accuracy": v} for e, v in enumerate(interrupted, 1)], "wall_time_s": 30.0}
        progress = {"phase": "finetune", "history": [{"epoch": 4, "val_accuracy": 0.5}], "wall_time_s": 100.0, "head": head}
        (run / "state" / "progress.json").write_text(json.dumps(progress))
    if evaluated is not None:  # the accuracy alone: an evaluation.json older than balanced accuracy and macro F1
        (run / "evaluation.json").write_text(json.dumps(evaluated if isinstance(evaluated, dict) else {"accuracy": evaluated}))
    os.utime(run / "config.yaml", (started, started))
    return run


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "old-good", 1_000, finished=0.97, evaluated={"accuracy": 0.961, "balanced_accuracy": 0.923, "macro_f1": 0.9312})
    make_run(root, "newer-worse", 2_000, finished=0.90, evaluated=0.884)
    make_run(root, "killed", 3_000, interrupted=[0.8, 0.93, 0.9])
    make_run(root, "died-early", 4_000)  # config.yaml only: stopped before training began
    (root / "holiday-photos").mkdir()
    (root / "holiday-photos" / "beach.jpg").write_bytes(b"x")
    os.utime(root / "holiday-photos", (500, 500))
    (root / "latest").write_text("killed\n")  # flowerft's pointer: a file, not a run
    return root


def test_each_folder_gets_its_status_and_figures_newest_first(root):
    rows = {r.name: r for r in listing.list_runs(root)}
    assert [r.name for r in listing.list_runs(root)] == ["died-early", "killed", "newer-worse", "old-good", "holiday-photos"]
    assert rows["old-good"].status == "finished" and rows["old-good"].best
    assert (rows["old-good"].epochs_run, rows["old-good"].epochs_planned) == (5, 5)
    assert rows["old-good"].test_accuracy == 0.961 and rows["old-good"].wall_time_s == 300.0
    assert (rows["old-good"].test_balanced_accuracy, rows["old-good"].test_macro_f1) == (0.923, 0.9312)
    newer = rows["newer-worse"]
    assert not newer.best and newer.test_accuracy == 0.884
    assert newer.test_balanced_accuracy is None and newer.test_macro_f1 is None  # evaluated before these scores
    assert rows["killed"].test_accuracy is None and rows["killed"].test_balanced_accuracy is None
    killed = rows["killed"]
    assert killed.status == "interrupted (resumable)" and not killed.best
    assert (killed.epochs_run, killed.best_val_accuracy, killed.wall_time_s) == (4, 0.93, 130.0)
    assert rows["died-early"].status == "incomplete"
    assert rows["holiday-photos"].status == "not a run" and rows["holiday-photos"].backbone is None


def test_a_run_whose_lock_is_held_is_in_progress(root):
    (root / "killed" / lock.LOCK).write_text("process 1 on gone, since yesterday\n")
    assert listing.status(root / "killed") == "interrupted (resumable)"  # a lock file nobody holds: a killed run
    with lock.hold(root / "killed"):  # as `train` does while it trains
        assert listing.status(root / "killed") == "in progress"
    assert listing.status(root / "killed") == "interrupted (resumable)"


def test_runs_table_reads_at_80_columns(root):
    result = runner.invoke(app, ["runs", "--runs-root", str(root)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80
    for name in ("old-good *", "newer-worse", "killed", "died-early", "holiday-photos"):
        assert any(name in line for line in lines), name  # names whole, on one line
    at = next(i for i, line in enumerate(lines) if "old-good" in line)
    row = lines[at]
    assert "97.0%" in row and "96.1%" in row and "5/5" in row and "300 s" in row
    # No room for two more columns: balanced accuracy and macro F1 under the test accuracy, the caption says so.
    test_column = slice(row.index("96.1%"), row.index("96.1%") + 5)
    assert [line[test_column] for line in lines[at:at + 3]] == ["96.1%", "92.3%", "0.931"]
    at = next(i for i, line in enumerate(lines) if "newer-worse" in line)
    assert [line[test_column].strip() for line in lines[at:at + 3]] == ["88.4%", "-", "-"]
    assert "under it balanced accuracy and macro F1" in " ".join(result.output.split())
    assert "interrupted" in result.output and "(resumable)" in result.output and "not a run" in result.output


def test_runs_table_takes_one_line_a_run_when_the_terminal_is_wide(root):
    result = runner.invoke(app, ["runs", "--runs-root", str(root)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 120
    assert any("interrupted (resumable)" in line and "killed" in line for line in lines), result.output
    assert not any(line.strip() in ("(resumable)", "32px", "96px") for line in lines), result.output
    assert " ".join(next(line for line in lines if "old-good" in line).split()[-6:]) == "97.0% 96.1% 92.3% 0.931 300 s"
    assert " ".join(next(line for line in lines if "newer-worse" in line).split()[-6:]) == "90.0% 88.4% - - 300 s"
    assert "bal: balanced accuracy; F1: macro F1" in " ".join(result.output.split())


def test_runs_json(root):
    result = runner.invoke(app, ["runs", "--runs-root", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows if r["best"]] == ["old-good"]
    good = next(r for r in rows if r["name"] == "old-good")
    assert (good["test_accuracy"], good["test_balanced_accuracy"], good["test_macro_f1"]) == (0.961, 0.923, 0.9312)
    assert rows[0]["status"] == "incomplete" and rows[0]["started"].startswith("1970-01-01")


def test_runs_errors_and_empty_root(tmp_path):
    assert "is not a folder" in one_line_error(runner.invoke(app, ["runs", "--runs-root", str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["runs", "--runs-root", str(tmp_path / "empty")])
    assert result.exit_code == 0 and "No runs in" in result.output
