"""Paths and files a user can trust: the one pointer outside a run, runs that move, read-only
runs, readable files, YAML numbers as people write them, and no library noise."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings

import pytest
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config_files import make_config
from flowerft.runs import layout

runner = CliRunner()
FAST = ["--weights", "none", "--backbone", "mobilenet", "--image-size", "32", "--batch-size", "4",
        "--epochs-head", "1", "--epochs-finetune", "0"]


def train(*args):
    result = runner.invoke(app, ["train", *FAST, *args])
    assert result.exit_code == 0, result.output
    return result


def test_a_run_elsewhere_leaves_that_folder_alone_and_is_the_latest(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "latest").write_text("notes\n")
    train("--data-dir", str(folder), "--run-dir", "proj/run1")
    assert (tmp_path / "proj" / "latest").read_text() == "notes\n"  # the user's file is untouched
    assert not (tmp_path / "latest").exists()
    # runs/latest, the one file a run writes outside its folder, names it: plain evaluate finds it.
    assert (tmp_path / "runs" / "latest").read_text().splitlines()[0] == str(tmp_path / "proj" / "run1")
    result = runner.invoke(app, ["evaluate", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["run_dir"] == str(tmp_path / "proj" / "run1")


@pytest.mark.parametrize("what", ["folder", "user file", "one-line note"])
def test_a_latest_that_flowerft_did_not_write_stops_the_run_before_it_starts(tmp_path, what):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    (tmp_path / "runs").mkdir()
    text = {"user file": "my notes\nabout runs\n", "one-line note": "my notes\n"}.get(what)
    if what == "folder":
        (tmp_path / "runs" / "latest").mkdir()
    else:  # a one-line note names a path that does not exist, as a deleted run's pointer would
        (tmp_path / "runs" / "latest").write_text(text)
    message = one_line_error(runner.invoke(app, ["train", *FAST, "--data-dir", str(folder), "--run-dir", "runs/r1"]))
    assert "runs/latest is a" in message and "move it away" in message
    assert not (tmp_path / "runs" / "r1").exists()  # nothing half-made
    if text:
        assert (tmp_path / "runs" / "latest").read_text() == text


def test_flowerfts_own_pointer_is_replaced_even_when_its_run_was_deleted(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    train("--data-dir", str(folder), "--run-dir", "runs/r1")
    shutil.rmtree(tmp_path / "runs" / "r1")
    train("--data-dir", str(folder), "--run-dir", "runs/r2")
    assert (tmp_path / "runs" / "latest").read_text().splitlines()[0] == "r2"


def test_a_runs_root_that_cannot_hold_the_pointer_stops_the_run_before_it_starts(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    (tmp_path / "runs").write_text("not a folder")
    message = one_line_error(runner.invoke(app, ["train", *FAST, "--data-dir", str(folder), "--run-dir", "elsewhere/r1"]))
    assert "cannot write runs/latest" in message and "runs is not a folder" in message
    assert not (tmp_path / "elsewhere").exists()


def test_a_run_started_with_a_relative_data_dir_evaluates_from_anywhere(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "work" / "small", per_class=8)
    monkeypatch.chdir(tmp_path / "work")
    train("--data-dir", "small", "--run-dir", "run")
    config = layout.read_yaml(tmp_path / "work" / "run" / "config.yaml")
    assert config["data_dir"] == str(tmp_path / "work" / "small")
    splits = json.loads((tmp_path / "work" / "run" / "splits.json").read_text())
    assert all(os.path.isabs(path) for path, _ in splits["test"])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--run-dir", str(tmp_path / "work" / "run"), "--json"])
    assert result.exit_code == 0, result.output
    # Resuming with the same relative option from the same folder agrees with the absolute record.
    monkeypatch.chdir(tmp_path / "work")
    assert make_config(data_dir="small").data_dir == "small"
    from flowerft.training.session import resumed_config

    (tmp_path / "work" / "run" / "metrics.json").unlink()
    assert resumed_config(tmp_path / "work" / "run", make_config(), {"data_dir": "small"}).data_dir == config["data_dir"]


@pytest.fixture
def small_run(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    train("--data-dir", str(folder), "--run-dir", str(tmp_path / "run"))
    return tmp_path / "run"


def test_evaluate_on_a_read_only_run_prints_the_report_and_says_where_to_write_it(small_run, monkeypatch, tmp_path):
    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(layout, "write_atomic", read_only)
    before = sorted(p.name for p in small_run.iterdir())
    result = runner.invoke(app, ["evaluate", "--run-dir", str(small_run), "--json"])
    assert result.exit_code == 0, result.output
    report, warning = result.stdout, result.stderr
    assert json.loads(report)["examples"] == 3
    assert warning.count("\n") == 1 and "could not write evaluation.json" in warning
    assert "Read-only file system" in warning and "--output DIR" in warning
    assert sorted(p.name for p in small_run.iterdir()) == before  # nothing half-written
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--run-dir", str(small_run), "--output", "reports"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "evaluation.json").is_file() and (tmp_path / "reports" / "confusion_matrix.png").is_file()


def test_evaluate_names_a_file_given_as_run_dir(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert "is a file, not a folder" in one_line_error(runner.invoke(app, ["evaluate", "--run-dir", "photo.jpg"]))


def test_top_k_is_capped_at_the_number_of_classes(small_run, tmp_path):
    image = next((tmp_path / "flowers" / "daisy").iterdir())
    result = runner.invoke(app, ["predict", str(image), "--run-dir", str(small_run), "--top-k", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)[0]["top_k"]) == 3
    result = runner.invoke(app, ["predict", str(image), "--run-dir", str(small_run), "--top-k", "10"])
    assert "#3" in result.output and "#4" not in result.output


def test_predicting_a_broken_jpeg_prints_only_our_line_on_stderr(small_run, tmp_path):
    good = next((tmp_path / "flowers" / "daisy").iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = subprocess.run([sys.executable, "-m", "flowerft", "predict", str(broken), str(good), "--run-dir", str(small_run)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "daisy" in out.stdout
    assert out.stderr.splitlines() == [f"Error: {broken}: the image is corrupt or truncated"]


def test_class_names_without_glyphs_plot_quietly(tmp_path):
    from flowerft.reporting.evaluate import plot_confusion_matrix

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix([[2, 0], [1, 3]], ["玫瑰", "郁金香"], tmp_path / "cm.png", "run: test split")
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert not [w for w in caught if "Glyph" in str(w.message)]


def test_run_files_follow_the_umask(small_run, tmp_path):
    previous = os.umask(0o022)
    try:
        layout.write_json(tmp_path / "x.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
        os.umask(0o077)
        layout.write_json(tmp_path / "private.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(previous)
    # The run above was written under this process's umask, whatever it is: its files follow it too.
    for name in ("config.yaml", "metrics.json", "class_names.json", "splits.json", "history.json"):
        assert stat.S_IMODE((small_run / name).stat().st_mode) == 0o666 & ~previous, name


def test_yaml_numbers_as_people_write_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr_head: 1e-3\nlr_finetune: .0005\ndecay_head: 1.0e-2\nclipnorm: 2E0\n")
    c = make_config(path)
    assert (c.lr_head, c.lr_finetune, c.decay_head, c.clipnorm) == (0.001, 0.0005, 0.01, 2.0)
    path.write_text('backbone: "1e-3"\n')  # quoted text stays text
    with pytest.raises(Exception, match="backbone"):
        make_config(path)
