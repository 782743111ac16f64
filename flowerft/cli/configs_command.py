"""`flowerft configs`: the example config files that ship with flowerft, listed or copied out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerft.cli.common import console, fail, one_line_errors
from flowerft.config_files import shipped_configs
from flowerft.errors import FlowerftError


def configs(
    copy: Annotated[Optional[str], typer.Option(help="Copy this config (a name from the list) to --to, to edit it.")] = None,
    to: Annotated[Path, typer.Option(show_default=False, help="Folder to copy it into (default: the current folder).")] = Path("."),
) -> None:
    """List the example config files (`train --config NAME` uses one as it is), or copy one out."""
    shipped = shipped_configs()
    if copy is None:
        table = Table(title="Example configs (train --config NAME)")
        widest = max(map(len, shipped), default=4)
        table.add_column("name", no_wrap=True, min_width=widest)
        # One line each, cut to the terminal: the file itself says the rest.
        table.add_column("what", no_wrap=True, overflow="ellipsis", max_width=max(20, console.width - widest - 7))
        for name, path in shipped.items():
            table.add_row(name, _purpose(path))
        console.print(table)
        return
    with one_line_errors():
        source = shipped.get(copy.removesuffix(".yaml"))
        if source is None:
            raise FlowerftError(f"no example config {copy!r}; choose one of {', '.join(shipped)}")
        target = to / source.name
        if target.exists():
            raise FlowerftError(f"{target} exists already; move it away or give --to another folder")
        try:
            to.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        except OSError as e:
            fail(f"cannot copy to {to}: {e.strerror or e}")
    console.print(f"Written: {target} (use it with: flowerft train --config {target})", highlight=False, soft_wrap=True)


def _purpose(path: Path) -> str:
    """A config file's own description: its comment lines after the first (which gives its command)."""
    comments = [line.lstrip("# ").rstrip() for line in path.read_text().splitlines()[1:] if line.startswith("#")]
    return " ".join(comments)
