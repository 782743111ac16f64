"""Shared fixtures: generated image folders, one small trained run for the slower tests, the tiny
backbone, and the checks that keep every test out of the checkout. The helpers they use are in
helpers.py.

Everything runs offline on data made here, with weights=none and tiny images.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest
from helpers import TINY, make_image_folder, tiny_base_under_head, working_directory


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "flowers")


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory):
    """make_image_folder(**options) for fixtures of any scope, built once per set of options in the
    session. Tests only read these folders: one that changes its folder makes its own."""
    built: dict[tuple, Path] = {}

    def folder(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = make_image_folder(tmp_path_factory.mktemp("images") / "flowers", **options)
        return built[key]

    return folder


@pytest.fixture(scope="session")
def folder(image_folders) -> Path:
    """The training tests' images, 8 per class: 18 for training, so batches of 4 end with a short one.
    A module that needs another folder defines its own `folder`."""
    return image_folders(per_class=8)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real `flowerft train` through the CLI: Xception, weights none, 71 px, 1+1 epochs."""
    from typer.testing import CliRunner

    from flowerft.cli import app

    root = tmp_path_factory.mktemp("e2e")
    folder = make_image_folder(root / "flowers", per_class=12)
    runs = root / "runs"
    with working_directory(root):  # runs/latest, the pointer to the newest run, is written under the working directory
        result = CliRunner().invoke(app, [
            "train", "--data-dir", str(folder), "--weights", "none", "--image-size", str(TINY),
            "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1",
            "--run-dir", str(runs / "first"),
        ])
    assert result.exit_code == 0, result.output
    return runs / "first"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder: runs/latest and any relative path land there, not in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_backbone():
    """tiny_base_under_head for one test: build_model puts helpers.tiny_base under the head."""
    with tiny_base_under_head():
        yield


CHECKOUT = Path(__file__).resolve().parent.parent
# What tests may add to a checkout: Python's and pytest's own caches, the venv, build output.
NOT_THE_CHECKOUTS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist"}


def checkout_files(root: Path = CHECKOUT) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of every file in the checkout but caches, venv and .git."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in NOT_THE_CHECKOUTS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            stat = path.lstat()
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found(tmp_path_factory):
    """The session runs in a temp folder, and fails at its end if the checkout gained or changed a file.

    Module- and session-scoped fixtures run before the per-test chdir (in_tmp_path): without this they would
    write runs/latest (the pointer to the newest run) into the checkout.
    """
    before = checkout_files()
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session_cwd"))
    yield
    os.chdir(previous)
    after = checkout_files()
    changed = sorted(p for p in after.keys() | before.keys() if before.get(p) != after.get(p))
    assert not changed, f"the tests wrote into the checkout {CHECKOUT}: {changed[:10]}"
