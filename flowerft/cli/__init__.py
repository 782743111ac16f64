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
    # Click's plain help: one column of option names as wide as the longest needs (up to 30), so
    # descriptions keep most of an 80-column terminal; Rich's boxed help gave them 30 columns.
    rich_markup_mode=None,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"flowerft {version('flowerft')}")
        except PackageNotFoundError:  # run from a source folder that was never installed
            typer.echo("flowerft (not installed: no version recorded)")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print flowerft's version and exit."),
) -> None:
    """Transfer learning for image classifiers: Géron's Xception-on-tf_flowers recipe, done right."""


# Each module registers its command on `app` (the order here is the order of `--help`).
from flowerft.cli import backbones_command  # noqa: E402,F401
from flowerft.cli import configs_command  # noqa: E402,F401
from flowerft.cli import explain_command  # noqa: E402,F401
from flowerft.cli import serve_command  # noqa: E402,F401
from flowerft.cli import (  # noqa: E402,F401
    evaluate_command,
    export_command,
    predict_command,
    report_command,
    runs_command,
    train_command,
)
from flowerft.cli.train_command import phase_table  # noqa: E402,F401


def main() -> None:
    app()
