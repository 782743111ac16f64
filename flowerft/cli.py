"""The `flowerft` command line: parse options, build a Config, call one library function.

TensorFlow is imported inside the commands, never at module level, so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from flowerft.backbones import BACKBONES
from flowerft.config import DEFAULTS, make_config
from flowerft.errors import FlowerftError

app = typer.Typer(
    help="Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def default(key: str) -> str:
    """The help text's default, read from the one place defaults live."""
    value = DEFAULTS[key]
    shown = "runs/<timestamp>" if key == "run_dir" else "off" if value is None else value
    return f" (default: {shown})."


@app.callback()
def main_options() -> None:
    """Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right."""


def fail(message: str) -> None:
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices with its C++ start-up chatter silenced.

    TF 2.21 logs through absl before TF_CPP_MIN_LOG_LEVEL is read ("Could not find cuda
    drivers", "failed call to cuInit"): noise for a CLI user, so stderr's file descriptor is
    pointed at /dev/null for the import. Set TF_CPP_MIN_LOG_LEVEL=0 to see it.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") == "0":
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # e.g. TFDS's "no dataset_info.json" before a download


@app.command()
def train(
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML file of config overrides (see configs/).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Image folder with one subfolder per class, for offline use (default: TFDS tf_flowers).")] = None,
    tfds_data_dir: Annotated[Optional[str], typer.Option(help="TFDS data folder that holds (or will hold) tf_flowers.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Base weights: imagenet, none, or a '_notop' weights file" + default("weights"))] = None,
    backbone: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(BACKBONES)}" + default("backbone"))] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Images are resized to this square size" + default("image_size"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per training step" + default("batch_size"))] = None,
    epochs_head: Annotated[Optional[int], typer.Option(help="Epochs training the new head on the frozen base" + default("epochs_head"))] = None,
    epochs_finetune: Annotated[Optional[int], typer.Option(help="Epochs fine-tuning the unfrozen base" + default("epochs_finetune"))] = None,
    lr_head: Annotated[Optional[float], typer.Option(help="Head-phase learning rate, decayed per step" + default("lr_head"))] = None,
    lr_finetune: Annotated[Optional[float], typer.Option(help="Fine-tune learning rate, decayed per step" + default("lr_finetune"))] = None,
    clipnorm: Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm; 1 stabilises fine-tuning" + default("clipnorm"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the split, shuffling and initialisation" + default("seed"))] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Where to write this run" + default("run_dir"))] = None,
) -> None:
    """Train a new head on a frozen ImageNet base, then fine-tune the whole network."""
    try:
        config = make_config(
            config_file, data_dir=data_dir, tfds_data_dir=tfds_data_dir, weights=weights, backbone=backbone,
            image_size=image_size, batch_size=batch_size, epochs_head=epochs_head, epochs_finetune=epochs_finetune,
            lr_head=lr_head, lr_finetune=lr_finetune, clipnorm=clipnorm, seed=seed, run_dir=run_dir,
        )
        import_tensorflow_quietly()
        from flowerft import train as training
        from flowerft.progress import RichProgress, make_progress

        with make_progress(console) as progress:
            result = training.run(
                config,
                callbacks=lambda phase: [RichProgress(progress, phase)],
                notify=lambda message: progress.console.print(message, highlight=False),
            )
    except FlowerftError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
    console.print(phase_table(result.metrics))
    for warning in result.metrics["warnings"]:
        console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False)
    console.print(f"Best model: {result.run_dir / result.metrics['best_checkpoint']}", highlight=False)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def phase_table(metrics: dict) -> Table:
    table = Table(title="Training summary")
    for column in ("phase", "epochs", "best val acc", "best val loss", "last val acc", "last val loss", "time"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, p in metrics["phases"].items():
        star = " *" if name == metrics["best_phase"] else ""
        table.add_row(
            name + star, f"{p['epochs_run']}/{p['epochs_planned']}", _pct(p["best_val_accuracy"]),
            _num(p["best_val_loss"]), _pct(p["last_val_accuracy"]), _num(p["last_val_loss"]),
            f"{p['wall_time_s']:.0f} s",
        )
    return table


def main() -> None:
    app()
