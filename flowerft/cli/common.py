"""What every command shares: the consoles, one-line errors, and TensorFlow's quiet import."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from flowerft.config import DEFAULTS, RECIPES
from flowerft.errors import FlowerftError

console = Console()
err_console = Console(stderr=True)


def default(key: str) -> str:
    """The help text's default, read from the one place defaults live (and the book's, if other)."""
    def shown(value):
        return "runs/<timestamp>" if key == "run_dir" else "off" if value is None or value is False else value

    book = RECIPES["book"].get(key, DEFAULTS[key])
    other = f"; --recipe book: {shown(book)}" if book != DEFAULTS[key] else ""
    return f" (default: {shown(DEFAULTS[key])}{other})."


def fail(message: str, code: int = 1) -> None:
    # Escaped: a message is plain text, and "flowerft[mlflow]" or a path with brackets must print as written.
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def one_line_errors(interrupted: str | Callable[[], str] = "interrupted"):
    """Every command's error tail: a FlowerftError is its own one line (exit 1), Ctrl-C is
    `interrupted` (exit 130; a function, to say what was kept at the moment it was pressed)."""
    try:
        yield
    except FlowerftError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(interrupted() if callable(interrupted) else interrupted, code=130)


def report_and_exit_now(message: str, code: int = 1) -> None:
    """`fail`, then leave at once (os._exit): for a process whose runtime is broken beyond a clean shutdown."""
    try:
        fail(message, code)
    except typer.Exit:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    # TensorFlow's Python warnings (a 10-line "tf.function retracing" when fine-tuning part of a
    # base) would tear the live display; they speak to TensorFlow's developers, not to a user.
    tf.get_logger().setLevel("ERROR")


def check_run_exists(run_dir: str | None) -> None:
    """Say a missing run at once, before TensorFlow's import takes its seconds (the command checks it again)."""
    from flowerft.runs import layout  # plain files and YAML: no TensorFlow

    layout.find_run(run_dir)


def pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
