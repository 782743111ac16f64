"""Training curves: loss and accuracy, train and validation, both phases on one epoch axis.

Read from the run dir alone (history.json once training finished, the per-phase CSVs while
it runs or after it was interrupted), so `train`, `report` and anyone else draw the same plot.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from flowerft import figures
from flowerft.runs import layout

CURVES = "curves.png"
PHASES = ("head", "finetune")


def load_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished epoch of both phases, in order: {"phase", "epoch", "loss", "val_accuracy", ...}."""
    if (run_dir / layout.HISTORY).is_file():
        return layout.read_json(run_dir / layout.HISTORY)
    rows = []
    for phase in PHASES:
        path = run_dir / f"history_{phase}.csv"
        if path.is_file():
            with path.open(newline="") as f:
                rows += [{k: _value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
    return rows


def _value(key: str, text: str):
    if key == "phase":
        return text
    return int(text) if key == "epoch" else float(text) if text else None


def best_epoch(run_dir: Path, history: list[dict[str, Any]]) -> int | None:
    """The epoch of the best checkpoint (metrics.json), else, mid-run, of the best validation accuracy so far."""
    metrics_path = run_dir / layout.METRICS
    if metrics_path.is_file():
        metrics = layout.read_json(metrics_path)
        best = metrics.get("phases", {}).get(metrics.get("best_phase") or "", {})
        return best.get("best_epoch")
    scored = [r for r in history if _finite(r.get("val_accuracy"))]
    return max(scored, key=lambda r: r["val_accuracy"])["epoch"] if scored else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_curves(history: list[dict[str, Any]], path: Path, best: int | None = None, title: str = "") -> None:
    """Loss and accuracy side by side; fine-tuning shaded from the phase boundary on; the best epoch marked."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    finetune = [r["epoch"] for r in history if r["phase"] == "finetune"]
    boundary = min(finetune) - 0.5 if finetune else None
    last = max((r["epoch"] for r in history), default=1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "--s")):
            points = [(r["epoch"], r[key]) for r in history if _finite(r.get(key))]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=4)
        if boundary is not None:
            ax.axvspan(boundary, last + 0.5, color="0.92", zorder=0)
            ax.axvline(boundary, color="0.5", linewidth=1)
            ax.text(boundary, 1.01, " fine-tune", transform=ax.get_xaxis_transform(), fontsize=8, color="0.3")
            ax.text(boundary, 1.01, "head ", transform=ax.get_xaxis_transform(), fontsize=8, color="0.3", ha="right")
        if best is not None:
            ax.axvline(best, color="tab:green", linestyle=":", linewidth=1.5, label=f"best epoch ({best})")
        ax.set_xlabel("epoch (both phases)")
        ax.set_ylabel(metric)
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    figures.save_figure(fig, path)


def write_curves(run_dir: Path, folder: Path | None = None) -> Path | None:
    """R/curves.png (or `folder`/curves.png) from the run's history; None if no epoch has finished yet."""
    history = load_history(run_dir)
    if not history:
        return None
    path = (folder or run_dir) / CURVES
    plot_curves(history, path, best_epoch(run_dir, history), title=run_dir.name)
    return path
