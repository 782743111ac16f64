"""The CLI: options reach the Config, errors are one line with a non-zero exit code."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import closed_port, error_of, make_image_folder
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.config import Config, to_dict
from flowerft.config_files import make_config
from flowerft.training import session
from flowerft.training.session import RunResult
from flowerft.training.summary import PhaseResult, summarize

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Patch the training call and keep the Config it receives."""
    seen = {}

    def fake_run(config, callbacks, notify, resume, overwrite, given):
        seen["config"], seen["given"] = config, given
        notify("fake run")
        metrics = summarize(PhaseResult("head", 0), PhaseResult("finetune", 0), "checkpoints/final.keras")
        return RunResult(tmp_path, metrics)

    monkeypatch.setattr(session, "run", fake_run)
    return seen


def test_train_without_arguments_uses_the_default_recipe(captured):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 0, result.output
    assert captured["config"] == Config()
    assert "Training summary" in result.output


def test_flags_override_the_yaml_file(captured, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs_head: 2\nlr_head: 0.05\nclipnorm: 0.5\n")
    result = runner.invoke(app, [
        "train", "--config", str(path), "--epochs-head", "3", "--epochs-finetune", "0",
        "--weights", "none", "--backbone", "mobilenet", "--image-size", "96", "--batch-size", "16",
        "--lr-finetune", "0.001", "--seed", "7", "--run-dir", "r", "--tfds-data-dir", "t",
        "--mixed-precision", "--jit-compile",
    ])
    assert result.exit_code == 0, result.output
    c = captured["config"]
    assert (c.epochs_head, c.lr_head, c.clipnorm, c.epochs_finetune) == (3, 0.05, 0.5, 0)
    assert (c.data_dir, c.weights, c.backbone, c.image_size, c.batch_size) == (None, "none", "mobilenet", 96, 16)
    assert (c.lr_finetune, c.seed, c.run_dir, c.tfds_data_dir) == (0.001, 7, "r", "t")
    assert c.precision == "mixed" and c.jit_compile  # --mixed-precision: the older spelling of --precision mixed


def test_memory_and_partial_fine_tuning_flags_reach_the_config(captured):
    result = runner.invoke(app, ["train", "--precision", "bfloat16", "--micro-batch", "8", "--finetune-blocks", "2"])
    assert result.exit_code == 0, result.output
    c = captured["config"]
    assert (c.precision, c.micro_batch, c.finetune_blocks, c.finetune_from) == ("bfloat16", 8, 2, None)
    assert runner.invoke(app, ["train", "--finetune-from", "block13_sepconv1_act"]).exit_code == 0
    assert captured["config"].finetune_from == "block13_sepconv1_act"


def test_resume_is_told_exactly_what_was_given(captured, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache: file\n")
    # --epochs-head 5 is the default, and still given: resume must check it against the run.
    args = ["train", "--resume", "--config", str(path), "--epochs-head", "5", "--run-dir", "r"]
    assert runner.invoke(app, args).exit_code == 0
    assert captured["given"] == {"cache": "file", "epochs_head": 5, "run_dir": "r"}
    assert runner.invoke(app, ["train"]).exit_code == 0
    assert captured["given"] is None  # a new run checks nothing against an old one


def test_switches_left_off_keep_the_yaml_value(captured, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: true\naugment: true\ncache: file\n")
    assert runner.invoke(app, ["train", "--config", str(path)]).exit_code == 0
    c = captured["config"]
    assert c.precision == "mixed" and c.augment == "basic" and c.cache == "file" and not c.jit_compile and not c.ema


def test_show_config_prints_the_resolved_config_as_yaml_and_trains_nothing(captured, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr_finetune: 0.002\nclipnorm: 0.5\n")
    args = ["train", "--recipe", "book", "--config", str(path), "--epochs-head", "2", "--mixed-precision", "--show-config"]
    code = ("import sys; from typer.testing import CliRunner; from flowerft.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); print(r.exit_code, 'tensorflow' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path).stdout
    code_and_tf, _, printed = out.partition("\n")
    assert code_and_tf == "0 False", out  # printed without importing TensorFlow (seconds)
    shown = yaml.safe_load(printed)
    # defaults < --recipe book < the file < flags, every key spelled as a run's config.yaml spells it
    expected = make_config(path, recipe="book", epochs_head=2, mixed_precision=True)
    assert Config(**shown) == expected and list(shown) == list(to_dict(expected))
    assert (expected.lr_head, expected.lr_finetune, expected.clipnorm, expected.precision) == (0.2, 0.002, 0.5, "mixed")
    result = runner.invoke(app, ["train", "--show-config", "--weights", "none"])
    assert result.exit_code == 0 and "config" not in captured  # nothing trained
    assert Config(**yaml.safe_load(result.output)) == make_config(weights="none")
    assert "lr_head: must be greater than 0" in error_of(["train", "--show-config", "--lr-head", "-1"])


def test_help_lists_every_option_with_its_default():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--config", "--data-dir", "--tfds-data-dir", "--weights", "--backbone", "--image-size",
                   "--batch-size", "--epochs-head", "--epochs-finetune", "--lr-head", "--lr-finetune",
                   "--clipnorm", "--seed", "--run-dir"):
        assert option in result.output
    assert "--recipe" in result.output and "--augment" in result.output
    assert "(default: 0.02; --recipe book: 0.2)" in " ".join(result.output.replace("│", " ").split())


def test_every_train_option_shows_its_default_from_config():
    """Every option that sets a Config field names that field's default (from Config, the one home)."""
    import typer.main

    from flowerft.cli.common import default
    from flowerft.config import DEFAULTS

    command = typer.main.get_command(app).commands["train"]
    text = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=200).output.replace("│", " ").split())
    starts = sorted(text.index(f"{p.opts[0]} ") for p in command.params if p.opts[0].startswith("--"))
    options = [p for p in command.params if p.name in DEFAULTS]
    assert len(options) >= 20  # the train command sets most of Config
    # None here means "this source is not used" or "the library's own folder": nothing to show.
    unset_means_absent = {"tfds_data_dir", "labels", "hf_dataset"}
    for option in options:
        start = text.index(f"{option.opts[0]} ")
        end = next((i for i in starts if i > start), len(text))
        help_text = text[start:end]  # up to the next option
        if option.default is not None:  # a switch whose default is the flag's own: it must be Config's
            assert option.default == DEFAULTS[option.name], option.name
        elif DEFAULTS[option.name] is not None:  # unset: Config's value applies, and the help says which
            shown = " ".join(default(option.name).split())[:-1]  # without the final full stop
            assert shown in help_text, (option.name, help_text)
        elif option.name not in unset_means_absent:  # Config's None: off, or what applies instead, in words
            assert "(default: " in help_text, (option.name, help_text)


def test_recipe_and_augment_flags(captured, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("augment: true\nlr_head: 0.1\n")
    assert runner.invoke(app, ["train", "--recipe", "book", "--config", str(path), "--no-augment"]).exit_code == 0
    c = captured["config"]
    assert (c.recipe, c.lr_head, c.lr_finetune, c.clipnorm, c.augment) == ("book", 0.1, 0.01, None, "none")
    assert runner.invoke(app, ["train", "--augment", "mixup+randaugment", "--ema"]).exit_code == 0
    c = captured["config"]
    assert (c.augment, c.ema, c.ema_momentum, c.recipe) == ("randaugment+mixup", True, 0.99, "flowerft")
    assert "mixup or cutmix, not both), got 'mixup+cutmix'" in error_of(["train", "--augment", "mixup+cutmix"])
    assert "older spelling of --augment none" in error_of(["train", "--augment", "basic", "--no-augment"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs-head", "-1"], "epochs_head: must be 0 or more"),
        (["--image-size", "32"], "image_size: must be at least 71"),
        (["--backbone", "vgg99"], "backbone: unknown backbone 'vgg99'"),
        (["--recipe", "geron"], "recipe: must be one of flowerft, book, got 'geron'"),
        (["--weights", "/no/such/file.h5"], "weights: /no/such/file.h5 is neither"),
        (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
        (["--data-dir", "/no/such/dir", "--weights", "none"], "data dir /no/such/dir does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, message):
    assert message in error_of(["train", *args])


def test_empty_data_dir_and_empty_class_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "has no class subfolders" in error_of(["train", "--data-dir", str(tmp_path / "empty"), "--weights", "none"])
    root = make_image_folder(tmp_path / "f", per_class=2)
    (root / "tulips").mkdir()
    assert "tulips has no images" in error_of(["train", "--data-dir", str(root), "--weights", "none"])


def test_unknown_config_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch_head: 3\n")
    assert "epoch_head: unknown config key" in error_of(["train", "--config", str(path)])


def test_unwritable_run_dir(tmp_path, image_folder):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    message = error_of(["train", "--data-dir", str(image_folder), "--weights", "none", "--image-size", "71",
                        "--run-dir", str(blocker / "run")])
    assert "cannot write to run dir" in message


def test_offline_tfds_fails_fast_with_the_remedy(tmp_path, monkeypatch):
    from flowerft.data import network, tfds_datasets

    monkeypatch.setattr(tfds_datasets, "TFDS_DOWNLOAD_HOST", ("127.0.0.1", closed_port()))
    start = time.monotonic()
    message = error_of(["train", "--tfds-data-dir", str(tmp_path)])
    assert time.monotonic() - start < network.NETWORK_PROBE_SECONDS  # refused at once, not the probe's timeout
    assert "--data-dir" in message and "--tfds-data-dir" in message


def test_help_does_not_import_tensorflow():
    # Each command's --help really runs (Typer exits 0 through SystemExit), then we look.
    code = """
import sys
from flowerft.cli import app
for args in (["--help"], *([c, "--help"] for c in ("train", "evaluate", "predict", "export", "report", "runs", "explain", "serve"))):
    try:
        app(args)
    except SystemExit as e:
        assert e.code == 0, (args, e.code)
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--resume" in out.stdout and "--top-k" in out.stdout and "--max-mb" in out.stdout  # the helps were printed
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_python_dash_m_and_the_installed_console_script_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flowerft", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout
    script = Path(sys.executable).with_name("flowerft")  # what `pip install .` put beside python
    assert script.is_file(), f"no console script at {script}: is the package installed?"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "evaluate", "predict"))
    out = subprocess.run([str(script), "evaluate", "--run-dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("Error:") and "does not exist" in out.stderr
