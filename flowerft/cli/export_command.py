"""`flowerft export`: a run's model as a SavedModel (TF Serving), TFLite and ONNX files, with a verification table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerft.cli.common import (
    console,
    fail,
    import_tensorflow_quietly,
    native_stderr_silenced,
    one_line_errors,
    pct,
)
from flowerft.command_defaults import EXPORT_FORMATS, LATENCY_IMAGES, MAX_FLOAT_DISAGREEMENT, chosen_formats


def export(
    run_dir: Annotated[Optional[str], typer.Option(help="Run to export (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[str, typer.Option(show_default=False, help="best (best validation accuracy over both phases) or final (default: best).")] = "best",
    fmt: Annotated[str, typer.Option("--format", show_default=False, help=f"{', '.join(EXPORT_FORMATS)} or all (default: all).")] = "all",
    output: Annotated[Optional[Path], typer.Option(help="Folder for the exported files (default: RUN_DIR/export).")] = None,
) -> None:
    """Export a run's model for serving (SavedModel, ONNX) and devices (TFLite), verified on its test split (valid if it has none)."""
    with one_line_errors():  # Ctrl-C leaves nothing half-written: every file is renamed into place
        formats = chosen_formats(fmt)  # what can be checked before TensorFlow's import (seconds)
        from flowerft.runs import layout, source_record  # plain files: no TensorFlow yet

        split = source_record.held_out_split(layout.find_run(run_dir))  # and a missing run said at once
        # A minute or more of converting and checking: a terminal sees what is going on (and keeps
        # nothing of it afterwards; a log gets the table only).
        with console.status(f"exporting {', '.join(formats)}: each is converted, then checked on the {split} split"):
            import_tensorflow_quietly()
            from flowerft.serving import export as exporting

            # The TFLite converter and LiteRT write their progress to stderr from C++.
            with native_stderr_silenced():
                result = exporting.run(run_dir, checkpoint=checkpoint, fmt=fmt, output=output)
    console.print(export_table(result.report))
    console.print(f"Written: {result.folder} (export.json, README.md: the model card)", highlight=False, soft_wrap=True)
    if result.problem:
        fail(result.problem)
    from flowerft.training import tracking

    if problem := tracking.log_outputs(result.report["run_dir"]):  # a run trained with --track: its model card
        console.print(f"[bold yellow]Warning:[/] {problem}", highlight=False, soft_wrap=True)


def export_table(report: dict) -> Table:
    m = report["machine"]
    table = Table(title=f"{report['run_dir']} ({report['checkpoint']}): {report['test_images']} test images",
                  caption=f"latency: one image alone, mean over up to {LATENCY_IMAGES} test images; {m['cpu']}, {m['cpu_cores']} "
                          f"cores, {m['gpus']} GPUs, TensorFlow {m['tensorflow']}. Float formats must agree with "
                          f".keras on all but {MAX_FLOAT_DISAGREEMENT:.1%} of images.")
    table.add_column("format", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("test accuracy", justify="right")
    table.add_column("change", justify="right")
    table.add_column("agreement with .keras", justify="right")
    table.add_column("latency", justify="right")
    for row in report["formats"]:
        table.add_row(row["format"], f"{row['size_bytes'] / 2**20:.1f} MB", pct(row["accuracy"]),
                      f"{row['accuracy_change']:+.1%}", pct(row["agreement"]), f"{row['latency_ms']:.1f} ms")
    return table
