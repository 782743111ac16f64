"""flowerft serve, for real: the CLI in a child process on a free loopback port, a real HTTP client.

TF Serving's REST API with base64 JPEG/PNG/WebP and pixel arrays, multipart uploads, bad inputs
(each a 4xx with a one-line JSON error, the server serving on), one log line per request, Ctrl-C.
The page's browser test is in test_serve_page.py.
"""

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image
from server_process import ServerProcess

from flowerft import ranking
from flowerft.data import image_io
from flowerft.serving import predict, serve

RNG = np.random.default_rng(0)


def encoded(fmt: str, size=(50, 70), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    pixels[..., seed % 3] = 255  # the classes of the fixture's run are told apart by colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def b64(contents: bytes) -> dict:
    return {"b64": base64.b64encode(contents).decode()}


@pytest.fixture(scope="module")
def server(trained_run):
    server = ServerProcess("--run-dir", str(trained_run), "--max-mb", "1", "--max-images", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An image file in each format a client sends, and what `flowerft predict` answers for it."""
    folder = tmp_path_factory.mktemp("upload")
    files = {}
    for i, fmt in enumerate(["JPEG", "PNG", "WEBP"]):
        files[fmt] = folder / f"photo{i}.{fmt.lower()}"
        files[fmt].write_bytes(encoded(fmt, seed=i))
    return files


@pytest.fixture(scope="module")
def expected(trained_run, images):
    predictor, _ = predict.load_predictor(trained_run)
    files = list(images.values())
    return {f: predictor(image_io.read_image(f, predictor.image_size).numpy()[None])[0] for f in files}, predictor


def tf_predict(server, body, name="flowerft", **kw):
    return requests.post(f"{server.url}/v1/models/{name}:predict", data=json.dumps(body) if not isinstance(body, bytes)
                         else body, timeout=60, **kw)


def test_serving_bytes_takes_b64_jpeg_png_and_webp_and_answers_as_predict_does(server, images, expected):
    probabilities, predictor = expected
    files = list(images.values())
    body = {"signature_name": "serving_bytes", "instances": [{"image_bytes": b64(f.read_bytes())} for f in files]}
    response = tf_predict(server, body)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert len(rows) == 3 and all(set(r) == {"probabilities", "label", "score"} for r in rows)
    for row, f in zip(rows, files):
        np.testing.assert_allclose(row["probabilities"], probabilities[f], atol=1e-5)
        assert row["label"] == predictor.class_names[int(np.argmax(probabilities[f]))]
        assert row["score"] == pytest.approx(max(row["probabilities"]))
    # the single-input shorthand (a bare {"b64": ...}) and the columnar form answer the same
    bare = tf_predict(server, {"signature_name": "serving_bytes", "instances": [b64(files[0].read_bytes())]}).json()
    assert bare["predictions"][0]["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-6)
    columnar = tf_predict(server, {"signature_name": "serving_bytes",
                                   "inputs": {"image_bytes": [b64(f.read_bytes()) for f in files]}}).json()
    assert columnar["outputs"]["label"] == [r["label"] for r in rows]
    np.testing.assert_allclose(columnar["outputs"]["probabilities"], [r["probabilities"] for r in rows], atol=1e-6)


def test_serving_default_takes_pixel_arrays(server, images, expected):
    probabilities, predictor = expected
    f = images["PNG"]
    pixels = image_io.read_image(f, predictor.image_size).numpy()
    for body in ({"instances": [pixels.tolist()]}, {"signature_name": "serving_default", "instances": [{"images": pixels.tolist()}]},
                 {"inputs": {"images": [pixels.tolist()]}}):
        response = tf_predict(server, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        row = answer["predictions"][0] if "predictions" in answer else {k: v[0] for k, v in answer["outputs"].items()}
        np.testing.assert_allclose(row["probabilities"], probabilities[f], atol=1e-5)


def test_status_metadata_and_health_have_tf_servings_shapes(server, expected):
    _, predictor = expected
    status = requests.get(f"{server.url}/v1/models/flowerft", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = requests.get(f"{server.url}/v1/models/flowerft/metadata", timeout=10).json()
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert meta["model_spec"]["name"] == "flowerft" and set(signatures) == {"serving_default", "serving_bytes"}
    dims = [int(d["size"]) for d in signatures["serving_default"]["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == [-1, predictor.image_size, predictor.image_size, 3]
    assert signatures["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert requests.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"


def test_multipart_predict_gives_each_uploads_top_k(server, images, expected):
    probabilities, predictor = expected
    files = [("file", (f.name, f.read_bytes())) for f in images.values()]
    response = requests.post(f"{server.url}/predict?k=2", files=files, timeout=60)
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    assert [p["filename"] for p in got] == [f.name for f in images.values()]
    for p, f in zip(got, images.values()):
        want = ranking.top_k(probabilities[f], predictor.class_names, 2)
        assert [t["label"] for t in p["top_k"]] == [t["label"] for t in want]
        np.testing.assert_allclose([t["probability"] for t in p["top_k"]], [t["probability"] for t in want], atol=1e-5)


def test_concurrent_requests_all_get_their_own_answers(server, images, expected):
    from concurrent.futures import ThreadPoolExecutor

    probabilities, _ = expected
    files = list(images.values()) * 6

    def one(f):
        body = {"signature_name": "serving_bytes", "instances": [b64(f.read_bytes())]}
        return tf_predict(server, body).json()["predictions"][0]["probabilities"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, files))
    for f, answer in zip(files, answers):
        np.testing.assert_allclose(answer, probabilities[f], atol=1e-5)


def bomb() -> bytes:
    """A small PNG that decodes to 56 megapixels (over the 50 allowed)."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buffer, "PNG")
    return buffer.getvalue()


PIXELS = np.zeros((71, 71, 3), int).tolist()
BAD = [
    ("not json", b"{nope", 400, "JSON Parse error"),
    ("json list", [1, 2], 400, "must be a JSON object"),
    ("no instances", {"signature_name": "serving_bytes"}, 400, 'give either "instances"'),
    ("unknown signature", {"signature_name": "nosuch", "instances": [1]}, 400, 'signature name: "nosuch" not found'),
    ("empty instances", {"instances": []}, 400, "non-empty list"),
    ("bad base64", {"signature_name": "serving_bytes", "instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
    ("b64 of text", {"signature_name": "serving_bytes", "instances": [b64(b"hello")]}, 400, "instance 0: not an image"),
    ("empty image", {"signature_name": "serving_bytes", "instances": [b64(b"")]}, 400, "empty"),
    ("truncated jpeg", {"signature_name": "serving_bytes", "instances": [b64(encoded("JPEG", (200, 200))[:600])]}, 400,
     "corrupt or truncated"),
    ("no b64 key", {"signature_name": "serving_bytes", "instances": [{"image_bytes": "abc"}]}, 400, '{"b64"'),
    ("wrong shape", {"instances": [[[1, 2, 3]]]}, 400, "must be uint8 pixels [71, 71, 3], got int64 [1, 3]"),
    ("ragged", {"instances": [[[1, 2], [3]]]}, 400, "uneven length"),
    ("out of range", {"instances": [[[[300, 0, 0]] * 71] * 71]}, 400, "from 0 to 255"),
    ("strings", {"instances": [[[["a", "b", "c"]] * 71] * 71]}, 400, "must be uint8 pixels"),
    ("too many images", {"instances": [PIXELS] * 5}, 413, "5 images in one request; at most 4"),
    ("too large", {"signature_name": "serving_bytes", "instances": [b64(b"x" * 900_000)]}, 413, "at most 1 MB"),
    ("bomb", {"signature_name": "serving_bytes", "instances": [b64(bomb())]}, 413, "8000 x 7000 pixels"),
]


@pytest.mark.parametrize("body, status, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_tf_serving_requests_get_a_one_line_json_error(server, body, status, message):
    response = tf_predict(server, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]
    assert message in response.json()["error"], response.json()
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200  # still serving


@pytest.mark.parametrize("request_kw, status, message", [
    (dict(method="POST", url="/predict", files=[("file", ("a.jpg", b"not an image"))]), 400, "a.jpg: not an image"),
    (dict(method="POST", url="/predict", files=[("file", ("a.png", encoded("PNG")[:100]))]), 400, "a.png:"),
    (dict(method="POST", url="/predict", files={"field": (None, "no file")}), 400, "no files in the multipart body"),
    (dict(method="POST", url="/predict", json={"b64": "x"}), 400, "multipart/form-data"),
    (dict(method="POST", url="/predict", files=[("file", (f"{i}.png", b"x")) for i in range(5)]), 413, "at most 4 files"),
    (dict(method="POST", url="/predict?k=zero", files=[("file", ("a.png", encoded("PNG")))]), 400, "k must be"),
    (dict(method="POST", url="/predict", files=[("file", ("a.png", b"x" * 1_100_000))]), 413, "at most 1 MB"),
    (dict(method="GET", url="/v1/models/other"), 404, "Servable not found for request: Latest(other)"),
    (dict(method="POST", url="/v1/models/other:predict", json={"instances": [PIXELS]}), 404, "Servable not found"),
    (dict(method="GET", url="/nowhere"), 404, "GET /nowhere: not found"),
    (dict(method="GET", url="/predict"), 405, "GET is not allowed on /predict"),
], ids=["not an image", "truncated png", "no file", "not multipart", "too many files", "bad k", "too large",
        "unknown model", "unknown model predict", "unknown path", "wrong method"])
def test_bad_uploads_and_paths_get_a_one_line_json_error(server, request_kw, status, message):
    kw = dict(request_kw)
    response = requests.request(kw.pop("method"), server.url + kw.pop("url"), timeout=60, **kw)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"], response.json()
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_every_request_is_one_log_line(server, images):
    time.sleep(0.2)
    before = len(server.requests_logged())
    requests.get(f"{server.url}/healthz", timeout=10)
    requests.post(f"{server.url}/predict", files=[("file", ("a.webp", images["WEBP"].read_bytes()))], timeout=60)
    requests.post(f"{server.url}/predict", data=b"x", timeout=10)
    time.sleep(0.5)
    lines = server.requests_logged()[before:]
    assert len(lines) == 3, lines
    assert "GET /healthz 200" in lines[0] and "POST /predict 200 1 images" in lines[1] and "POST /predict 400" in lines[2]
    assert all(line.count("\n") == 1 and " ms" in line and "127.0.0.1" in line for line in lines)


def test_the_page_is_served_from_the_package_with_no_external_assets(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'name="viewport"' in page.text and 'type="file"' in page.text and "daisy, dandelion, roses" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "{{" not in page.text


def test_ctrl_c_stops_the_server_cleanly(trained_run):
    server = ServerProcess("--run-dir", str(trained_run))
    try:
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert server.interrupt() == 0
        time.sleep(0.2)
        assert "Stopped." in "".join(server.stdout) and "Traceback" not in "".join(server.log), server.log
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/healthz", timeout=5)
    finally:
        server.stop()


def test_a_busy_model_gets_the_requests_that_waited_as_one_batch():
    calls = []

    def slow_model(images):
        calls.append(len(images))
        time.sleep(0.2)
        return images.reshape(len(images), -1)[:, :2].astype(float)

    async def main():
        batcher = serve.Batcher(slow_model, max_batch=8)
        await batcher.start()
        first = asyncio.create_task(batcher(np.full((1, 1, 1, 2), 0)))
        await asyncio.sleep(0.05)  # the model is busy with the first request when the others come
        rest = [asyncio.create_task(batcher(np.full((2, 1, 1, 2), i))) for i in range(1, 4)]
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    assert calls == [1, 6]  # the three waiting requests ran in one call
    assert [a.tolist() for a in answers] == [[[0, 0]], *[[[i, i]] * 2 for i in range(1, 4)]]


def test_a_port_in_use_is_a_one_line_error():
    from flowerft.errors import FlowerftError

    taken = serve.bind("127.0.0.1", 0)
    try:
        with pytest.raises(FlowerftError, match=r"port \d+ on 127.0.0.1 is in use; give another --port"):
            serve.bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_serve_model_serves_a_keras_file_with_the_class_names_of_its_run(trained_run, images):
    """`serve --model x.keras`: the file alone, its class names from the run it sits in (checkpoints/..)."""
    model = trained_run / "checkpoints" / "final.keras"
    predictor, _ = predict.load_predictor(model_path=model)
    assert predictor.class_names == json.loads((trained_run / "class_names.json").read_text())
    served = ServerProcess("--model", str(model))
    try:
        photo = images["JPEG"]
        response = requests.post(f"{served.url}/predict?k=3", files=[("file", (photo.name, photo.read_bytes()))],
                                 timeout=60)
        assert response.status_code == 200, response.text
        (got,) = response.json()["predictions"]
        want = predictor(image_io.read_image(photo, predictor.image_size).numpy()[None])[0]
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in ranking.top_k(want, predictor.class_names, 3)]
        status = requests.get(f"{served.url}/v1/models/flowerft", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        served.stop()
