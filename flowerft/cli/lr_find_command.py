"""`flowerft lr-find`: sweep the fine-tuning learning rate of a run, plot it, suggest a rate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flowerft.cli.common import console, import_tensorflow_quietly, native_stderr_silenced, one_line_errors


def lr_find(
    run_dir: Annotated[Optional[str], typer.Option(help="The run to sweep (default: the one runs/latest names); `flowerft train --epochs-finetune 0` makes one with a head.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Steps of the sweep (default: the run's lr_find_steps, 100).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Folder for lr_find.json and lr_find.png (default: <run>/lr_find).")] = None,
) -> None:
    """The learning-rate range test: fine-tune for a few steps at a growing rate, plot the loss, suggest a
    --lr-finetune. It starts from the run's head checkpoint and changes nothing in the run."""
    with one_line_errors():
        import_tensorflow_quietly()
        from flowerft.training import find_rate

        with native_stderr_silenced():
            found = find_rate.run(run_dir, steps=steps, output=output,
                                  notify=lambda line: console.print(line, highlight=False, soft_wrap=True))
    result = found.result
    console.print(f"{len(result.rates)} steps from {result.rates[0]:.1e} to {result.rates[-1]:.1e}: "
                  f"{result.stopped_because}", highlight=False, soft_wrap=True)
    console.print(f"Suggested --lr-finetune {result.suggested:.2g}: {result.how}", highlight=False, soft_wrap=True)
    for path in found.written:
        console.print(f"Wrote {path}", highlight=False, soft_wrap=True)
