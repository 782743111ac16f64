"""flowerft export: every format loads with its runtime's own loader and answers like the .keras model.

One run is trained and exported once for the whole file. It is a ResNet50 at 32 px: with random
weights its features still tell the classes' colours apart, so its answers are decisive and a
float format that agrees with it agrees for a reason (a random Xception at 71 px gives every class
a third, where float16's rounding may pick either of two near-equal classes).
"""

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from helpers import make_image_folder, one_line_error, working_directory
from PIL import Image
from typer.testing import CliRunner

from flowerft import ranking
from flowerft.cli import app
from flowerft.data import image_io, pipelines, sources
from flowerft.runs import loader
from flowerft.serving import export, export_checks, predict

runner = CliRunner()
SIZE = 32
FORMATS = ["keras", "savedmodel", "savedmodel-bytes", "tflite", "tflite-fp16", "tflite-int8", "onnx"]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(run dir, the output of `flowerft export` with every format into <run>/export)."""
    root = tmp_path_factory.mktemp("export")
    folder = make_image_folder(root / "flowers", per_class=12)
    run = root / "runs" / "resnet"
    with working_directory(root):
        result = runner.invoke(app, [
            "train", "--data-dir", str(folder), "--weights", "none", "--backbone", "resnet50",
            "--image-size", str(SIZE), "--batch-size", "8", "--epochs-head", "3", "--lr-head", "0.1",
            "--epochs-finetune", "0", "--run-dir", str(run),
        ])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["export", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.fixture(scope="session")
def reference(exported):
    """The .keras model, its probabilities on the test split, the test images and their files."""
    run, _ = exported
    config = loader.run_config(run)
    splits = sources.load_recorded(run, config, ("test",))
    model = loader.load_model(loader.checkpoint_path(run, "best"))
    images = np.concatenate([x.numpy() for x, _ in pipelines.pipeline(splits, "test", config)])
    return SimpleNamespace(model=model, expected=model.predict_on_batch(images), images=images.astype(np.uint8),
                           files=[p for p, _ in splits.files["test"]])


@pytest.fixture(scope="session")
def served(exported):
    return tf.saved_model.load(str(exported[0] / "export" / "savedmodel"))  # TensorFlow's loader, not ours


def test_export_writes_every_format_and_the_verification_table(exported):
    run, output = exported
    folder = run / "export"
    report = json.loads((folder / "export.json").read_text())
    assert [row["format"] for row in report["formats"]] == FORMATS
    assert report["verified"] and report["problem"] is None and report["test_images"] == 3
    for row in report["formats"]:
        assert row["agreement"] == 1.0 and row["accuracy"] == report["formats"][0]["accuracy"]
        assert row["latency_ms"] > 0 and row["size_bytes"] > 0
    sizes = {row["format"]: row["size_bytes"] for row in report["formats"]}
    assert sizes["tflite"] == (folder / "model.tflite").stat().st_size
    # float16 halves the float32 file, int8 quarters it (within the small parts that stay as they are)
    assert 0.45 < sizes["tflite-fp16"] / sizes["tflite"] < 0.55 and 0.2 < sizes["tflite-int8"] / sizes["tflite"] < 0.3
    assert (folder / "labels.txt").read_text() == "daisy\ndandelion\nroses\n"
    card = (folder / "README.md").read_text()
    assert "0. daisy" in card and "serving_bytes" in card and card.count("| TFLite") == 3 and "| ONNX" in card
    # float32 weights, like model.tflite, within the graph's own small overhead
    assert 0.9 < sizes["onnx"] / sizes["tflite"] < 1.2 and report["machine"]["onnxruntime"]
    for fmt in FORMATS:
        assert fmt in output
    assert "Written:" in output


def test_savedmodel_stores_each_weight_once(exported):
    run, _ = exported
    model = loader.load_model(loader.checkpoint_path(run, "best"))
    stored = tf.train.list_variables(str(run / "export" / "savedmodel" / "variables" / "variables"))
    values = sum(int(np.prod(shape)) for name, shape in stored if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert values == model.count_params() + 3  # + the class names (keras-team/keras #23553 doubles it)


def test_savedmodel_signatures_answer_like_the_keras_model(served, reference):
    loaded, expected, images, files = served, reference.expected, reference.images, reference.files
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    names = np.array(["daisy", "dandelion", "roses"])
    assert [s.decode() for s in out["label"].numpy()] == list(names[expected.argmax(1)])
    np.testing.assert_allclose(out["score"].numpy(), expected.max(1), atol=1e-5)
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant([open(f, "rb").read() for f in files]))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    assert [n.decode() for n in loaded.class_names[0].numpy()] == list(names)


def test_serving_bytes_decodes_every_format_of_another_size_as_training_does(served, reference):
    rng = np.random.default_rng(3)
    pictures = [Image.fromarray(rng.integers(0, 256, (57, 90, 3), dtype=np.uint8)),
                Image.fromarray(rng.integers(0, 256, (200, 41, 3), dtype=np.uint8)).convert("RGBA"),
                Image.fromarray(rng.integers(0, 256, (33, 48, 3), dtype=np.uint8)),
                Image.fromarray(rng.integers(0, 256, (64, 29, 3), dtype=np.uint8)),
                Image.fromarray(rng.integers(0, 256, (45, 45, 3), dtype=np.uint8))]
    encoded = []
    for picture, fmt in zip(pictures, ("JPEG", "PNG", "GIF", "BMP", "WEBP"), strict=True):  # the README's list
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    resized = np.stack([image_io.resize_image(image_io.decode_image(b), SIZE) for b in encoded])
    expected = reference.model.predict_on_batch(resized.astype("float32"))
    out = served.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def interpreter(path):
    it = Interpreter(model_path=str(path))  # LiteRT's own interpreter
    it.allocate_tensors()
    return it


def run_tflite(it, images):
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    rows = []
    for image in images:
        x = np.round(image[None] / scale + zero) if scale else image[None]
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0])
    scale, zero = out["quantization"]
    rows = np.array(rows, dtype="float32")
    return (rows - zero) * scale if scale else rows


@pytest.mark.parametrize("name, fmt, atol", [
    ("model.tflite", "float32", 1e-5), ("model_fp16.tflite", "float16", 1e-2), ("model_int8.tflite", "int8", 0.1),
])
def test_tflite_files_answer_like_the_keras_model_with_their_own_weights(exported, reference, name, fmt, atol):
    expected = reference.expected
    it = interpreter(exported[0] / "export" / name)
    got = run_tflite(it, reference.images)
    np.testing.assert_allclose(got, expected, atol=atol)
    assert (got.argmax(1) == expected.argmax(1)).all()
    types = [np.dtype(d["dtype"]).name for d in it.get_tensor_details()]
    biggest = max(it.get_tensor_details(), key=lambda d: np.prod(d["shape"]))
    if fmt == "int8":
        assert it.get_input_details()[0]["dtype"] == np.uint8 and it.get_output_details()[0]["dtype"] == np.uint8
        assert "float32" not in types and np.dtype(biggest["dtype"]).name == "int8"
    elif fmt == "float16":
        assert "float16" in types and np.dtype(biggest["dtype"]).name == "float16"
    else:
        assert "float16" not in types and "int8" not in types


def test_onnx_file_answers_like_the_keras_model_in_onnxruntime_and_carries_its_class_names(exported, reference):
    import onnx
    import onnxruntime

    path = exported[0] / "export" / "model.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # not our loader
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [SIZE, SIZE, 3]
    got = session.run(None, {"images": reference.images.astype(np.float32)})[0]
    np.testing.assert_allclose(got, reference.expected, atol=1e-5)
    meta = {e.key: e.value for e in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == ["daisy", "dandelion", "roses"]


@pytest.mark.parametrize("model, atol", [
    ("savedmodel", 1e-5), ("model.tflite", 1e-5), ("model_fp16.tflite", 1e-2), ("model_int8.tflite", 0.1),
    ("model.onnx", 1e-5), ("../checkpoints/head_best.keras", 1e-6),
])
def test_predict_with_an_exported_model_gives_the_runs_answers(exported, reference, model, atol):
    run, files = exported[0], reference.files
    # predict.run with the run gives exactly the .keras model's probabilities (tests/test_predict.py)
    names = ["daisy", "dandelion", "roses"]
    expected = [predict.Prediction(f, ranking.top_k(row, names, 3)) for f, row in zip(files, reference.expected)]
    got, failures = predict.run(files, k=3, model_path=run / "export" / model)
    assert not failures and [p.path for p in got] == files
    for e, g in zip(expected, got):
        assert e.top_k[0]["label"] == g.top_k[0]["label"]
        want = {t["label"]: t["probability"] for t in e.top_k}
        for t in g.top_k:
            assert t["probability"] == pytest.approx(want[t["label"]], abs=atol)


def test_predict_command_takes_a_model_and_keeps_its_output_format(exported, reference):
    run, files = exported[0], reference.files
    result = runner.invoke(app, ["predict", *files, "--model", str(run / "export" / "model_int8.tflite"), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [e["path"] for e in out] == files and all([set(t) for t in e["top_k"]] == [{"label", "probability"}] * 2 for e in out)
    result = runner.invoke(app, ["predict", files[0], "--model", str(run / "export" / "savedmodel")])
    assert result.exit_code == 0 and "Predictions" in result.stdout and "#3" in result.stdout


def test_a_float_format_that_disagrees_is_an_error_after_the_table(exported, monkeypatch):
    run, _ = exported
    report = json.loads((run / "export" / "export.json").read_text())
    report["formats"][4].update(agreement=0.99, disagreeing_images=2)
    problem = export_checks.float_problem(report["formats"], 200, run / "export")
    assert problem.startswith("tflite-fp16 disagrees with the .keras model on 2 of 200 test images (1.0%")
    report["formats"][4].update(agreement=0.995, disagreeing_images=1)
    assert export_checks.float_problem(report["formats"], 200, run / "export") is None  # 0.5% is allowed
    report["formats"][5].update(agreement=0.5)  # int8 may disagree: it shows its accuracy change instead
    assert export_checks.float_problem(report["formats"], 200, run / "export") is None

    monkeypatch.setattr(export, "run", lambda *a, **k: export.Export(report, run / "export", [], "the problem"))
    result = runner.invoke(app, ["export", "--run-dir", str(run)])
    assert result.exit_code == 1 and "tflite-fp16" in result.stdout
    assert result.stderr.strip() == "Error: the problem"


def file_with(path, text=""):
    path.write_text(text)
    return str(path)


def run_without_checkpoints(tmp, run):
    copy = tmp / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    return copy


@pytest.mark.parametrize("args, message", [
    (lambda t, r: ["export", "--run-dir", str(r), "--format", "nosuch"],
     "format must be one of savedmodel, tflite, tflite-fp16, tflite-int8, onnx or all, got 'nosuch'"),
    (lambda t, r: ["export", "--run-dir", str(run_without_checkpoints(t, r))], "checkpoints/head_best.keras is missing"),
    (lambda t, r: ["export", "--run-dir", str(r), "--output", file_with(t / "f")],
     "it is a file; give another --output"),
    (lambda t, r: ["export", "--run-dir", str(r), "--output", file_with(t / "f") + "/sub"],
     "a part of it is a file; give another --output"),
    (lambda t, r: ["predict", "x.jpg", "--model", str(t / "nope")], "does not exist; give the savedmodel folder"),
    (lambda t, r: ["predict", "x.jpg", "--model", str(t)], "is a folder without saved_model.pb"),
    (lambda t, r: ["predict", "x.jpg", "--model", str(r / "export" / "savedmodel"), "--run-dir", str(r)],
     "is a model already: give it without --run-dir and --checkpoint"),
    (lambda t, r: ["predict", "x.jpg", "--model", str(shutil.copy(r / "export" / "model.tflite", t))],
     "has no labels.txt beside it"),
    (lambda t, r: ["predict", "x.jpg", "--model", file_with(t / "m.tflite", "no model")],
     "is not a loadable TFLite model"),
    (lambda t, r: ["predict", "x.jpg", "--model", file_with(t / "m.onnx", "no model")],
     "is not a loadable ONNX model"),
    (lambda t, r: ["predict", "x.jpg", "--model", str(shutil.copy(r / "checkpoints" / "head_best.keras", t))],
     "is not in a run folder with class_names.json"),
    (lambda t, r: ["predict", "x.jpg", "--model", file_with(t / "m.h5", "no model")],
     "is not a .tflite, .onnx or .keras file nor a SavedModel folder"),
], ids=["unknown format", "run without checkpoint", "output is a file", "output under a file", "missing model",
        "folder that is no SavedModel", "model and run dir", "tflite without labels", "broken tflite", "broken onnx",
        "keras without class names", "other file"])
def test_bad_input_is_one_line(exported, tmp_path, args, message):
    run, _ = exported
    line = one_line_error(runner.invoke(app, args(tmp_path, run)))
    assert message in line, line


def test_a_new_savedmodel_replaces_the_old_one_whole_and_a_failed_write_keeps_the_old(tmp_path):
    import keras

    def archive(n_outputs, fail=False):
        inputs = keras.Input((2,))
        model = keras.Model(inputs, keras.layers.Dense(n_outputs)(inputs))
        a = keras.export.ExportArchive()
        a.add_endpoint("serve", lambda x: model(x), input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        if fail:
            def write_out(path, **kw):
                (Path(path) / "saved_model.pb").write_text("half")
                raise KeyboardInterrupt
            a.write_out = write_out
        return a

    dest = tmp_path / "savedmodel"
    for n in (3, 5):
        export.write_savedmodel(archive(n), dest)
        out = tf.saved_model.load(str(dest)).signatures["serve"](x=tf.zeros([1, 2]))
        assert list(out.values())[0].shape == (1, n)
    with pytest.raises(KeyboardInterrupt):
        export.write_savedmodel(archive(7, fail=True), dest)
    assert list(tf.saved_model.load(str(dest)).signatures["serve"](x=tf.zeros([1, 2])).values())[0].shape == (1, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["savedmodel"]  # no temporary folder left


def test_a_mixed_precision_run_exports_to_tflite_in_float32(tmp_path):
    # TFLite cannot translate bfloat16 ops; the export rebuilds the classifier in float32.
    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", "mobilenet",
                                 "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "0",
                                 "--precision", "bfloat16", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--run-dir", str(run), "--format", "tflite"])
    assert result.exit_code == 0, result.output
    table = json.loads((run / "export" / "export.json").read_text())
    assert [row["format"] for row in table["formats"]] == ["keras", "tflite"] and table["verified"], table
    assert table["formats"][1]["agreement"] == 1.0


@pytest.mark.parametrize("model, atol", [("savedmodel", 1e-5), ("model.tflite", 1e-5), ("model.onnx", 1e-5)])
def test_serve_takes_each_exported_model_and_answers_as_tf_serving_would(exported, served, reference, model, atol):
    import base64

    import requests
    from server_process import ServerProcess

    files = reference.files
    expected = served.signatures["serving_bytes"](image_bytes=tf.constant([Path(f).read_bytes() for f in files]))
    server = ServerProcess("--model", str(exported[0] / "export" / model), "--model-name", "shoes")
    try:
        body = {"signature_name": "serving_bytes",
                "instances": [{"image_bytes": {"b64": base64.b64encode(Path(f).read_bytes()).decode()}} for f in files]}
        rows = requests.post(f"{server.url}/v1/models/shoes:predict", json=body, timeout=60).json()["predictions"]
    finally:
        server.stop()
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected["probabilities"].numpy(), atol=atol)
    assert [r["label"] for r in rows] == [label.decode() for label in expected["label"].numpy()]
