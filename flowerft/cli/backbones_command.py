"""`flowerft backbones`: every built-in backbone as a table (or JSON), from the registry alone."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from flowerft.backbones.registry import keras_models_dir, table_rows
from flowerft.cli.common import console


def backbones(
    as_json: Annotated[bool, typer.Option("--json", help="Print the backbones as a JSON list on stdout and nothing else.")] = False,
) -> None:
    """List the backbones: parameters, sizes, pixel scaling, normalization rule, blocks, ImageNet top-1, weights here."""
    rows = table_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console.print(backbones_table(rows))
    console.print(backbones_note(), highlight=False)


def backbones_table(rows: list[dict]) -> Table:
    # Nine columns in 80 characters: one space between them, nothing wrapped (a person greps the names).
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0), title="Backbones (--backbone NAME)")
    for column in ("name", "params", "size", "min", "scaling", "norm", "blocks", "top-1", "here"):
        table.add_column(column, justify="left" if column in ("name", "scaling", "norm", "here") else "right",
                         no_wrap=True)
    for r in rows:
        weights = "yes" if r["weights_on_disk"] else "no" if r["imagenet_weights"] else "n/a"
        table.add_row(
            r["name"], f"{r['parameters'] / 1e6:.1f}M", str(r["default_size"]), str(r["min_size"]), r["scaling"],
            r["normalization"], str(r["blocks"]), f"{r['imagenet_top1']:.1f}%" if r["imagenet_top1"] else "-", weights,
        )
    return table


def backbones_note() -> str:
    return (
        "size: its ImageNet input size (--image-size; flowerft's default is 224 for all); min: the smallest; "
        "norm: BN frozen in inference mode while fine-tuning, LN trains; blocks: the most --finetune-blocks; "
        f"top-1 as keras.io documents it; here: its ImageNet weights file is already in {keras_models_dir()} "
        "(n/a: Keras has none; train from scratch or --weights FILE). "
        "Or bring your own: --backbone FILE.keras or a KerasHub preset."
    )
