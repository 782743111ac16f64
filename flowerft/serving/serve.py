"""`flowerft serve`: a model behind HTTP (Starlette on uvicorn): TF Serving's REST API, a plain
multipart `POST /predict`, and a page at `/` to try it from a browser or a phone.

    GET  /                              the page (flowerft/serving/serve_page.html, no external assets)
    POST /predict?k=3                   multipart image files -> each one's top-k classes
    POST /v1/models/<name>:predict      TF Serving's predict (flowerft/serving/tf_serving.py)
    GET  /v1/models/<name>[/metadata]   TF Serving's status and signatures
    GET  /healthz                       {"status": "ok"} once the model answers

Every request is one log line. Bad input gets a 4xx and `{"error": "<one line>"}`; the server goes
on serving. Images are decoded in threads (TensorFlow releases the GIL) by training's own decode and
resize; the model runs in one thread of its own, and what waits while it is busy runs as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Callable

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from flowerft.command_defaults import SERVE_MAX_PIXELS, SERVE_TOP_K
from flowerft.data import image_io
from flowerft.errors import DataError, FlowerftError
from flowerft.ranking import top_k
from flowerft.serving import tf_serving
from flowerft.serving.predictors import BYTES_SIGNATURE, Predictor
from flowerft.serving.tf_serving import RequestError

log = logging.getLogger("flowerft.serving.serve")
# Requests waiting while the model is busy are run together, up to this many images in one call:
# batches amortise the per-call cost, and no request waits for others when the model is idle.
SERVE_MAX_BATCH = 32


class Batcher:
    """Runs the model in one thread; requests that arrive while it is busy go in its next call together."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = SERVE_MAX_BATCH):
        self.predict, self.max_batch = predict, max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="flowerft-model")
        self.queue: asyncio.Queue | None = None
        self.calls = self.images = 0  # for the load benchmark: images per model call

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        self.task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            n = len(waiting[0][0])
            while n < self.max_batch and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
                n += len(waiting[-1][0])
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predict,
                                                           np.concatenate([images for images, _ in waiting]))
            except Exception as e:  # the model failed on this batch: its requests get a 500, the server goes on
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.calls, self.images = self.calls + 1, self.images + n
            start = 0
            for images, future in waiting:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(probabilities[start : start + len(images)])
                start += len(images)


def decode(contents: bytes, image_size: int, what: str) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, 3]; too many pixels is refused from the header, before decoding."""
    limit = f"at most {SERVE_MAX_PIXELS / 1e6:g} megapixels"
    try:
        width, height = Image.open(io.BytesIO(contents)).size  # reads the header only
    except Image.DecompressionBombError:  # over Pillow's own limit, far above ours
        raise RequestError(f"{what} has far too many pixels; {limit}", 413) from None
    except Exception:
        width = height = 0  # not for Pillow: TensorFlow's decoder gives the reason below
    if width * height > SERVE_MAX_PIXELS:
        raise RequestError(f"{what} is {width} x {height} pixels; {limit}", 413)
    try:
        return image_io.image_from_bytes(contents, image_size).numpy()
    except DataError as e:
        raise RequestError(f"{what}: {e}") from None


async def decode_all(items: list[tuple[bytes, str]], image_size: int) -> np.ndarray:
    decoded = await asyncio.gather(*(asyncio.to_thread(decode, contents, image_size, what) for contents, what in items))
    return np.stack(decoded)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (before reading it all, when its length is given)."""
    limit = f"at most {max_bytes / 2**20:g} MB (the server's --max-mb)"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise RequestError(f"the request body is {int(length) / 2**20:.1f} MB; {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(f"the request body is over {limit}", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def uploaded_files(request: Request, body: bytes, max_images: int) -> list[tuple[bytes, str]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("send the images as multipart/form-data files (curl -F file=@photo.jpg URL/predict)")

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_images).parse()
    except MultiPartException as e:
        status = 413 if "Too many files" in e.message else 400
        raise RequestError(f"multipart body: {e.message} (at most {max_images} files, the server's --max-images)"
                           if status == 413 else f"multipart body: {e.message}", status) from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise RequestError("no files in the multipart body; send one or more images as files")
    return [(await f.read(), f.filename or f"file {i}") for i, f in enumerate(files)]


