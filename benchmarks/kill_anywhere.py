"""Kill a training run with SIGKILL at random moments, resume it each time, and check what is left.

    python benchmarks/kill_anywhere.py --kills 10 --seed 0

A tiny run (generated images, MobileNet at 32 px, weights none, 3 + 3 epochs, file cache) is
started with the command a scheduler would re-issue after every preemption:

    flowerft train ... --run-dir R --resume

and killed with SIGKILL `--kills` times: half at a random moment of the process's life
(start-up, data loading, training, validation, saving), half the moment a checkpoint or
state file is being written (a `.tmp-` file exists). After the last kill the same command
runs to the end, and the script checks that every artifact loads (checkpoints in Keras's
safe mode, JSON, YAML, CSV), that every epoch appears exactly once in history.json and the
CSVs, that nothing temporary (state/, cache/, .tmp files) is left, and that the final
weights equal an uninterrupted run's (both with TF_DETERMINISTIC_OPS=1). Exit code 0 only
if every check passes. Takes 3-5 minutes on a 2-core CPU (mostly TensorFlow start-ups).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this process loads the checkpoints at the end
EPOCHS_HEAD, EPOCHS_FINETUNE = 3, 3


def make_images(root: Path, per_class: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("daisy", "dandelion", "roses")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.normal(60, 25, (48, 48, 3))
            image[..., label] += 120
            Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(root / name / f"{i}.jpg")
    return root


def command(images: Path, config: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "flowerft", "train", "--data-dir", str(images), "--config", str(config),
            "--weights", "none", "--backbone", "mobilenet", "--image-size", "32", "--batch-size", "4",
            "--epochs-head", str(EPOCHS_HEAD), "--epochs-finetune", str(EPOCHS_FINETUNE), "--run-dir", str(run),
            "--resume"]


def environment() -> dict[str, str]:
    return {**os.environ, "TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def is_temporary(name: str) -> bool:
    # Weights and models are written as .tmp-<name>, JSON/YAML/CSV as .<name>.<random>.tmp, then renamed.
    return name.startswith(".tmp") or name.endswith(".tmp")


def files_being_written(run: Path) -> set[str]:
    found = set()
    for folder in (run / "state", run / "checkpoints", run):
        try:
            found |= {f"{folder.name}/{e.name}" for e in os.scandir(folder) if is_temporary(e.name)}
        except OSError:
            pass
    return found


def where(run: Path) -> str:
    try:
        p = json.loads((run / "state" / "progress.json").read_text())
        return f"{p['phase']} epochs done {p['epochs_done']}"
    except (OSError, ValueError):
        return "no epoch saved yet"


def kill_once(cmd: list[str], cwd: Path, run: Path, mid_write: bool, latest: float, rng: random.Random) -> str | None:
    """Start the command and SIGKILL it (at a random moment, or during its k-th file write); None if it finished first."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start, at, nth_write = time.monotonic(), rng.uniform(1.0, latest), rng.randint(1, 8)
    seen: set[str] = set()
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        writing = files_being_written(run) if mid_write else set()
        seen |= writing
        if (writing and len(seen) >= nth_write) or (not mid_write and elapsed >= at) or elapsed > 300:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            what = f"while writing {sorted(writing)[0]}" if writing else "at random"
            return f"{elapsed:5.1f} s, {where(run)}, {what}"
        time.sleep(0.0005 if mid_write else 0.01)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed instead of being killed:\n{proc.stderr.read()}")
    return None


def check(run: Path, reference: Path) -> list[str]:
    """What is wrong with a finished run (empty: nothing)."""
    import numpy as np
    import yaml

    from flowerft.cli.common import native_stderr_silenced

    with native_stderr_silenced():  # TensorFlow's start-up chatter
        import keras

    problems = []
    expected = [("head", e) for e in range(1, EPOCHS_HEAD + 1)] + \
        [("finetune", e) for e in range(EPOCHS_HEAD + 1, EPOCHS_HEAD + EPOCHS_FINETUNE + 1)]
    history = json.loads((run / "history.json").read_text())
    if [(r["phase"], r["epoch"]) for r in history] != expected:
        problems.append(f"history.json epochs {[(r['phase'], r['epoch']) for r in history]}")
    for phase in ("head", "finetune"):
        with open(run / f"history_{phase}.csv") as f:
            epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
        if epochs != [e for p, e in expected if p == phase]:
            problems.append(f"history_{phase}.csv epochs {epochs}")
    metrics = json.loads((run / "metrics.json").read_text())
    yaml.safe_load((run / "config.yaml").read_text())
    json.loads((run / "class_names.json").read_text())
    json.loads((run / "splits.json").read_text())
    for checkpoint in sorted((run / "checkpoints").iterdir()):
        try:
            keras.saving.load_model(checkpoint, safe_mode=True)
        except Exception as e:  # any failure to load is what this script looks for
            problems.append(f"{checkpoint.name} does not load: {e}")
    if not (run / metrics["best_checkpoint"]).is_file():
        problems.append(f"best checkpoint {metrics['best_checkpoint']} missing")
    leftovers = [p for p in run.rglob("*") if is_temporary(p.name) or p.name in ("state", "cache")]
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    final = lambda r: keras.saving.load_model(r / "checkpoints" / "final.keras", compile=False).get_weights()
    differences = [float(np.max(np.abs(a - b))) for a, b in zip(final(run), final(reference))]
    if max(differences) != 0.0:
        problems.append(f"final weights differ from the uninterrupted run's by up to {max(differences):.3g}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="for the kill moments")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        images = make_images(work / "images")
        config = work / "file-cache.yaml"
        config.write_text("cache: file  # the cache a killed first pass leaves half-written\ntensorboard: false\n")

        start = time.monotonic()
        reference = work / "uninterrupted"
        subprocess.run(command(images, config, reference), cwd=work, env=environment(), check=True,
                       stdout=subprocess.DEVNULL)
        life = time.monotonic() - start
        print(f"uninterrupted run: {life:.1f} s")

        runs, kills = [work / "killed-1"], 0
        while kills < args.kills:
            outcome = kill_once(command(images, config, runs[-1]), work, runs[-1], kills % 2 == 1, life, rng)
            if outcome is None:  # it finished before the kill came: go on with a new run
                print(f"  {runs[-1].name} finished before the kill; the next kills go to a new run")
                runs.append(work / f"killed-{len(runs) + 1}")
                continue
            kills += 1
            print(f"kill {kills:2} ({runs[-1].name}): {outcome}")
        result = subprocess.run(command(images, config, runs[-1]), cwd=work, env=environment(),
                                capture_output=True, text=True)
        said = [line for line in result.stdout.splitlines() if "resum" in line or "starting" in line]
        print(f"last start of {runs[-1].name}: exit {result.returncode}; {' '.join(said)[:150]}")
        if result.returncode != 0:
            print(result.stderr)
            return 1
        problems = [f"{run.name}: {problem}" for run in runs for problem in check(run, reference)]
        for problem in problems:
            print(f"FAIL: {problem}")
        if not problems:
            print(f"OK: {kills} kills over {len(runs)} run(s); every artifact loads, every epoch appears once, nothing "
                  "temporary is left, and the final weights equal the uninterrupted run's bit for bit")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
