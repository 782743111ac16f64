"""Batch prediction's memory: `flowerft predict FOLDER --csv` on 1,000 and on 100,000 files, peak RSS of each.

    python benchmarks/predict_memory.py --run-dir runs/<run> [--counts 1000 100000]

Each count runs `flowerft predict` in a fresh process on a folder of that many small JPEGs and
prints the process's peak resident memory, its wall time and the CSV's row count. Streaming means
the peak does not grow with the number of files: the rows are written as they come and only a
few batches are decoded at a time. (The files' names, one list of paths, are the one thing that
grows: about 100 bytes a file.)
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# The child: the CLI as a user runs it, then its own peak RSS on stderr's last line.
CHILD = """
import resource, sys
from flowerft.cli import app
try:
    app(["predict", sys.argv[1], "--csv", sys.argv[2], "--run-dir", sys.argv[3]], standalone_mode=False)
finally:
    print(f"peak_rss_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def photos(folder: Path, n: int, size: int) -> None:
    """`n` JPEGs of `size` px: 16 distinct images written over and over (memory, not content, is measured)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(16):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
        encoded.append(out.getvalue())
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"photo_{i:06d}.jpg").write_bytes(encoded[i % 16])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the run whose model predicts")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--size", type=int, default=64, help="the JPEGs' side in pixels")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; run {args.run_dir}; JPEGs of {args.size} px")
    print("| files | peak RSS | wall time | rows in the CSV |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="flowerft-predict-memory-") as tmp:
        for n in args.counts:
            folder, out = Path(tmp) / f"n{n}", Path(tmp) / f"n{n}.csv"
            photos(folder, n, args.size)
            start = time.perf_counter()
            child = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), args.run_dir],
                                   capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            wall = time.perf_counter() - start
            peak = int(child.stderr.strip().splitlines()[-1].split()[-1]) / 2**10
            with out.open() as f:
                rows = sum(1 for _ in csv.DictReader(f))
            print(f"| {n:,} | {peak:,.0f} MB | {wall:.0f} s | {rows:,} |", flush=True)


if __name__ == "__main__":
    main()
