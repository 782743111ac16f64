"""What the report page shows, as plain data: `report` gathers it from a run dir, `html_page` renders it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowerft.runs import listing


class Missing(Exception):
    """A part of the page the run dir cannot give; the message says why."""


@dataclass
class Example:
    index: int  # position in the test split
    true: str
    predicted: str
    probability: float  # of the predicted class
    true_probability: float
    path: str | None = None  # the image file, for a folder run
    thumbnail: str | None = None  # data: URI
    heatmap: str | None = None  # data: URI: the thumbnail under the Grad-CAM map of the predicted class


@dataclass
class Page:
    run_dir: Path
    config: dict[str, Any]
    row: listing.RunRow  # status, epochs, best validation accuracy and time, finished or not
    metrics: dict[str, Any] | None
    class_names: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # images per split
    parts: dict[str, Any] = field(default_factory=dict)  # part name -> its data, or Missing
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the report itself did (re-evaluated, ...)
    split: str = "test"  # the held-out split shown: valid for a run whose data came without a test split
    failed: str | None = None  # why evaluating for the page failed: the page is written, the command fails
    out: Path | None = None  # where the page and what it draws go (default: the run dir)
