"""Where a run trained or a model was exported: the same recipe can differ across versions and devices.

One description for metrics.json's `environment` and export.json's `machine` (and the start line's
devices), so a report and a model card say the same thing about the same machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import keras
import tensorflow as tf


def devices(strategy_description: str = "") -> str:
    """'CPU (2 cores)' or '4 GPUs', with how a strategy uses them when there is one."""
    gpus = tf.config.list_logical_devices("GPU")
    where = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}" if gpus else f"CPU ({os.cpu_count()} cores)"
    return f"{where}, {strategy_description}" if strategy_description else where


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(*packages: str) -> dict[str, object]:
    """Versions and hardware; `packages` adds the versions of those that matter to the caller (None if absent)."""
    return {
        "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
        "platform": platform.platform(terse=True), "cpu": platform.machine(), "cpu_cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")), "device": devices(),
        **{package: installed(package) for package in packages},
    }
