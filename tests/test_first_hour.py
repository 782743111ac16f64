"""What a new user tripped on in the first hour (issue 26): each case as they met it."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import make_image_folder, one_line_error
from typer.testing import CliRunner

from flowerft.cli import app

runner = CliRunner()
FAST = ["--weights", "none", "--backbone", "mobilenet", "--image-size", "32", "--batch-size", "4",
        "--epochs-finetune", "1"]


def test_a_refused_overwrite_of_a_folder_that_is_not_a_run_leaves_it_as_it_was(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=4)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("buy milk\n")
    message = one_line_error(runner.invoke(app, ["train", *FAST, "--data-dir", str(folder), "--run-dir", "notes",
                                                 "--overwrite"]))
    assert "is a non-empty folder that is not a flowerft run" in message
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]  # no train.lock left behind


def test_resume_of_a_finished_run_in_a_read_only_folder_exits_0(trained_run, tmp_path, monkeypatch):
    run = shutil.copytree(trained_run, tmp_path / "shared" / "run")
    before = sorted(p.name for p in run.iterdir())
    os.chmod(run, 0o555)
    real_access = os.access
    # As root every folder is writable: say what a user without write access would be told.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and os.path.abspath(path)
                                                                    == str(run)) and real_access(path, mode, **kw))
    try:
        result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run)])
        assert result.exit_code == 0, result.output
        assert "finished training already; nothing to resume" in result.output
        assert sorted(p.name for p in run.iterdir()) == before  # nothing written, no lock taken
    finally:
        os.chmod(run, 0o755)


def test_keras_download_chatter_does_not_precede_the_offline_error(monkeypatch, capsys):
    import keras

    from flowerft.backbones.registry import get_backbone
    from flowerft.errors import OfflineError
    from flowerft.model import make_base

    def offline(**kwargs):  # what keras.utils.get_file does without a network
        print("Downloading data from https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/x.h5")
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNet", offline)
    with pytest.raises(OfflineError):
        make_base(get_backbone("mobilenet"), 32, "imagenet")
    assert "Downloading" not in capsys.readouterr().out


def test_libjpeg_complaints_about_broken_files_stay_out_of_train(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=6)
    good = (folder / "roses" / "roses_000.jpg").read_bytes()
    (folder / "roses" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "daisy" / "text.jpg").write_text("not an image")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "flowerft", "train", *FAST, "--data-dir", str(folder),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 files" in proc.stdout
    assert proc.stderr == "", proc.stderr  # no "Improper call to JPEG library", no TensorFlow log lines


def test_bfloat16_emulated_on_this_cpu_is_warned(monkeypatch):
    from flowerft import precision
    from flowerft.config_files import make_config

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda *a: False)
    assert "no native bfloat16" in precision.slow_warning(make_config(precision="bfloat16"))
    assert precision.slow_warning(make_config(precision="float32")) is None
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda *a: True)
    assert precision.slow_warning(make_config(precision="bfloat16")) is None


def test_version_and_help_say_what_a_newcomer_asks():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"flowerft {version('flowerft')}"
    report_help = " ".join(runner.invoke(app, ["report", "--help"]).output.split())
    assert "into the run dir" in report_help and "--output" in report_help and "R/" not in report_help
    for command in ("evaluate", "export", "predict"):
        assert "[default:" not in runner.invoke(app, [command, "--help"]).output  # one style: (default: ...)


def test_unknown_keys_get_the_close_one_and_broken_yaml_its_line(tmp_path):
    from flowerft.config_files import make_config
    from flowerft.errors import ConfigError

    (tmp_path / "typo.yaml").write_text("lr_haed: 0.1\n")
    with pytest.raises(ConfigError, match=r"^lr_haed: unknown config key; did you mean lr_head\?$"):
        make_config(tmp_path / "typo.yaml")
    (tmp_path / "broken.yaml").write_text("lr_head: 0.1\nepochs_head: [1\nseed: 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line 3, column 5"):
        make_config(tmp_path / "broken.yaml")


def test_the_example_configs_ship_with_the_package_and_copy_out(tmp_path):
    from flowerft.config_files import make_config, shipped_configs

    shipped = shipped_configs()
    assert {"stable", "offline-mobilenet"} <= set(shipped)
    listing = runner.invoke(app, ["configs"], env={"COLUMNS": "80"})
    assert listing.exit_code == 0 and "offline-mobilenet" in listing.output
    assert max(map(len, listing.output.splitlines())) <= 80
    result = runner.invoke(app, ["configs", "--copy", "stable", "--to", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "stable.yaml").read_text() == shipped["stable"].read_text()
    assert "exists already" in one_line_error(runner.invoke(app, ["configs", "--copy", "stable", "--to", str(tmp_path / "mine")]))
    assert make_config("stable") == make_config(recipe="book", clipnorm=1.0)  # --config NAME takes a shipped example


def test_the_model_card_and_the_report_speak_plainly(trained_run, tmp_path):
    from flowerft.reporting import html_page
    from flowerft.serving import model_card

    assert model_card.epochs(1) == "1 epoch" and model_card.epochs(10) == "10 epochs"
    assert [html_page._yaml_value(v) for v in (None, False, 0.001, "xception")] == ["null", "false", "0.001", "xception"]
    out = tmp_path / "pages"
    result = runner.invoke(app, ["report", "--run-dir", str(trained_run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "<code>finetune_from</code> null" in html and "<code>augment</code> none" in html
    assert "</code> None</div>" not in html and "</code> False</div>" not in html
    assert not (trained_run / "report.html").exists()  # --output: the run is left as it was


@pytest.mark.parametrize("args", [["evaluate"], ["predict", "x.jpg"], ["report"], ["export"],
                                  ["export", "--format", "onnx"]])
def test_what_needs_no_tensorflow_is_said_before_importing_it(args, tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from flowerft.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); print(r.exit_code, 'tensorflow' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.startswith("1 False"), out  # the error came first, TensorFlow (seconds) was never imported
    assert "no run found" in out or "format must be one of" in out


def test_train_help_reads_at_80_columns():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and max(map(len, lines)) <= 80
    assert len(lines) < 100, len(lines)  # Rich's boxed help took 154 lines, descriptions 22 columns wide
    batch = next(line for line in lines if line.lstrip().startswith("--batch-size"))
    assert "Images per training step" in batch  # the description starts on the option's own line
