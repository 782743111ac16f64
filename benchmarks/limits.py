"""Fine-tuning at the machine's limit, measured in one run (`benchmarks/benchmark.py --part limits`).

(e) fine-tune images/s of Xception's training step at --limits-image-size, batch 32: full
    unfreezing, partial (the top --finetune-blocks blocks, images through the whole model),
    partial on cached activations (the top alone; the one-off cost of computing the
    activations printed beside it), and full in mixed bfloat16
    [target: partial cached >= 3x full]
(f) peak RSS of a whole `flowerft train` run at 224 px, batch 32, with and without
    --micro-batch [target: <= 3 GB]
(g) with --devkit: test accuracy of full vs partial fine-tuning on the dev kit, same epochs
    [target: partial within 1 point of full, or better]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Runs a command and prints the peak RSS (KiB) of its process tree's largest member: a process
# of its own, so that no other measurement's peak is mixed in (RUSAGE_CHILDREN keeps the max).
PEAK_RSS = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); " \
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def machine() -> str:
    """CPU model, cores, RAM and whether it computes bfloat16 natively: the figures depend on all four."""
    from flowerft.precision import cpu_has_native_bfloat16

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{model} ({platform.machine()}), {os.cpu_count()} cores, {ram:.0f} GB RAM, native bfloat16: "
            f"{'yes' if cpu_has_native_bfloat16() else 'no'}; load average {load}")


def add_arguments(parser) -> None:
    parser.add_argument("--limits-image-size", type=int, default=224, help="image size of (e)")
    parser.add_argument("--limits-steps", type=int, default=3, help="timed training steps per variant in (e)")
    parser.add_argument("--finetune-blocks", type=int, default=4, help="blocks the partial fine-tune trains")
    parser.add_argument("--micro-batch", type=int, default=8, help="micro-batch of the (f) run with micro-batches")
    parser.add_argument("--devkit", help="dev-kit image folder for (g)")
    parser.add_argument("--devkit-weights", help="Xception '_notop' ImageNet weights file for (g)")
    parser.add_argument("--devkit-image-size", type=int, default=96)
    parser.add_argument("--devkit-epochs", default="3,2", help="head,fine-tune epochs of both (g) runs")
    parser.add_argument("--devkit-seed", type=int, default=1)


def _steps_per_second(fit_one, steps: int) -> float:
    fit_one()  # traces the step function
    start = time.perf_counter()
    for _ in range(steps):
        fit_one()
    return steps / (time.perf_counter() - start)


def finetune_rates(folder: Path, args) -> dict[str, float]:
    """(e): images/s of one training step of each variant, on the same batch of real JPEGs."""
    import keras

    from flowerft.config_files import make_config
    from flowerft.data import pipelines, sources
    from flowerft.model import build_model, unfreeze_base
    from flowerft.training import partial_finetune
    from flowerft.training.optimizer import compile_for_phase

    config = make_config(data_dir=str(folder), weights="none", image_size=args.limits_image_size, batch_size=32,
                         finetune_blocks=args.finetune_blocks, tensorboard=False)
    splits = sources.load(config)
    images, labels = pipelines.decode_split(splits, "train", config.image_size)
    x, y = keras.ops.cast(images[: config.batch_size], "float32"), labels[: config.batch_size]
    rates = {}

    def compile_(model):
        compile_for_phase(model, lr=config.lr_finetune, decay=config.decay_finetune, momentum=config.momentum,
                          clipnorm=config.clipnorm)

    def measure(name, policy="float32", part="full"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        keras.mixed_precision.set_global_policy(policy)
        try:
            model, base = build_model(config, 5)
            if part == "full":
                unfreeze_base(base)
                compile_(model)
                rates[name] = config.batch_size * _steps_per_second(lambda: model.train_on_batch(x, y), args.limits_steps)
                return
            parts = partial_finetune.unfreeze(base, config)
            if part == "plain":
                compile_(model)
                rates[name] = config.batch_size * _steps_per_second(lambda: model.train_on_batch(x, y), args.limits_steps)
                return
            extractor, top = partial_finetune.top_model(model, *parts)
            extractor.predict_on_batch(x)  # traces, as flowerft's first batch does
            start = time.perf_counter()
            activations = extractor.predict_on_batch(x)
            rates["activations, once"] = config.batch_size / (time.perf_counter() - start)
            compile_(top)
            rates[name] = config.batch_size * _steps_per_second(
                lambda: top.train_on_batch(activations, y), max(args.limits_steps, 10))
        finally:
            keras.mixed_precision.set_global_policy("float32")

    measure("full, float32")
    measure(f"partial ({args.finetune_blocks} blocks), plain", part="plain")
    measure(f"partial ({args.finetune_blocks} blocks), cached", part="cached")
    measure("full, bfloat16", policy="mixed_bfloat16")
    return rates


def peak_rss_gb(folder: Path, image_size: int, run_dir: Path, extra: list[str]) -> float:
    """(f): peak RSS of `flowerft train` at batch 32, 1 + 1 epochs, measured in a process of its own."""
    command = [
        sys.executable, "-m", "flowerft", "train", "--data-dir", str(folder), "--weights", "none",
        "--image-size", str(image_size), "--batch-size", "32", "--epochs-head", "1", "--epochs-finetune", "1",
        "--run-dir", str(run_dir), *extra,
    ]
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 2**20  # Linux reports KiB


def devkit_run(args, run_dir: Path, extra: list[str]) -> tuple[float, float]:
    """(g): one dev-kit training and its test accuracy; returns (accuracy, fine-tune seconds)."""
    head, finetune = args.devkit_epochs.split(",")
    train = [
        sys.executable, "-m", "flowerft", "train", "--data-dir", args.devkit, "--weights", args.devkit_weights,
        "--image-size", str(args.devkit_image_size), "--epochs-head", head, "--epochs-finetune", finetune,
        "--seed", str(args.devkit_seed), "--run-dir", str(run_dir), *extra,
    ]
    subprocess.run(train, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([sys.executable, "-m", "flowerft", "evaluate", "--run-dir", str(run_dir), "--json"],
                         check=True, capture_output=True, text=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return json.loads(out.stdout)["accuracy"], metrics["phases"]["finetune"]["wall_time_s"]


def run(args, work: Path, make_flowers) -> None:
    blocks = args.finetune_blocks
    folder = make_flowers(work / "limits", 64, seed=2)
    print(f"(e) fine-tune training step, xception at {args.limits_image_size} px, batch 32, random weights:", flush=True)
    rates = finetune_rates(folder, args)
    full = rates["full, float32"]
    for name, rate in rates.items():
        print(f"    {name:32s} {rate:8.2f} img/s  ({rate / full:.2f}x full float32)", flush=True)
    print(f"    -> partial cached / full: {rates[f'partial ({blocks} blocks), cached'] / full:.1f}x (target >= 3x); "
          f"bfloat16 / float32: {rates['full, bfloat16'] / full:.2f}x", flush=True)

    rss_folder = make_flowers(work / "rss-limits", args.rss_images, seed=1)
    size = args.rss_image_size
    whole = peak_rss_gb(rss_folder, size, work / "rss-whole", [])
    micro = peak_rss_gb(rss_folder, size, work / "rss-micro", ["--micro-batch", str(args.micro_batch)])
    print(f"(f) peak RSS of `flowerft train`, xception {size} px, batch 32, {args.rss_images} images: {whole:.2f} GB whole batches, "
          f"{micro:.2f} GB with --micro-batch {args.micro_batch} (target <= 3 GB)", flush=True)

    if not args.devkit:
        print("(g) skipped: give --devkit and --devkit-weights for the dev-kit accuracy", flush=True)
        return
    n_train = None
    results = {}
    for name, extra in (("full", []), (f"partial ({blocks} blocks)", ["--finetune-blocks", str(blocks)])):
        results[name] = devkit_run(args, work / f"devkit-{name.split()[0]}", extra)
        splits = json.loads((work / f"devkit-{name.split()[0]}" / "metrics.json").read_text())["split_sizes"]
        n_train = splits["train"]
    head, finetune = args.devkit_epochs.split(",")
    print(f"(g) dev kit ({args.devkit}), xception at {args.devkit_image_size} px, ImageNet weights, "
          f"{head} head + {finetune} fine-tune epochs, seed {args.devkit_seed}:", flush=True)
    for name, (accuracy, seconds) in results.items():
        rate = int(finetune) * n_train / seconds
        print(f"    {name:20s} test accuracy {accuracy:.2%}, fine-tune {seconds:.0f} s ({rate:.1f} img/s)", flush=True)
    gap = (results[f"partial ({blocks} blocks)"][0] - results["full"][0]) * 100
    print(f"    -> partial - full: {gap:+.1f} points (target >= -1)", flush=True)
