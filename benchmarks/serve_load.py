"""Load test of `flowerft serve` on loopback: N concurrent clients, a bounded number of requests.

    python benchmarks/serve_load.py --run-dir runs/<run> [--clients 8 --requests 400]
    python benchmarks/serve_load.py --model runs/<run>/export/model.onnx

The server runs in its own process (tests/server_process.py starts it, on a port it picks itself);
each client is a thread with its own HTTP connection, sending one camera-sized JPEG per request
(TF Serving's serving_bytes, base64) until the total is reached. Prints requests/s, p50/p95/p99
latency, errors (must be 0), the server's peak RSS and images per model call (its batching), and
images/s against the bare model's own images/s (the same predictor, batches of 32 decoded
images, in this process after the server has stopped) on the same machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_process import ServerProcess  # noqa: E402


def photo(seed: int = 0, size=(375, 500)) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(base).resize(size[::-1], Image.BILINEAR), dtype=float) + rng.normal(0, 12, (*size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, bodies: list[str], clients: int, total: int) -> tuple[list[float], int, float]:
    latencies, errors, lock = [], [0], threading.Lock()
    issued = iter(range(total))

    def client() -> None:
        session = requests.Session()
        for i in issued:  # the shared iterator hands out each request once (next() holds the GIL)
            start = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/models/flowerft:predict", data=bodies[i % len(bodies)], timeout=120)
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir")
    parser.add_argument("--model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    bodies = ['{"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": "%s"}}]}'
              % base64.b64encode(photo(seed)).decode() for seed in range(16)]
    target = ["--model", args.model] if args.model else ["--run-dir", args.run_dir] if args.run_dir else []
    server = ServerProcess(*target)
    try:
        load(server.url, bodies, args.clients, 2 * args.clients)  # warm-up: every batch size traced once
        latencies, errors, wall = load(server.url, bodies, args.clients, args.requests)
        health = requests.get(f"{server.url}/healthz", timeout=10).json()
        rss = peak_rss_mb(server.process.pid)
    finally:
        server.stop()

    from flowerft.data import image_io
    from flowerft.serving import predict

    predictor, _ = predict.load_predictor(args.run_dir, "best", args.model)
    size = predictor.image_size
    batch = np.stack([image_io.image_from_bytes(photo(s), size).numpy() for s in range(32)])
    predictor(batch)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 10 or calls < 3:
        predictor(batch)
        calls += 1
    bare = calls * len(batch) / (time.perf_counter() - start)

    ms = np.percentile(latencies, [50, 95, 99]) * 1000
    served = len(latencies) / wall
    print(f"{args.requests} requests of one {len(bodies[0]) / 1024:.0f} KB JPEG (base64), {args.clients} concurrent clients, "
          f"model {predictor.kind} at {size} px, {os.cpu_count()} cores")
    print(f"requests/s: {served:.1f}   latency p50 {ms[0]:.0f} ms, p95 {ms[1]:.0f} ms, p99 {ms[2]:.0f} ms   errors: {errors}")
    print(f"server peak RSS: {rss:.0f} MB   images per model call: {health['images'] / max(health['model_calls'], 1):.1f}")
    print(f"images/s served: {served:.1f}   bare model (batches of 32 decoded images): {bare:.1f}   ratio {served / bare:.2f}")


if __name__ == "__main__":
    main()
