"""Where a small `flowerft train` run's seconds go: one row per piece of work, measured in-process.

    python benchmarks/profile_run.py --images 300 --image-size 128

Runs `flowerft train` (the CLI, in a fresh process each) twice on a generated folder of
flower-like JPEGs, Xception with random weights: head only (`--epochs-head 5 --epochs-finetune 0`)
and with one fine-tune epoch (`--epochs-finetune 1`). The library's functions are wrapped with
timers; each row is the time spent in that work itself (work nested in it, e.g. a checkpoint
saved at the end of an epoch, is its own row), so the rows add up to the process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the child process runs: the CLI in-process, with timers around the library's work.
CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
spans, stack = {}, []

def enter(label):
    now = time.perf_counter()
    if stack:
        parent, since = stack[-1]
        spans[parent] = spans.get(parent, 0.0) + now - since
    stack.append([label, now])

def leave():
    now = time.perf_counter()
    label, since = stack.pop()
    spans[label] = spans.get(label, 0.0) + now - since
    if stack:
        stack[-1][1] = now

def wrap(module, name, label):
    if not hasattr(module, name):  # work an older or newer version does not do
        return
    original = getattr(module, name)
    def timed(*args, **kwargs):
        enter(label(*args, **kwargs) if callable(label) else label)
        try:
            return original(*args, **kwargs)
        finally:
            leave()
    setattr(module, name, timed)

enter("python start-up, import flowerft CLI")
from flowerft.cli import app
from flowerft.cli import common
leave()
enter("import tensorflow, keras, flowerft.training")
common.import_tensorflow_quietly()
from flowerft import machine
from flowerft.cli import progress_display
from flowerft.data import pipelines, sources, splitting
from flowerft.reporting import curves
from flowerft.training import cached, callbacks, checkpoints, recipe, session, start
leave()
common.import_tensorflow_quietly = lambda: None

wrap(splitting, "undecodable", "source check: decode every file once")
wrap(sources, "load", "source: list the folder, split")
wrap(session, "build_model", "model build")
wrap(start, "start_run_dir", "run dir: config, splits, initial state")
wrap(pipelines, "decode_split", "decode and resize the images into memory")
wrap(pipelines, "pipeline", "pipeline build")
wrap(cached, "head_features", "head features: the base's forward pass (and its tracing), feature model, pipelines")
wrap(recipe, "fit_phase", "phase set-up and end (callbacks, publish)")
wrap(recipe, "compile_for_phase", "compile")
def saved(model, path, *a, **k):
    p = str(path)
    if "initial" in p:
        return "save: initial weights (state/)"
    if "final" in p:
        return "save: final.keras"
    if "_best" in p and "/state/" in p:
        return "save: best checkpoint of each better epoch (state/)"
    if "_best" in p:
        return "save: best checkpoint published (checkpoints/)"
    return "save: each epoch's state (state/)"
for module in (checkpoints, callbacks):
    for name in ("save_weights_atomic", "save_model_atomic"):
        wrap(module, name, saved)
wrap(checkpoints, "copy_atomic", "save: final.keras as a copy of the best")
wrap(checkpoints, "weights_checksum", "initial state: checksum of the weights")
wrap(checkpoints, "load_fitted", "resume: load state")
wrap(session, "summarize", "end: summary")
wrap(machine, "describe", "end: environment")
wrap(keras_fit := __import__("keras").Model, "fit", "fit: set-up and tracing outside epochs")

Epoch = progress_display.EpochProgress
begin, end = Epoch.on_epoch_begin, Epoch.on_epoch_end
def on_epoch_begin(self, epoch, logs=None):
    enter(f"{self.phase} epoch {epoch + 1 - (0 if self.phase == 'head' else self.display.clock.epochs['head'])}")
    begin(self, epoch, logs)
def on_epoch_end(self, epoch, logs=None):
    end(self, epoch, logs)
    leave()
Epoch.on_epoch_begin, Epoch.on_epoch_end = on_epoch_begin, on_epoch_end

enter("CLI: messages, display, summary table, other")
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    leave()
spans["total (process wall time)"] = time.perf_counter() - T0
print("PROFILE " + json.dumps(spans))
"""


def profile(args: list[str], work: Path) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    # In `work`: the run's runs/latest pointer goes there, not into the caller's folder.
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=work)
    if out.returncode:
        sys.exit(f"flowerft train {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    wall = time.perf_counter() - start
    line = next(line for line in out.stdout.splitlines() if line.startswith("PROFILE "))
    return json.loads(line[len("PROFILE "):]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs-head", type=int, default=5)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmark import make_flowers

    work = Path(tempfile.mkdtemp(prefix="flowerft-profile-"))
    folder = make_flowers(work / "flowers", args.images)
    common = ["train", "--data-dir", str(folder), "--weights", "none", "--backbone", args.backbone,
              "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
              "--epochs-head", str(args.epochs_head)]
    runs = {}
    for name, finetune in (("head only", 0), ("+ 1 fine-tune epoch", 1)):
        runs[name] = profile([*common, "--epochs-finetune", str(finetune), "--run-dir", str(work / f"run{finetune}")], work)
        sizes = {p.name: p.stat().st_size for p in (work / f"run{finetune}" / "checkpoints").glob("*.keras")}
        print(f"{name}: checkpoints " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items())), flush=True)
    labels = list(dict.fromkeys(label for spans, _ in runs.values() for label in spans))
    labels.remove("total (process wall time)")
    print(f"\n{args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.images} images, "
          f"{args.epochs_head} head epochs; seconds ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"| work | {' | '.join(runs)} |")
    print("| --- |" + " ---: |" * len(runs))
    for label in [*labels, "total (process wall time)"]:
        print(f"| {label} | " + " | ".join(f"{spans.get(label, 0.0):.2f}" for spans, _ in runs.values()) + " |")
    print("| measured from outside (process start to exit) | " + " | ".join(f"{wall:.2f}" for _, wall in runs.values()) + " |")


if __name__ == "__main__":
    main()