def make_app(predictor: Predictor, name: str, max_bytes: int, max_images: int, source: str = "") -> Starlette:
    """The ASGI app serving `predictor` under the model name `name`."""
    batcher = Batcher(predictor)
    size, names = predictor.image_size, predictor.class_names
    page = (resources.files("flowerft.serving") / "serve_page.html").read_text(encoding="utf-8")
    for key, value in {"MODEL_NAME": name, "SOURCE": source, "CLASSES": ", ".join(names), "TOP_K": str(SERVE_TOP_K),
                       "IMAGE_SIZE": str(size), "MAX_MB": f"{max_bytes / 2**20:g}", "MAX_IMAGES": str(max_images)}.items():
        page = page.replace("{{" + key + "}}", html.escape(value))

    def check_name(request: Request) -> None:
        if request.path_params["name"] != name:
            raise RequestError(f"Servable not found for request: Latest({request.path_params['name']}); "
                               f"this server serves {name!r}", 404)

    async def index(request: Request):
        return HTMLResponse(page)

    async def healthz(request: Request):  # with how many images the model's calls had, on average
        return JSONResponse({"status": "ok", "model": name, "model_calls": batcher.calls, "images": batcher.images})

    async def model_status(request: Request):
        check_name(request)
        return JSONResponse(tf_serving.status(name))

    async def model_metadata(request: Request):
        check_name(request)
        return JSONResponse(tf_serving.metadata(name, size, len(names)))

    async def tf_predict(request: Request):
        check_name(request)
        parsed = tf_serving.parse_predict(await read_body(request, max_bytes), size, max_images)
        request.state.images = len(parsed.items)
        if parsed.signature == BYTES_SIGNATURE:
            images = await decode_all([(b, f"instance {i}") for i, b in enumerate(parsed.items)], size)
        else:
            images = np.stack(parsed.items)
        rows = tf_serving.outputs(await batcher(images), names)
        return JSONResponse(tf_serving.predict_response(rows, parsed.columnar))

    async def predict(request: Request):
        k = request.query_params.get("k", str(SERVE_TOP_K))
        if not k.isdigit() or int(k) < 1:
            raise RequestError(f"k must be a whole number of 1 or more, got {k!r}")
        files = await uploaded_files(request, await read_body(request, max_bytes), max_images)
        request.state.images = len(files)
        probabilities = await batcher(await decode_all(files, size))
        return JSONResponse({"model": name, "predictions": [
            {"filename": filename, "top_k": top_k(row, names, min(int(k), len(names)))}
            for (_, filename), row in zip(files, probabilities)]})

    async def request_error(request: Request, e: RequestError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    async def disconnected(request: Request, e: ClientDisconnect):
        return JSONResponse({"error": "the client went away"}, status_code=400)

    async def not_found(request: Request, e: Exception):
        status = getattr(e, "status_code", 404)
        return JSONResponse({"error": f"{request.method} {request.url.path}: not found" if status == 404 else
                             f"{request.method} is not allowed on {request.url.path}"}, status_code=status)

    async def server_error(request: Request, e: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {str(e)[:200]}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    routes = [
        Route("/", index), Route("/healthz", healthz), Route("/predict", predict, methods=["POST"]),
        Route("/v1/models/{name}:predict", tf_predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/1:predict", tf_predict, methods=["POST"]),
        Route("/v1/models/{name}", model_status), Route("/v1/models/{name}/metadata", model_metadata),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        RequestError: request_error, ClientDisconnect: disconnected, 404: not_found, 405: not_found,
        Exception: server_error})
    return RequestLog(app)


class RequestLog:
    """ASGI middleware: one line per request (client, method, path, status, images, milliseconds)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            images = scope["state"].get("images")
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d%s %.1f ms", client[0], scope["method"], scope["path"], status[0],
                     f" {images} images" if images is not None else "", 1000 * (time.perf_counter() - start))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (the caller reads it back), with no race."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except socket.gaierror as e:
        raise FlowerftError(f"cannot serve on host {host!r} ({e.strerror}); give --host 127.0.0.1 or 0.0.0.0") from None
    except OSError as e:
        what = "is in use" if e.errno in (98, 48) else f"cannot be used ({e.strerror})"
        raise FlowerftError(f"port {port} on {host} {what}; give another --port (0 picks a free one)") from None
    return sock


def run(predictor: Predictor, host: str, port: int, name: str, max_bytes: int, max_images: int,
        source: str = "", on_ready: Callable[[str], Any] | None = None) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM; uvicorn finishes the requests in flight first."""
    import uvicorn

    predictor(np.zeros((1, predictor.image_size, predictor.image_size, 3), np.uint8))  # trace and warm up once
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    app = make_app(predictor, name, max_bytes, max_images, source)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    if on_ready:
        on_ready(f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
