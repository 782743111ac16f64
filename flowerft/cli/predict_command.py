"""`flowerft predict`: classes of image files, as a table or JSON."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from flowerft.cli.common import (
    check_run_exists,
    console,
    err_console,
    fail,
    import_tensorflow_quietly,
    native_stderr_silenced,
    one_line_errors,
)


def predict(
    images: Annotated[list[str], typer.Argument(help="Image files and folders (a folder means every image in it).")],
    run_dir: Annotated[Optional[str], typer.Option(help="Run whose model predicts (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="best or final (default: best).")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model instead of a run: a SavedModel folder or a .tflite, .onnx or .keras file.")] = None,
    top_k: Annotated[int, typer.Option(show_default=False, help="How many classes to list per image (default: 3).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help='Print [{"path", "top_k": [{"label", "probability"}]}] on stdout.')] = False,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write one row per image to this CSV file (path, label_1, probability_1, ..., error), as they come.")] = None,
    jsonl_path: Annotated[Optional[Path], typer.Option("--jsonl", help='Write one JSON line per image to this file ({"path", "top_k"} or {"path", "error"}).')] = None,
) -> None:
    """Predict the class of image files with a trained run's model, or with a model it exported."""
    if model is not None and (run_dir is not None or checkpoint is not None):
        fail(f"--model {model} is a model already: give it without --run-dir and --checkpoint")
    if sum(x is not None and x is not False for x in (csv_path, jsonl_path, as_json or None)) > 1:
        fail("give one of --csv, --jsonl and --json")
    if csv_path is not None or jsonl_path is not None:
        predict_to_file(images, run_dir, checkpoint, model, top_k, csv_path or jsonl_path, "csv" if csv_path else "jsonl")
        return
    with one_line_errors():
        if model is None:
            check_run_exists(run_dir)
        import_tensorflow_quietly()
        from flowerft.serving import predict as prediction

        # A broken JPEG makes libjpeg and TensorFlow write to stderr themselves; each failure is
        # reported below in one line of ours instead.
        with native_stderr_silenced():
            predictions, failures = prediction.run(images, run_dir=run_dir, checkpoint=checkpoint or "best", k=top_k,
                                                   model_path=model)
    if as_json:
        print(json.dumps([{"path": p.path, "top_k": p.top_k} for p in predictions], indent=2))
    elif predictions:
        console.print(prediction_table(predictions, max(len(p.top_k) for p in predictions)))
    for failure in failures:
        err_console.print(f"[bold red]Error:[/] {failure.message}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def predict_to_file(images, run_dir, checkpoint, model, top_k, out_path: Path, fmt: str) -> None:
    """Every image's row written as it is predicted (constant memory), with a progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    counts = {"predicted": 0, "failed": 0}
    with one_line_errors(lambda: f"interrupted; {out_path} holds the rows of the first {sum(counts.values())} images"):
        import_tensorflow_quietly()
        from flowerft.serving import predict as prediction

        with native_stderr_silenced():
            predictor, batch_size, entries, k = prediction.prepare(images, run_dir, checkpoint or "best", top_k, model)
        try:
            out = open(out_path, "w", newline="", encoding="utf-8")
        except OSError as e:
            fail(f"cannot write {out_path}: {e.strerror or e}; give another path")
        columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with out, bar_console() as bar, Progress(*columns, console=bar, transient=True) as progress, \
                native_stderr_silenced():
            task = progress.add_task("predict", total=len(entries))
            for result in prediction.write_rows(prediction.stream_in_order(entries, predictor, batch_size, k), out, fmt, k):
                counts["failed" if isinstance(result, prediction.Failure) else "predicted"] += 1
                progress.advance(task)
    failed = f", {counts['failed']} could not be read (the error column says why)" if counts["failed"] else ""
    err_console.print(f"{counts['predicted']} images predicted{failed}: {out_path}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def bar_console():
    """A console on a copy of stderr's descriptor: stderr itself is silenced while libjpeg and
    TensorFlow would write about each broken file (its row says why instead)."""
    try:
        stream = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    except (OSError, ValueError):  # stderr is no file (a test's CliRunner): no bar to keep visible
        yield err_console
        return
    with stream:
        yield Console(file=stream, stderr=True)


def prediction_table(predictions, k: int) -> Table:
    table = Table(title="Predictions")
    table.add_column("image")
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}", no_wrap=True)
    for p in predictions:
        cells = [f"{t['label']} {t['probability']:.1%}" for t in p.top_k]
        table.add_row(PathCell(shown_path(p.path)), *cells, *[""] * (k - len(cells)))
    return table


def shown_path(path: str) -> str:
    """Relative to the current folder when inside it (shorter, and what the user would type)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


class PathCell:
    """A path that wraps only after a "/" (Rich folds anywhere: `dog` on one line, `.jpg` on the next),
    so each line holds whole folder and file names; only a name wider than the column is cut."""

    def __init__(self, path: str):
        self.parts = re.findall(r"[^/]*/|[^/]+$", path) or [path]

    def __rich_measure__(self, console, options):
        return Measurement(max(map(len, self.parts)), len("".join(self.parts)))

    def __rich_console__(self, console, options):
        lines, line = [], ""
        for part in self.parts:
            if line and len(line) + len(part) > options.max_width:
                lines.append(line)
                line = ""
            line += part
        lines.append(line)
        for text in lines:
            yield Text(text, overflow="fold")
