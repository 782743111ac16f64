"""flowerft predict FOLDER --csv / --jsonl: every file a row in order, bad files in theirs, streamed."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowerft.cli import app
from flowerft.data import image_inputs
from flowerft.serving import predict

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    """Good images with bad files among them: in the middle, and last (the pipeline's gap and its tail)."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "c.png", "sub/d.webp", "e.jpg", "f.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / name)
    (root / "b.jpg").write_bytes(b"not an image")
    (root / "zz.png").write_bytes(b"")
    return root


def expected_rows(trained_run, folder):
    files, _ = image_inputs.expand_inputs([folder])
    good, failures = predict.run([folder], run_dir=trained_run, k=2)
    return [str(f) for f in files], {p.path: p.top_k for p in good}, {f.path: f.message for f in failures}


def test_csv_has_a_row_per_file_in_order_with_bad_files_in_theirs(trained_run, folder, tmp_path):
    paths, good, bad = expected_rows(trained_run, folder)
    assert set(bad) == {str(folder / "b.jpg"), str(folder / "zz.png")} and len(good) == 5
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(folder), "--run-dir", str(trained_run), "--csv", str(out), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "5 images predicted, 2 could not be read" in result.stderr and result.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label_1", "probability_1", "label_2", "probability_2", "error"]
    assert [r["path"] for r in rows] == paths
    for row in rows:
        if row["path"] in bad:
            assert row["error"] == bad[row["path"]] and row["label_1"] == ""
        else:
            want = good[row["path"]]
            assert row["error"] == "" and [row["label_1"], row["label_2"]] == [t["label"] for t in want]
            assert float(row["probability_1"]) == pytest.approx(want[0]["probability"], abs=1e-6)
    assert "not an image" in bad[str(folder / "b.jpg")] and "empty" in bad[str(folder / "zz.png")]


def test_jsonl_has_a_line_per_file_and_a_missing_input_is_a_row_too(trained_run, folder, tmp_path):
    paths, good, bad = expected_rows(trained_run, folder)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", str(folder / "nope.jpg"), str(folder), "--run-dir", str(trained_run),
                                 "--jsonl", str(out), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(folder / "nope.jpg"), *paths]
    assert "no such file" in lines[0]["error"]
    for line in lines[1:]:
        if line["path"] in bad:
            assert line == {"path": line["path"], "error": bad[line["path"]]}
        else:
            want = good[line["path"]]
            assert set(line) == {"path", "top_k"} and [t["label"] for t in line["top_k"]] == [t["label"] for t in want]
            assert [t["probability"] for t in line["top_k"]] == pytest.approx([t["probability"] for t in want], abs=1e-6)


def test_results_stream_out_a_batch_at_a_time(trained_run, folder):
    predictor, _ = predict.load_predictor(trained_run)
    calls = []

    class Counting:
        class_names, image_size = predictor.class_names, predictor.image_size

        def __call__(self, images):
            calls.append(len(images))
            return predictor(images)

    files, _ = image_inputs.expand_inputs([folder])
    results = predict.stream(files * 10, Counting(), 4, 3)
    first = next(results)
    assert first.path == str(files[0]) and calls == [4]  # the first rows come before the rest is predicted
    rest = list(results)
    assert len(rest) == 70 - 1 and sum(calls) == 50  # every good file once, in batches of 4
    assert all(c == 4 for c in calls[:-1])


def test_one_output_format_at_a_time(trained_run, folder, tmp_path):
    result = runner.invoke(app, ["predict", str(folder), "--csv", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 1 and "give one of --csv, --jsonl and --json" in result.output
    result = runner.invoke(app, ["predict", str(folder), "--run-dir", str(trained_run), "--csv", str(tmp_path / "no" / "x.csv")])
    assert result.exit_code == 1 and "cannot write" in result.output and "Traceback" not in result.output


def test_rows_come_in_the_order_the_inputs_were_given(trained_run, folder, tmp_path):
    paths, _, _ = expected_rows(trained_run, folder)
    single = tmp_path / "single.jpg"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(single)
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(folder), str(missing), str(single), "--run-dir", str(trained_run),
                                 "--csv", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [*paths, str(missing), str(single)]
    assert "no such file" in rows[len(paths)]["error"] and rows[-1]["error"] == ""
