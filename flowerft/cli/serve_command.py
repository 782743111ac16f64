"""`flowerft serve`: a run's model, or an exported one, behind TF Serving's REST API and a page."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Optional

import typer

from flowerft.cli.common import console, fail, import_tensorflow_quietly, native_stderr_silenced, one_line_errors
from flowerft.command_defaults import SERVE_HOST, SERVE_MAX_IMAGES, SERVE_MAX_MB, SERVE_MODEL_NAME, SERVE_PORT


def serve(
    run_dir: Annotated[Optional[str], typer.Option(help="Run whose model to serve (default: the one runs/latest names).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="best or final (default: best).")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model instead of a run: a SavedModel folder or a .tflite (with its labels.txt), .onnx or .keras file.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for other machines (a phone on the same network).")] = SERVE_HOST,
    port: Annotated[int, typer.Option(help="Port (TF Serving's REST port by default; 0 picks a free one).")] = SERVE_PORT,
    model_name: Annotated[str, typer.Option(help="The <name> in /v1/models/<name>, as TF Serving's --model_name.")] = SERVE_MODEL_NAME,
    max_mb: Annotated[float, typer.Option(help="Largest request body in MB; larger ones get 413.")] = SERVE_MAX_MB,
    max_images: Annotated[int, typer.Option(help="Most images in one request; more get 413.")] = SERVE_MAX_IMAGES,
) -> None:
    """Serve a model over HTTP: TF Serving's REST API, POST /predict (multipart) and a page to try it at /."""
    if model is not None and (run_dir is not None or checkpoint is not None):
        fail(f"--model {model} is a model already: give it without --run-dir and --checkpoint")
    if max_mb <= 0 or max_images < 1 or not 0 <= port <= 65535:
        fail("--max-mb must be above 0, --max-images 1 or more and --port from 0 to 65535")
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO)
    logging.getLogger("flowerft.serving.serve").setLevel(logging.INFO)
    # Ctrl-C is how a server stops: uvicorn has answered the requests in flight and closed the socket.
    with one_line_errors(), contextlib.suppress(KeyboardInterrupt):
        import_tensorflow_quietly()
        from flowerft.serving import serve as serving
        from flowerft.serving.predict import load_predictor

        with native_stderr_silenced():
            predictor, _ = load_predictor(run_dir, checkpoint or "best", model)
        source = f"{predictor.kind} model from {model}" if model else f"{predictor.kind} model of run {run_dir or 'runs/latest'}"

        def ready(url: str) -> None:
            console.print(f"Serving {model_name} ({source}, {len(predictor.class_names)} classes) on {url}\n"
                          f"  page: {url}/   TF Serving: {url}/v1/models/{model_name}:predict   Ctrl-C stops",
                          highlight=False, soft_wrap=True)

        serving.run(predictor, host, port, model_name, int(max_mb * 2**20), max_images, source, on_ready=ready)
    console.print("Stopped.")
