"""`flowerft report`: one HTML page on a run (curves, evaluation, mistakes), optionally opened in a browser."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowerft.cli.common import (
    check_run_exists,
    console,
    err_console,
    fail,
    import_tensorflow_quietly,
    native_stderr_silenced,
    one_line_errors,
)
from flowerft.errors import EvaluationFailed


def report(
    run_dir: Annotated[Optional[str], typer.Option(help="Run to report on (default: the one runs/latest names).")] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in the default browser, when there is one.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Folder for report.html, curves.png and any evaluation it runs (default: the run dir).")] = None,
) -> None:
    """Write report.html into the run dir: the run, its training curves, the test evaluation and its worst mistakes."""
    with one_line_errors():  # Ctrl-C leaves nothing half-written: every file is renamed into place
        check_run_exists(run_dir)
        import_tensorflow_quietly()  # evaluating first, when needed, loads the model
        from flowerft.reporting import report as reporting

        def notify(message: str) -> None:
            console.print(message, highlight=False, soft_wrap=True)

        try:
            with native_stderr_silenced():
                page = reporting.run(run_dir, notify=notify, output=output)
        except EvaluationFailed as e:  # the page is written, without its evaluation
            console.print(f"Written: {e.page}", highlight=False, soft_wrap=True)
            fail(str(e))
    console.print(f"Written: {page}", highlight=False, soft_wrap=True)
    from flowerft.training import tracking

    if problem := tracking.log_outputs(page.parent):  # a run trained with --track: the page and evaluation too
        err_console.print(f"[bold yellow]Warning:[/] {problem}", highlight=False, soft_wrap=True)
    if open_page and not _open(page.resolve().as_uri()):
        err_console.print(f"[bold yellow]Warning:[/] no browser found to open it; open {page} yourself",
                          highlight=False, soft_wrap=True)


def _open(uri: str) -> bool:
    try:
        return webbrowser.open(uri)
    except webbrowser.Error:
        return False
