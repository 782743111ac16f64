"""Batch prediction's speed: `flowerft predict FOLDER --csv` against bare model.predict, in one run.

    python benchmarks/batch_predict.py --run-dir runs/<run> [--images 1000]

Prints images/s of flowerft's streamed prediction (files read and decoded in parallel through
tf.data, predicted in batches, each row written to a CSV as it comes) over N generated JPEGs,
and images/s of bare `model.predict` on the same images already decoded into one in-memory
tensor (no reading, no decoding): the ratio says what the file handling costs [target >= 0.8].
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Camera-like JPEGs of 320-640 px: smooth colour fields with noise, so they compress like photos."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        h, w = rng.integers(240, 480), rng.integers(320, 640)
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), dtype=float)
        image += rng.normal(0, 12, image.shape)
        files.append(folder / f"photo_{i:05d}.jpg")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(files[-1], quality=88)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="the run whose model predicts (default: runs/latest)")
    parser.add_argument("--model", help="or an exported model file/folder")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="each side is timed this many times; the best counts")
    args = parser.parse_args()

    import tensorflow as tf

    from flowerft.data import image_io
    from flowerft.serving import predict

    predictor, batch_size = predict.load_predictor(args.run_dir, "best", args.model)
    size = predictor.image_size
    with tempfile.TemporaryDirectory(prefix="flowerft-batch-bench-") as tmp:
        files = make_photos(Path(tmp), args.images)
        decoded = np.stack([image_io.read_image(f, size).numpy() for f in files])
        print(f"{len(files)} JPEGs ({sum(f.stat().st_size for f in files) / 2**20:.0f} MB), model {predictor.kind} "
              f"at {size} px, batch {batch_size}, {os.cpu_count()} cores, TensorFlow {tf.__version__}")

        predictor(decoded[:batch_size])  # trace and warm up both paths once
        bare_model = getattr(predictor, "model", None)

        def bare() -> None:
            if bare_model is not None:
                bare_model.predict(decoded.astype(np.float32), batch_size=batch_size, verbose=0)
            else:
                for i in range(0, len(decoded), batch_size):
                    predictor(decoded[i : i + batch_size])

        def flowerft() -> int:
            out = io.StringIO()
            rows = list(predict.write_rows(predict.stream(files, predictor, batch_size, 3), out, "csv", 3))
            assert sum(isinstance(r, predict.Prediction) for r in rows) == len(files)
            return len(rows)

        def best_rate(fn) -> float:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return len(files) / min(times)

        bare_rate = best_rate(bare)
        ours = best_rate(flowerft)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"bare model.predict on decoded tensors: {bare_rate:8.1f} images/s")
    print(f"flowerft predict FOLDER --csv:         {ours:8.1f} images/s (files read, decoded, predicted, written)")
    print(f"ratio: {ours / bare_rate:.3f}  [target >= 0.8]   peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
