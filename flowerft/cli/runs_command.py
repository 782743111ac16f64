"""`flowerft runs`: the runs under a runs root as a table (or JSON), newest first."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from flowerft.cli.common import console, default, one_line_errors, pct
from flowerft.config import DEFAULTS


def runs(
    runs_root: Annotated[str, typer.Option(help="Folder holding the runs" + default("runs_root"), show_default=False)] = DEFAULTS["runs_root"],
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as a JSON list on stdout and nothing else.")] = False,
) -> None:
    """List the runs: status, backbone, epochs, best validation and test accuracy (balanced, macro F1), wall time."""
    from flowerft.runs import listing as run_list

    with one_line_errors():
        rows = run_list.list_runs(runs_root)
    if as_json:
        print(run_list.to_json(rows))
    elif not rows:
        console.print(f"No runs in {runs_root}.", highlight=False)
    else:
        console.print(runs_table(rows, runs_root, console.width))


def runs_table(rows, runs_root: str, width: int = 80) -> Table:
    # Ten columns where they fit, else eight in 80 characters: no vertical rules, one space between
    # columns, names and backbones kept whole (a person greps them); a status and a model take two
    # lines rather than Rich's share of the width (which cuts off the last column), and balanced
    # accuracy and macro F1 go under the test accuracy rather than into columns of their own.
    table = Table(title=f"Runs in {runs_root}", box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    models = [f"{r.backbone} {r.image_size}px" if r.backbone else "-" for r in rows]
    whole = {"run": max(len(r.name) + 2 * r.best for r in rows), "started": 11,
             "status": max(11, *(len(r.status) for r in rows)), "model": max(5, *map(len, models)),
             "epochs": 6, "val": 6, "test": 6, "bal": 6, "F1": 5, "time": 6}
    if _line_width(whole) > width:  # too narrow for one line a run: status and model wrap
        whole |= {"status": 11, "model": max(5, *(len(r.backbone or "") for r in rows))}
    stacked = _line_width(whole) > width
    if stacked:
        del whole["bal"], whole["F1"]
    for column in whole:
        table.add_column(column, justify="left" if column in ("run", "started", "status", "model") else "right",
                         min_width=whole[column], width=whole[column] if column in ("status", "model") else None)
    for r, model in zip(rows, models):
        epochs = "-" if r.epochs_planned is None else f"{r.epochs_run or 0}/{r.epochs_planned}"
        balanced, f1 = pct(r.test_balanced_accuracy), "-" if r.test_macro_f1 is None else f"{r.test_macro_f1:.3f}"
        if stacked:
            test = [pct(r.test_accuracy) + ("" if r.test_accuracy is None else f"\n[dim]{balanced}\n{f1}[/]")]
        else:
            test = [pct(r.test_accuracy), balanced, f1]
        table.add_row(
            # Under the name, where its images come from (a second line: the row has no room for a column).
            r.name + (" *" if r.best else "") + (f"\n[dim]{escape(r.source)}[/]" if r.source else ""),
            time.strftime("%m-%d %H:%M", time.localtime(r.started)), r.status,
            model, epochs, pct(r.best_val_accuracy), *test,
            "-" if r.wall_time_s is None else f"{r.wall_time_s:.0f} s",
        )
    table.caption = ("under each run its data (folder, csv, tfds, hf); val: best validation accuracy; test: test accuracy"
                     + ("; under it balanced accuracy and macro F1" if stacked else "; bal: balanced accuracy; F1: macro F1")
                     + "; *: best finished run")
    return table


def _line_width(columns: dict[str, int]) -> int:
    return sum(columns.values()) + len(columns) - 1  # one space between columns
