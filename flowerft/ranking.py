"""A model's probabilities as its k most likely classes: what `predict`, `serve` and `explain` show."""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict[str, Any]]:
    """[{"label", "probability"}], most likely first; equal probabilities keep the label order."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in order]
