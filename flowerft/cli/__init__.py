"""The `flowerft` command line: parse options, build a Config, call one library function.

One module per command, each defining a plain function; they are registered on `app` here.
TensorFlow is imported inside the commands, never at module level, so `--help` is instant.
"""

from __future__ import annotations

import typer

from flowerft.cli import (
    backbones_command,
    configs_command,
    evaluate_command,
    explain_command,
    export_command,
    lr_find_command,
    predict_command,
    report_command,
    runs_command,
    serve_command,
    train_command,
)

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


# Typer's pattern for commands in other modules; the order here is the order of `--help`.
app.command()(backbones_command.backbones)
app.command()(configs_command.configs)
app.command()(explain_command.explain)
app.command()(serve_command.serve)
app.command()(evaluate_command.evaluate)
app.command()(export_command.export)
app.command(name="lr-find")(lr_find_command.lr_find)
app.command()(predict_command.predict)
app.command()(report_command.report)
app.command()(runs_command.runs)
app.command()(train_command.train)


def main() -> None:
    app()
