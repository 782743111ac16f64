"""benchmarks/gpu.py, on a machine without a GPU, stops at once with one line saying what it needs."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def test_gpu_benchmark_without_a_gpu_says_so_in_one_line(tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the benchmark would run for real")
    out = subprocess.run([sys.executable, str(SCRIPT), "--images", "10"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [errors[0]] and "no GPU is visible to TensorFlow" in errors[0], out.stderr
    assert "tensorflow[and-cuda]" in errors[0]
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no folder generated, no run started
