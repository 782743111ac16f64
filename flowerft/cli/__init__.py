"""The `flowerft` command line: parse options, build a Config, call one library function.

One file per command; TensorFlow is imported inside the commands, never at module level, so
`--help` is instant.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options() -> None:
    """Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right."""


# Each module registers its command on `app` (the order here is the order of `--help`).
from flowerft.cli import (  # noqa: E402,F401
    train_command, evaluate_command, predict_command, export_command, report_command, runs_command,
)
from flowerft.cli import serve_command  # noqa: E402,F401
from flowerft.cli.train_command import phase_table  # noqa: E402,F401


def main() -> None:
    app()
