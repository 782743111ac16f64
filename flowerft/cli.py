"""The `flowerft` command line: parse options, build a Config, call one library function.

TensorFlow is imported inside the commands, never at module level, so `--help` is instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from flowerft.backbones import BACKBONES
from flowerft.config import DEFAULTS, RECIPES, given_values, resolve
from flowerft.errors import FlowerftError, Interrupted

app = typer.Typer(
    help="Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def default(key: str) -> str:
    """The help text's default, read from the one place defaults live (and the book's, if other)."""
    def shown(value):
        return "runs/<timestamp>" if key == "run_dir" else "off" if value is None or value is False else value

    book = RECIPES["book"].get(key, DEFAULTS[key])
    other = f"; --recipe book: {shown(book)}" if book != DEFAULTS[key] else ""
    return f" (default: {shown(DEFAULTS[key])}{other})."


@app.callback()
def main_options() -> None:
    """Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right."""


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def native_stderr_silenced():
    """Point stderr's file descriptor at /dev/null: C libraries (TensorFlow's logging, libjpeg)
    write there directly, past Python. Set TF_CPP_MIN_LOG_LEVEL=0 to see what they say."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices with its C++ start-up chatter silenced.

    TF 2.21 logs through absl before TF_CPP_MIN_LOG_LEVEL is read ("Could not find cuda
    drivers", "failed call to cuInit"): noise for a CLI user.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # e.g. TFDS's "no dataset_info.json" before a download


@app.command()
def train(
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML file of config overrides (see configs/).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Image folder with one subfolder per class, for offline use (default: TFDS tf_flowers).")] = None,
    tfds_data_dir: Annotated[Optional[str], typer.Option(help="TFDS data folder that holds (or will hold) tf_flowers.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help=f"Training recipe: {' or '.join(RECIPES)} (Géron's values); the options below override it" + default("recipe"))] = None,
    weights: Annotated[Optional[str], typer.Option(help="Base weights: imagenet, none, or a '_notop' weights file" + default("weights"))] = None,
    backbone: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(BACKBONES)}" + default("backbone"))] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Images are resized to this square size" + default("image_size"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per training step" + default("batch_size"))] = None,
    epochs_head: Annotated[Optional[int], typer.Option(help="Epochs training the new head on the frozen base" + default("epochs_head"))] = None,
    epochs_finetune: Annotated[Optional[int], typer.Option(help="Epochs fine-tuning the unfrozen base" + default("epochs_finetune"))] = None,
    lr_head: Annotated[Optional[float], typer.Option(help="Head-phase learning rate (the schedule's peak)" + default("lr_head"))] = None,
    lr_finetune: Annotated[Optional[float], typer.Option(help="Fine-tune learning rate (the schedule's peak)" + default("lr_finetune"))] = None,
    clipnorm: Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm; 0 turns clipping off" + default("clipnorm"))] = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment",
        help="Randomly flip images left-right, rotate them up to 18 degrees and zoom them by up to 10% in the "
        "training pipeline (Keras preprocessing layers; never in the saved model, so evaluate and predict see "
        "plain images). Turns off the head phase's cached features" + default("augment"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the split, shuffling and initialisation" + default("seed"))] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Where to write this run" + default("run_dir"))] = None,
    mixed_precision: Annotated[bool, typer.Option(help="Mixed precision: float16 on GPUs, bfloat16 elsewhere; output stays float32.")] = False,
    jit_compile: Annotated[bool, typer.Option(help="XLA-compile the training step (GPUs).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --run-dir (default: runs/latest) from its last finished epoch.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in --run-dir.")] = False,
) -> None:
    """Train a new head on a frozen ImageNet base, then fine-tune the whole network."""
    options = dict(
        recipe=recipe, data_dir=data_dir, tfds_data_dir=tfds_data_dir, weights=weights, backbone=backbone,
        image_size=image_size, batch_size=batch_size, epochs_head=epochs_head, epochs_finetune=epochs_finetune,
        lr_head=lr_head, lr_finetune=lr_finetune, clipnorm=clipnorm, augment=augment, seed=seed, run_dir=run_dir,
        # A switch left off keeps whatever the YAML file says.
        mixed_precision=mixed_precision or None, jit_compile=jit_compile or None,
    )
    try:
        given = given_values(config_file, **options)  # the YAML file is read once
        config = resolve(given)
        import_tensorflow_quietly()
        from flowerft import train as training
        from flowerft.progress import training_display

        with training_display(console) as display:
            result = training.run(
                config,
                callbacks=display.callbacks,
                notify=display.notify,
                resume=resume,
                overwrite=overwrite,
                # A resumed run keeps its own options; those given now must agree with them.
                given=given if resume else None,
            )
    except Interrupted as e:
        fail(str(e), code=130)
    except FlowerftError as e:
        fail(str(e))
    except KeyboardInterrupt:  # before training started: nothing to save
        fail("interrupted", code=130)
    console.print(phase_table(result.metrics))
    for warning in result.metrics["warnings"]:
        console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
    console.print(f"Best model: {result.run_dir / result.metrics['best_checkpoint']}", highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    run_dir: Annotated[Optional[str], typer.Option(help="Run to evaluate (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best (best validation accuracy over both phases) or final.")] = "best",
    split: Annotated[str, typer.Option(help="test or valid, as recorded by training.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout and nothing else.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Folder for evaluation.json and the confusion-matrix PNG (default: the run dir).")] = None,
) -> None:
    """Evaluate a trained run: loss, accuracy, top-2, per-class report and confusion matrix."""
    try:
        import_tensorflow_quietly()
        from flowerft import evaluate as evaluation

        result = evaluation.run(run_dir, checkpoint=checkpoint, split=split, output=output)
    except FlowerftError as e:
        fail(str(e))
    except KeyboardInterrupt:  # nothing half-written: every file is renamed into place
        fail("interrupted", code=130)
    if as_json:
        print(json.dumps(result.report, indent=2))
    else:
        show_evaluation(result.report, result.written)
    if result.not_written:
        err_console.print(f"[bold yellow]Warning:[/] {result.not_written}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files and folders (a folder means every image in it).")],
    run_dir: Annotated[Optional[str], typer.Option(help="Run whose model predicts (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or final.")] = "best",
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help='Print [{"path", "top_k": [{"label", "probability"}]}] on stdout.')] = False,
) -> None:
    """Predict the class of image files with a trained run's model."""
    try:
        import_tensorflow_quietly()
        from flowerft import predict as prediction

        # A broken JPEG makes libjpeg and TensorFlow write to stderr themselves; each failure is
        # reported below in one line of ours instead.
        with native_stderr_silenced():
            predictions, failures = prediction.run(images, run_dir=run_dir, checkpoint=checkpoint, k=top_k)
    except FlowerftError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    if as_json:
        print(json.dumps([{"path": p.path, "top_k": p.top_k} for p in predictions], indent=2))
    elif predictions:
        console.print(prediction_table(predictions, max(len(p.top_k) for p in predictions)))
    for failure in failures:
        err_console.print(f"[bold red]Error:[/] {failure.message}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def prediction_table(predictions, k: int) -> Table:
    table = Table(title="Predictions")
    table.add_column("image", overflow="fold")
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}")
    for p in predictions:
        cells = [f"{t['label']} {t['probability']:.1%}" for t in p.top_k]
        table.add_row(p.path, *cells, *[""] * (k - len(cells)))
    return table


