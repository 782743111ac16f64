"""`flowerft runs`: every run under a runs root, newest first, with how far it got and how good it is.

Read from the run dirs alone, without TensorFlow, so it is instant. A folder's status:
    finished                 metrics.json is there (written last by `train`)
    in progress              a `train` holds the run's lock file
    interrupted (resumable)  stopped after training began: `train --resume` continues it
    incomplete               stopped before training began: nothing to resume
    not a run                a folder `flowerft train` did not write
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flowerft.errors import FlowerftError
from flowerft.runs import layout, lock, source_record

FINISHED, IN_PROGRESS, INTERRUPTED, INCOMPLETE, NOT_A_RUN = (
    "finished", "in progress", "interrupted (resumable)", "incomplete", "not a run",
)


@dataclass
class RunRow:
    name: str
    path: str
    status: str
    started: float  # seconds since the epoch: config.yaml's time (the folder's, for a foreign one)
    backbone: str | None = None
    image_size: int | None = None
    epochs_run: int | None = None
    epochs_planned: int | None = None
    best_val_accuracy: float | None = None
    test_accuracy: float | None = None  # from evaluation.json, when the run was evaluated
    test_balanced_accuracy: float | None = None  # also None for an evaluation.json older than these scores
    test_macro_f1: float | None = None
    wall_time_s: float | None = None
    best: bool = False  # the finished run with the highest validation accuracy
    source: str | None = None  # where its images come from: "folder flowers", "tfds beans:0.1.0", ...

    def to_dict(self) -> dict:
        row = asdict(self)
        row["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        row["wall_time_s"] = None if self.wall_time_s is None else round(self.wall_time_s, 1)
        return row


def status(run_dir: Path) -> str:
    if not layout.is_run(run_dir):
        return NOT_A_RUN
    if (run_dir / layout.METRICS).is_file():
        return FINISHED
    if lock.holder(run_dir):  # a `train` holds the run's lock (flowerft/runs/lock.py)
        return IN_PROGRESS
    if any((run_dir / "state" / name).is_file() for name in ("initial.json", "initial.weights.h5")):
        return INTERRUPTED
    return INCOMPLETE


def _json(path: Path):
    try:
        return layout.read_json(path)
    except (OSError, ValueError):
        return None


def describe(run_dir: Path) -> RunRow:
    """One row: what config.yaml, metrics.json (or, unfinished, state/progress.json) and evaluation.json say."""
    row = RunRow(run_dir.name, str(run_dir), status(run_dir), run_dir.stat().st_mtime)
    if row.status == NOT_A_RUN:
        return row
    config = layout.read_yaml(run_dir / layout.CONFIG)
    row.started = (run_dir / layout.CONFIG).stat().st_mtime
    row.backbone, row.image_size = config.get("backbone"), config.get("image_size")
    row.source = source_record.describe(config, source_record.read(run_dir), short=True)
    row.epochs_planned = (config.get("epochs_head") or 0) + (config.get("epochs_finetune") or 0)
    metrics = _json(run_dir / layout.METRICS)
    if isinstance(metrics, dict) and isinstance(metrics.get("phases"), dict):
        phases = metrics["phases"].values()
        row.epochs_run = sum(p.get("epochs_run") or 0 for p in phases)
        row.best_val_accuracy = metrics.get("best_val_accuracy")
        row.wall_time_s = sum(p.get("wall_time_s") or 0 for p in phases)
    else:
        _from_progress(run_dir, row)
    evaluation = _json(run_dir / "evaluation.json")
    if isinstance(evaluation, dict):
        row.test_accuracy = evaluation.get("accuracy")
        row.test_balanced_accuracy, row.test_macro_f1 = evaluation.get("balanced_accuracy"), evaluation.get("macro_f1")
    return row


def _from_progress(run_dir: Path, row: RunRow) -> None:
    """An unfinished run's figures: its finished epochs, as state/progress.json recorded them."""
    progress = _json(run_dir / "state" / "progress.json")
    if not isinstance(progress, dict):
        return
    head = progress.get("head") or {}  # the head phase's summary, once fine-tuning runs
    history = [*(head.get("history") or []), *(progress.get("history") or [])]
    row.epochs_run = len(history)
    scores = [r["val_accuracy"] for r in history if isinstance(r.get("val_accuracy"), float) and math.isfinite(r["val_accuracy"])]
    row.best_val_accuracy = max(scores, default=None)
    row.wall_time_s = (head.get("wall_time_s") or 0) + (progress.get("wall_time_s") or 0)


def list_runs(runs_root: str | Path = "runs") -> list[RunRow]:
    """Every folder under `runs_root`, newest first; the best finished run marked."""
    root = Path(runs_root)
    if not root.is_dir():
        raise FlowerftError(f"runs root {root} is not a folder; train a run first or give --runs-root")
    rows = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                rows.append(describe(folder))
            except (OSError, ValueError, AttributeError) as e:  # a run dir damaged by hand: say so, list the rest
                rows.append(RunRow(folder.name, str(folder), f"unreadable ({type(e).__name__})", folder.stat().st_mtime))
    rows.sort(key=lambda r: r.started, reverse=True)
    finished = [r for r in rows if r.status == FINISHED and r.best_val_accuracy is not None]
    if finished:
        max(finished, key=lambda r: r.best_val_accuracy).best = True
    return rows


def to_json(rows: list[RunRow]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
