"""`flowerft evaluate`: a trained run on its test (or validation) split, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerft.cli.common import (
    check_run_exists,
    console,
    err_console,
    import_tensorflow_quietly,
    num,
    one_line_errors,
    pct,
)


def evaluate(
    run_dir: Annotated[Optional[str], typer.Option(help="Run to evaluate (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[str, typer.Option(show_default=False, help="best (best validation accuracy over both phases) or final (default: best).")] = "best",
    split: Annotated[str, typer.Option(show_default=False, help="test or valid, as recorded by training (default: test).")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout and nothing else.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Folder for evaluation.json, predictions.json and the confusion-matrix PNG (default: the run dir).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Test-time augmentation: average each image's probabilities with its left-right mirror's; the files get a _tta suffix (evaluation_tta.json, ...), the plain evaluation stays.")] = False,
) -> None:
    """Evaluate a trained run: loss, accuracy, balanced accuracy, macro F1, top-2, per-class report and confusion matrix."""
    with one_line_errors():  # Ctrl-C leaves nothing half-written: every file is renamed into place
        check_run_exists(run_dir)
        import_tensorflow_quietly()
        from flowerft.reporting import evaluate as evaluation

        result = evaluation.run(run_dir, checkpoint=checkpoint, split=split, output=output, tta="flip" if tta else None)
    if as_json:
        print(json.dumps(result.report, indent=2))
    else:
        show_evaluation(result.report, result.written)
    if result.not_written:
        err_console.print(f"[bold yellow]Warning:[/] {result.not_written}", highlight=False, soft_wrap=True)
    elif output is None and (split, checkpoint, tta) == ("test", "best", False):  # evaluation.json in the run dir
        from flowerft.training import tracking

        if problem := tracking.log_outputs(result.report["run_dir"]):  # a run trained with --track
            err_console.print(f"[bold yellow]Warning:[/] {problem}", highlight=False, soft_wrap=True)


def show_evaluation(report: dict, files: list[Path]) -> None:
    tta = f", {report['tta']} TTA" if report.get("tta") else ""
    summary = Table(title=f"{report['run_dir']} ({report['checkpoint']}, {report['split']} split{tta})")
    for column in ("images", "loss", "accuracy", "balanced accuracy", "macro F1", "top-2 accuracy"):
        summary.add_column(column, justify="right")
    summary.add_row(str(report["examples"]), num(report["loss"]), pct(report["accuracy"]), pct(report["balanced_accuracy"]),
                    num(report["macro_f1"]), pct(report["top2_accuracy"]))
    console.print(summary)

    per_class = Table(title="Per class")
    per_class.add_column("class")
    for column in ("precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="right")
    rows = [*report["per_class"].items(), ("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]
    for name, r in rows:
        per_class.add_row(name, num(r["precision"]), num(r["recall"]), num(r["f1-score"]), str(int(r["support"])))
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