def show_evaluation(report: dict, files: list[Path]) -> None:
    summary = Table(title=f"{report['run_dir']} ({report['checkpoint']}, {report['split']} split)")
    for column in ("images", "loss", "accuracy", "top-2 accuracy"):
        summary.add_column(column, justify="right")
    summary.add_row(str(report["examples"]), _num(report["loss"]), _pct(report["accuracy"]), _pct(report["top2_accuracy"]))
    console.print(summary)

    per_class = Table(title="Per class")
    per_class.add_column("class")
    for column in ("precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="right")
    rows = [*report["per_class"].items(), ("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]
    for name, r in rows:
        per_class.add_row(name, _num(r["precision"]), _num(r["recall"]), _num(r["f1-score"]), str(int(r["support"])))
    console.print(per_class)

    names = report["class_names"]
    matrix = Table(title="Confusion matrix (rows: true class, columns: predicted)")
    matrix.add_column("true \\ predicted")
    for name in names:
        matrix.add_column(name, justify="right")
    for name, row in zip(names, report["confusion_matrix"]):
        matrix.add_row(name, *map(str, row))
    console.print(matrix)
    if files:
        console.print("Written: " + ", ".join(map(str, files)), highlight=False, soft_wrap=True)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def phase_table(metrics: dict) -> Table:
    """Per phase: its best epoch with that epoch's validation accuracy and loss, and its last epoch."""
    table = Table(title="Training summary")
    for column in ("phase", "epochs", "best epoch", "val acc", "val loss", "last val acc", "last val loss", "time"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, p in metrics["phases"].items():
        star = " *" if name == metrics["best_phase"] else ""
        table.add_row(
            name + star, f"{p['epochs_run']}/{p['epochs_planned']}", str(p["best_epoch"] or "-"),
            _pct(p["best_val_accuracy"]), _num(p.get("best_epoch_val_loss")), _pct(p["last_val_accuracy"]),
            _num(p["last_val_loss"]), f"{p['wall_time_s']:.0f} s",
        )
    table.caption = "best epoch: highest validation accuracy (counted over both phases); * the phase of the best model"
    return table


def main() -> None:
    app()
