"""Speed and memory of flowerft's training against plain Keras, measured in one run.

    python benchmarks/benchmark.py --image-size 128 --epochs 5
    python benchmarks/benchmark.py --part limits --devkit ~/.cache/flowerft-devkit/shoes5 \
        --devkit-weights ~/.cache/flowerft-devkit/weights/xception_imagenet_notop.weights.h5

`--part speed` prints five figures as ratios (targets from the speed issue in brackets):
  (a) head phase, whole process: `flowerft train --epochs-finetune 0` / the book's plain-Keras
      script (decode every epoch, frozen base, model.fit) on the same split    [<= 0.25 at 5 epochs]
      on a folder the size of tf_flowers (--head-images, 3,670) and on the small folder
      (--images); each with a one-pass script: a process that only imports TensorFlow, builds
      the network and runs Keras `predict` once over the training and validation images (about
      what any tool that computes the features once must pay), as a share of the book's time
  (b) fine-tune images/s, flowerft's fit / bare train_on_batch on in-memory data [>= 0.95]
  (c) input pipeline images/s / the model's fine-tune consumption               [>= 10]
  (d) peak RSS of a `flowerft train` run, and of bare Keras training the same net [<= 3 GB at 224 px, batch 32]
  (h) fine-tune images/s through the tf.distribute strategy path / the default path [>= 0.9]
on a generated folder of flower-like JPEGs (240-500 px). Weights are random (`none`): speed
does not depend on them, and this machine has no network.

`--part limits` prints the figures of fine-tuning at the machine's limit (benchmarks/limits.py):
fine-tune images/s of full, partial (plain), partial (cached) and bfloat16 fine-tuning; peak RSS
of `flowerft train` with and without micro-batches; and, given --devkit, the test accuracy of
full vs partial fine-tuning for the same epochs. `--part all` (the default) prints both.

`--part backbones` (alone; --image-size 224 --batch-size 8 --steps 3 for the README's table)
prints the fine-tune images/s of every registry backbone, or of --families NAME ... only
(benchmarks/backbone_speed.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backbone_speed  # noqa: E402  (benchmarks/backbone_speed.py)
import limits  # noqa: E402  (benchmarks/limits.py)

CLASSES = ("dandelion", "daisy", "tulips", "sunflowers", "roses")
PETAL_COLOURS = ((250, 220, 40), (245, 245, 245), (220, 40, 90), (255, 190, 0), (200, 20, 40))


def make_flowers(root: Path, n_images: int, seed: int = 0) -> Path:
    """Green backgrounds with a ring of coloured petals: JPEGs of 240-500 px, like tf_flowers."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        label = i % len(CLASSES)
        w, h = (int(v) for v in rng.integers(240, 501, 2))
        image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(20, 120, 3)))
        draw = ImageDraw.Draw(image)
        cx, cy, r = w / 2 + rng.normal(0, w / 10), h / 2 + rng.normal(0, h / 10), min(w, h) / 4
        for angle in np.linspace(0, 2 * np.pi, int(rng.integers(5, 12)), endpoint=False):
            px, py = cx + r * np.cos(angle), cy + r * np.sin(angle)
            draw.ellipse((px - r / 2, py - r / 2, px + r / 2, py + r / 2), fill=PETAL_COLOURS[label])
        noise = rng.normal(0, 12, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype="float32") + noise, 0, 255).astype("uint8")
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# The book's head phase (Hands-On ML ch. 14) as a plain Keras script: decode, resize and
# preprocess every epoch, a frozen base under a new head, model.fit. It reads the split that
# `flowerft train` recorded (splits.json), so both train and validate on the same images.
BOOK_HEAD = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, keras
splits, size, batch, epochs, constructor, module = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
files = json.load(open(splits))
n_classes = len({label for _, label in files["train"]})
preprocess_input = getattr(keras.applications, module).preprocess_input
def preprocess(path, label):
    image = tf.image.resize(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False), [size, size])
    return preprocess_input(image), label
def dataset(items, shuffle=False):
    ds = tf.data.Dataset.from_tensor_slices(([p for p, _ in items], [y for _, y in items]))
    ds = ds.shuffle(1000, seed=42) if shuffle else ds
    return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(1)
base = getattr(keras.applications, constructor)(weights=None, include_top=False, input_shape=(size, size, 3))
avg = keras.layers.GlobalAveragePooling2D()(base.output)
model = keras.Model(base.input, keras.layers.Dense(n_classes, activation="softmax")(avg))
for layer in base.layers:
    layer.trainable = False
