"""Checkpoints sized to what changed: the head phase saves the head, shipped checkpoints hold no optimizer."""

import dataclasses
import json
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pytest
import yaml
from helpers import stop_after

from flowerft.config import to_dict
from flowerft.config_files import make_config
from flowerft.errors import FlowerftError, Interrupted
from flowerft.training import checkpoints, session


def config(folder, run):
    return make_config(data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=4,
                       epochs_head=3, epochs_finetune=1, run_dir=str(run), tensorboard=False)


@pytest.fixture(scope="module")
def stopped_in_the_head_phase(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("small") / "run"
    with pytest.raises(Interrupted):
        session.run(config(folder, run), callbacks=lambda phase, c: [stop_after(2)])
    return folder, run


def h5_groups(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


def test_the_head_phase_state_holds_the_head_and_the_base_by_reference(stopped_in_the_head_phase):
    folder, run = stopped_in_the_head_phase
    files = {p.name: p.stat().st_size for p in (run / checkpoints.STATE).iterdir()}
    assert not (run / checkpoints.STATE / checkpoints.INITIAL_WEIGHTS).exists() and not list((run / checkpoints.STATE).glob("*.keras"))
    assert json.loads((run / checkpoints.STATE / checkpoints.INITIAL).read_text())["checksum"].startswith("crc32:")
    progress = checkpoints.Progress.load(run)
    assert progress.best_file.startswith("head_best-e") and progress.best_file in files
    # The whole classifier (MobileNet at 32 px) is 13 MB; the head and its optimizer a few kB.
    assert max(files.values()) < 50_000, files
    assert not (run / "checkpoints" / "head_best.keras").exists()  # written once, when the phase ends


def test_the_resumed_run_publishes_the_best_head_on_the_base_and_ships_no_optimizer(stopped_in_the_head_phase, tmp_path):
    folder, stopped = stopped_in_the_head_phase
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    with h5py.File(run / checkpoints.STATE / checkpoints.Progress.load(run).best_file, "r") as f:
        staged = []
        f.visititems(lambda name, item: staged.append(np.asarray(item)) if isinstance(item, h5py.Dataset) else None)
    assert sorted(a.shape for a in staged) == [(3,), (1024, 3)]  # the head's kernel and bias, nothing else
    result = session.run(config(folder, run), resume=True)
    head_best = keras.saving.load_model(run / "checkpoints" / "head_best.keras", safe_mode=True)
    assert head_best.input_shape == (None, 32, 32, 3)  # the whole classifier
    if result.metrics["phases"]["head"]["best_epoch"] <= 2:  # the staged head stayed the best
        kernel, bias = head_best.get_layer("predictions").get_weights()
        assert any(np.array_equal(kernel, a) for a in staged) and any(np.array_equal(bias, a) for a in staged)
    for name in ("head_best.keras", "finetune_best.keras", "final.keras"):
        with zipfile.ZipFile(run / "checkpoints" / name) as archive:
            archive.extract("model.weights.h5", tmp_path / name)
        groups = h5_groups(tmp_path / name / "model.weights.h5")
        assert groups and not [g for g in groups if g.startswith("optimizer")], name


def test_a_resume_whose_base_is_not_the_one_it_started_from_is_refused(stopped_in_the_head_phase, tmp_path):
    folder, stopped = stopped_in_the_head_phase
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    recorded = json.loads((run / checkpoints.STATE / checkpoints.INITIAL).read_text())
    (run / checkpoints.STATE / checkpoints.INITIAL).write_text(json.dumps({**recorded, "checksum": "crc32:00000000"}))
    with pytest.raises(FlowerftError, match="cannot resume .* differs from the one the run started with"):
        session.run(config(folder, run), resume=True)


def test_a_run_killed_while_its_run_dir_was_started_is_started_again_by_resume(stopped_in_the_head_phase, tmp_path):
    """benchmarks/kill_anywhere.py found it: killed while writing class_names.json, before state/ existed."""
    folder, _ = stopped_in_the_head_phase
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(config(folder, run))))
    resumed = dataclasses.replace(config(folder, run), epochs_head=1, epochs_finetune=0)
    messages = []
    result = session.run(resumed, notify=messages.append, resume=True)
    assert any("was stopped before its training began: starting it again" in m for m in messages)
    assert result.metrics["phases"]["head"]["epochs_run"] == 1


def test_final_keras_is_the_best_checkpoints_file_not_a_second_copy(tmp_path):
    source, final = tmp_path / "finetune_best.keras", tmp_path / "final.keras"
    source.write_bytes(b"the model")
    final.write_bytes(b"an older final")  # replaced whole, as every write in a run dir is
    checkpoints.copy_atomic(source, final)
    assert final.read_bytes() == b"the model" and final.samefile(source)  # one file, two names: no 84 MB written twice
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
