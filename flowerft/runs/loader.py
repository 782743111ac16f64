"""The one way to open a run that training wrote: its config, class names, metrics, a checkpoint
and its Keras model. `evaluate`, `predict`, `export`, `explain`, `report` and `serve` all open runs
here, so a missing, unfinished or foreign folder gives the same one line everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flowerft.config import Config
from flowerft.config_files import make_config
from flowerft.errors import FlowerftError, first_line
from flowerft.runs import layout, lock

CHECKPOINTS = ("best", "final")


def run_config(run_dir: Path) -> Config:
    """The run's resolved config.yaml as a Config (checked as a new one would be)."""
    path = run_dir / layout.CONFIG
    if not path.is_file():
        raise FlowerftError(f"{run_dir} holds no {layout.CONFIG}; is it a folder written by `flowerft train`?")
    try:
        values = layout.read_yaml(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise FlowerftError(f"{path} cannot be read ({first_line(e)}); pick another --run-dir") from None
    if not isinstance(values, dict):
        raise FlowerftError(f"{path} does not hold a flowerft configuration; pick another --run-dir")
    return make_config(**values)


def class_names(run_dir: Path) -> list[str]:
    return layout.read_json(run_dir / layout.CLASS_NAMES)


def finished_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json, which training writes last: a run without it is still training or was stopped."""
    path = run_dir / layout.METRICS
    if not path.is_file():
        if trainer := lock.holder(run_dir):
            raise FlowerftError(f"{run_dir} is still training ({trainer}); use it when its training has finished")
        raise FlowerftError(
            f"{run_dir} has no {layout.METRICS}: its training did not finish; continue it with "
            f"`flowerft train --resume --run-dir {run_dir}` or pick another --run-dir"
        )
    return layout.read_json(path)


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """The `.keras` file for best (over both phases, from metrics.json) or final."""
    if which not in CHECKPOINTS:
        raise FlowerftError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    path = run_dir / finished_metrics(run_dir)[f"{which}_checkpoint"]
    if not path.is_file():
        raise FlowerftError(f"checkpoint {path} is missing; use --checkpoint {'final' if which == 'best' else 'best'} or train again")
    return path


def load_model(path: Path):
    """A `.keras` file in safe mode, which refuses to deserialize code (Lambda layers and the like)."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise FlowerftError(f"{path} is not a loadable Keras model ({first_line(e)}); train again or pick another checkpoint") from None
