"""`flowerft predict`: classes of image files, as a table or JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from flowerft.errors import FlowerftError
from flowerft.cli import app
from flowerft.cli.common import check_run_exists, console, err_console, fail, import_tensorflow_quietly, native_stderr_silenced


@app.command()
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files and folders (a folder means every image in it).")],
    run_dir: Annotated[Optional[str], typer.Option(help="Run whose model predicts (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="best or final (default: best).")] = None,
    model: Annotated[Optional[str], typer.Option(help="An exported model instead of a run: a SavedModel folder or a .tflite file.")] = None,
    top_k: Annotated[int, typer.Option(show_default=False, help="How many classes to list per image (default: 3).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help='Print [{"path", "top_k": [{"label", "probability"}]}] on stdout.')] = False,
) -> None:
    """Predict the class of image files with a trained run's model, or with a model it exported."""
    if model is not None and (run_dir is not None or checkpoint is not None):
        fail(f"--model {model} is a model already: give it without --run-dir and --checkpoint")
    try:
        if model is None:
            check_run_exists(run_dir)
        import_tensorflow_quietly()
        from flowerft import predict as prediction

        # A broken JPEG makes libjpeg and TensorFlow write to stderr themselves; each failure is
        # reported below in one line of ours instead.
        with native_stderr_silenced():
            predictions, failures = prediction.run(images, run_dir=run_dir, checkpoint=checkpoint or "best", k=top_k,
                                                   model_path=model)
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
