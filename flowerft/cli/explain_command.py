"""`flowerft explain`: where the model looks, one PNG per image (photo, Grad-CAM heatmap, top-k)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from flowerft.cli.common import (
    console,
    err_console,
    fail,
    import_tensorflow_quietly,
    native_stderr_silenced,
    one_line_errors,
)


def explain(
    images: Annotated[list[str], typer.Argument(help="Image files and folders (a folder means every image in it).")],
    run_dir: Annotated[Optional[str], typer.Option(help="Run whose best model is explained (default: the one runs/latest names).")] = None,
    model: Annotated[Optional[str], typer.Option(help="A .keras classifier instead of a run (class names from a class_names.json beside it or above checkpoints/).")] = None,
    explained_class: Annotated[Optional[str], typer.Option("--class", help="Show the evidence for this class (default: each image's predicted class).")] = None,
    output: Annotated[str, typer.Option(help="Folder for the PNGs, <image name>_gradcam.png.")] = "explained",
    as_json: Annotated[bool, typer.Option("--json", help='Print [{"path", "class", "top_k", "peak": {"x", "y", "x_fraction", "y_fraction"} or null, "png"}] on stdout.')] = False,
) -> None:
    """Grad-CAM: a heatmap of where each image holds the evidence for its predicted class (or --class)."""
    if model is not None and run_dir is not None:
        fail(f"--model {model} is a model already: give it without --run-dir")
    with one_line_errors():
        import_tensorflow_quietly()
        from flowerft.reporting import explain as explaining

        with native_stderr_silenced():
            explanations, failures = explaining.run(images, run_dir=run_dir, model_path=model,
                                                    explained_class=explained_class, output=output)
    if as_json:
        print(json.dumps([e.as_dict() for e in explanations], indent=2))
    else:
        for e in explanations:
            best = e.top_k[0]
            where = f"peaks at ({e.peak['x']}, {e.peak['y']})" if e.peak else "is empty: nothing in the image counts for it"
            console.print(f"{e.path}: {best['label']} {best['probability']:.1%}; heatmap for {e.explained} {where} "
                          f"-> {e.png}", highlight=False, soft_wrap=True)
    for failure in failures:
        err_console.print(f"[bold red]Error:[/] {failure.message}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)