optimizer = keras.optimizers.SGD(keras.optimizers.schedules.InverseTimeDecay(0.2, 1, 0.01), momentum=0.9)
model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
model.fit(dataset(files["train"], shuffle=True), validation_data=dataset(files["valid"]), epochs=epochs, verbose=0)
"""


# (a)'s one-pass script: TensorFlow's import, the network built, one predict over the training and
# validation images (decoded and preprocessed as the book does, without tf.data's autotuner and
# its stall at each iterator's end: flowerft/data/dataset_options.py), nothing saved.
ONE_PASS = BOOK_HEAD.split("base = ")[0] + """
base = getattr(keras.applications, constructor)(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
options = tf.data.Options()
options.autotune.enabled = False
for split in ("train", "valid"):
    base.predict(dataset(files[split]).with_options(options), verbose=0)
"""


def head_phase(folder: Path, args, work: Path, repeats: int) -> tuple[float, float, float]:
    """(a): the head phase as a user runs it, whole processes from start to exit: `flowerft train
    --epochs-finetune 0` (Python start-up, imports, the source check, checkpoints, curves,
    summary: all of it) against the book's plain-Keras script on the same split, and the one-pass script.
    Each is run `repeats` times, interleaved; the fastest of each counts (the machine may be busy)."""
    from flowerft.backbones.registry import get_backbone

    backbone = get_backbone(args.backbone)
    work.mkdir(parents=True, exist_ok=True)  # runs/latest of these runs goes here, not into the checkout
    ours, plain, one_pass = [], [], []
    for i in range(repeats):
        run = work / f"head-{i}"
        command = [sys.executable, "-m", "flowerft", "train", "--data-dir", str(folder), "--weights", "none",
                   "--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size",
                   str(args.batch_size), "--epochs-head", str(args.epochs), "--epochs-finetune", "0",
                   "--run-dir", str(run)]
        seconds, _ = timed(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=work))
        ours.append(seconds)
        script = [sys.executable, "-c", BOOK_HEAD, str(run / "splits.json"), str(args.image_size),
                  str(args.batch_size), str(args.epochs), backbone.constructor, backbone.preprocess_module]
        seconds, _ = timed(lambda: subprocess.run(script, check=True))
        plain.append(seconds)
        seconds, _ = timed(lambda: subprocess.run([sys.executable, "-c", ONE_PASS, *script[3:]], check=True))
        one_pass.append(seconds)
    return min(ours), min(plain), min(one_pass)


def fine_tune_speed(config, steps: int):
    """(b) and (c): images/s of flowerft's fine-tune fit, bare train_on_batch, and the pipeline."""
    import keras
    import tensorflow as tf

    from flowerft.data import pipelines, sources
    from flowerft.model import build_model, unfreeze_base
    from flowerft.training.optimizer import compile_for_phase

    splits = sources.load(config)
    keras.utils.set_random_seed(config.seed)
    model, base = build_model(config, len(splits.class_names))
    unfreeze_base(base)
    compile_for_phase(model, lr=config.lr_finetune, decay=config.decay_finetune, momentum=config.momentum, clipnorm=None)
    train_ds = pipelines.pipeline(splits, "train", config, training=True, cache="memory").repeat()

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = EpochTimer()
    # Epoch 1 traces the step function; epoch 2 is timed.
    model.fit(train_ds, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    fit_rate = steps * config.batch_size / timer.seconds

    images, labels = next(iter(train_ds))
    images, labels = tf.identity(images), tf.identity(labels)
    model.train_on_batch(images, labels)  # trace
    seconds, _ = timed(lambda: [model.train_on_batch(images, labels) for _ in range(steps)])
    bare_rate = steps * config.batch_size / seconds

    def drain(ds):
        count = 0
        for x, _ in ds:
            count += int(x.shape[0])
        return count

    cold = pipelines.pipeline(splits, "train", config, training=True, cache="none")
    cold_seconds, cold_count = timed(lambda: drain(cold))
    warm = pipelines.pipeline(splits, "train", config, training=True, cache="memory")
    warm_seconds, warm_count = timed(lambda: drain(warm))
    return fit_rate, bare_rate, cold_count / cold_seconds, warm_count / warm_seconds


def peak_rss(folder: Path, image_size: int, batch_size: int, backbone: str, run_dir: Path) -> float:
    """(d): peak resident memory (GB) of a whole `flowerft train` run, 1 + 1 epochs."""
    command = [
        sys.executable, "-m", "flowerft", "train", "--data-dir", str(folder), "--weights", "none",
        "--backbone", backbone, "--image-size", str(image_size), "--batch-size", str(batch_size),
        "--epochs-head", "1", "--epochs-finetune", "1", "--run-dir", str(run_dir),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # Linux: KiB


BARE_TRAINING = """
import os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
size, batch, constructor = int(sys.argv[1]), int(sys.argv[2]), getattr(keras.applications, sys.argv[3])
base = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
x = keras.Input((size, size, 3))
y = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base(x)))
model = keras.Model(x, y)
model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
for _ in range(2):
    model.train_on_batch(images, np.arange(batch) % 5)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def bare_rss(image_size: int, batch_size: int, backbone: str) -> float:
    """Peak RSS (GB) of bare Keras training the same network: what the model itself needs."""
    from flowerft.backbones.registry import get_backbone

    constructor = get_backbone(backbone).constructor
    out = subprocess.run([sys.executable, "-c", BARE_TRAINING, str(image_size), str(batch_size), constructor],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def strategy_overhead(config, steps: int) -> dict[str, float]:
    """(h) fine-tune images/s through flowerft's tf.distribute path (MirroredStrategy over this
    machine's devices: one CPU here) and on the default one-device path, fit for fit."""
    import keras

    from flowerft.data import pipelines, sources
    from flowerft.model import build_model, unfreeze_base
    from flowerft.training import distribute
    from flowerft.training.optimizer import compile_for_phase

    splits = sources.load(config)
    train_ds = pipelines.pipeline(splits, "train", config, training=True, cache="memory").repeat()
    rates = {}
    for mode in ("none", "mirrored", "none", "mirrored"):  # twice each, interleaved: the faster counts
        strategy = distribute.make_strategy(mode)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model, base = build_model(config, len(splits.class_names))
            unfreeze_base(base)
            compile_for_phase(model, lr=config.lr_finetune, decay=config.decay_finetune, momentum=config.momentum,
                              clipnorm=config.clipnorm)
        times = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
            on_epoch_end=lambda epoch, logs: times.append(time.perf_counter()))
        model.fit(train_ds, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)  # epoch 1 traces
        rate = steps * config.batch_size / (times[3] - times[2])
        rates[mode] = max(rates.get(mode, 0.0), rate)
        del model
        keras.backend.clear_session()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="head-phase epochs for (a)")
    parser.add_argument("--images", type=int, default=500, help="generated JPEGs (at least 500)")
    parser.add_argument("--head-images", type=int, default=3670,
                        help="a second, larger folder for (a): tf_flowers' size by default; 0 for none")
    parser.add_argument("--steps", type=int, default=6, help="timed fine-tune steps for (b)")
    parser.add_argument("--rss-image-size", type=int, default=224, help="image size of the (d) run")
    parser.add_argument("--rss-images", type=int, default=100, help="images for the (d) run")
    parser.add_argument("--part", choices=("all", "speed", "head", "limits", "backbones"), default="all",
                        help="head: (a) alone")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side of (a), interleaved; the fastest counts")
    limits.add_arguments(parser)
    backbone_speed.add_arguments(parser)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from flowerft.config_files import make_config

    work = Path(tempfile.mkdtemp(prefix="flowerft-bench-"))
    print(f"machine: {limits.machine()}; Python {platform.python_version()}", flush=True)
    if args.part == "backbones":  # not part of "all": it builds every backbone (benchmarks/backbone_speed.py)
        backbone_speed.run(args)
        return
    if args.part in ("all", "limits"):
        limits.run(args, work, make_flowers)
    if args.part == "limits":
        return
    folder = make_flowers(work / "flowers", max(args.images, 500))
    config = make_config(
        data_dir=str(folder), backbone=args.backbone, weights="none", image_size=args.image_size,
        batch_size=args.batch_size, epochs_head=args.epochs, tensorboard=False,
    )
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {max(args.images, 500)} images", flush=True)

    sizes = [(args.head_images, make_flowers(work / "flowers-head", args.head_images))] if args.head_images else []
    for n, images in [*sizes, (max(args.images, 500), folder)]:
        ours, plain, one_pass = head_phase(images, args, work / f"head-{n}", args.repeats)
        print(f"(a) head phase, {args.epochs} epochs, {n} images, whole process: `flowerft train --epochs-finetune 0` "
              f"{ours:.1f} s, the book's plain-Keras script {plain:.1f} s -> ratio {ours / plain:.3f} (target <= 0.25); "
              f"a script that only imports, builds and predicts once {one_pass:.1f} s = {one_pass / plain:.3f} of the "
              f"book's; load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.part == "head":
        return

    fit_rate, bare_rate, cold_rate, warm_rate = fine_tune_speed(config, args.steps)
    print(f"(b) fine-tune: flowerft fit {fit_rate:.2f} img/s, bare train_on_batch {bare_rate:.2f} img/s "
          f"-> ratio {fit_rate / bare_rate:.3f} (target >= 0.95)", flush=True)
    print(f"(c) input pipeline: {cold_rate:.0f} img/s decoding JPEGs, {warm_rate:.0f} img/s from the memory cache "
          f"-> {cold_rate / fit_rate:.0f}x and {warm_rate / fit_rate:.0f}x the fine-tune consumption (target >= 10)",
          flush=True)

    rss_folder = make_flowers(work / "rss", args.rss_images, seed=1)
    rss = peak_rss(rss_folder, args.rss_image_size, args.batch_size, args.backbone, work / "rss-run")
    bare = bare_rss(args.rss_image_size, args.batch_size, args.backbone)
    print(f"(d) peak RSS at {args.rss_image_size} px, batch {args.batch_size}: `flowerft train` {rss:.2f} GB, "
          f"bare Keras train_on_batch of the same network {bare:.2f} GB -> ratio {rss / bare:.2f} "
          f"(target <= 3 GB)", flush=True)

    rates = strategy_overhead(config, args.steps)
    print(f"(h) tf.distribute path: fine-tune {rates['mirrored']:.2f} img/s through MirroredStrategy (this machine's "
          f"devices), {rates['none']:.2f} img/s on the default path -> ratio {rates['mirrored'] / rates['none']:.3f} "
          "(target >= 0.9)", flush=True)


if __name__ == "__main__":
    main()
